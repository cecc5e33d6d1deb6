"""Model adapters: all architecture knowledge of the library lives in this package."""
from __future__ import annotations

from torchvision import models as tvm

from ..errors import UserError
from .base import Adapter, empty_keep_cfg, normalize_keep_cfg
from .mobilenet import MobileNetV2Adapter
from .resnet import ResNetAdapter

_ADAPTERS = {
    "resnet18": lambda: ResNetAdapter("resnet18", tvm.resnet18),
    "resnet34": lambda: ResNetAdapter("resnet34", tvm.resnet34),
    "resnet50": lambda: ResNetAdapter("resnet50", tvm.resnet50),
    "mobilenet_v2": lambda: MobileNetV2Adapter("mobilenet_v2", tvm.mobilenet_v2),
}
ARCHS = tuple(_ADAPTERS)

# torchvision's ImageNet weights per architecture (used when --weights imagenet).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V2",
}


def get_adapter(arch: str) -> Adapter:
    if arch not in _ADAPTERS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return _ADAPTERS[arch]()


__all__ = ["Adapter", "ARCHS", "IMAGENET_WEIGHTS", "get_adapter", "empty_keep_cfg", "normalize_keep_cfg"]
