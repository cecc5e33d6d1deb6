"""Model adapters: all architecture knowledge of the library lives in this package.

An architecture is named by torchvision's name, optionally with a stem suffix: ``resnet18`` is
torchvision's model (7x7/2 conv + max pool, as ImageNet checkpoints have it), ``resnet18-cifar``
the CIFAR literature's variant (3x3 stride-1 first conv, no max pool; MobileNetV2: stride-1
first conv), with torchvision's parameter names either way.
"""
from __future__ import annotations

from functools import lru_cache

from torchvision import models as tvm

from ..errors import UserError
from .base import Adapter, empty_keep_cfg, normalize_keep_cfg
from .mobilenet import MobileNetV2Adapter
from .resnet import ResNetAdapter

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
           "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")
BASE_ARCHS = (*RESNETS, "mobilenet_v2")
STEMS = ("torchvision", "cifar")
ARCHS = BASE_ARCHS  # --arch choices; the stem is its own flag

# torchvision's ImageNet weights per architecture (used when --weights imagenet).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2", "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V2", "wide_resnet50_2": "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights.IMAGENET1K_V2",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights.IMAGENET1K_V2",
    "resnext101_64x4d": "ResNeXt101_64X4D_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V2",
}


def arch_id(arch: str, stem: str = "torchvision") -> str:
    """The name of an architecture with its stem, as records, caches and keep_cfg files carry it."""
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    base = split_arch(arch)[0]  # idempotent: a name that carries its stem already keeps it
    return base if stem == "torchvision" else f"{base}-{stem}"


def split_arch(name: str) -> tuple[str, str]:
    """(torchvision name, stem) of an architecture name."""
    base, _, stem = name.partition("-")
    return base, stem or "torchvision"


@lru_cache(maxsize=None)
def get_adapter(arch: str) -> Adapter:
    """The adapter of ``arch`` (torchvision name, optionally ``-cifar``); one instance per name."""
    base, stem = split_arch(arch)
    if base not in BASE_ARCHS or stem not in STEMS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(BASE_ARCHS)} (optionally with "
                        f"the CIFAR stem: --stem cifar)")
    factory = getattr(tvm, base)
    if base == "mobilenet_v2":
        return MobileNetV2Adapter(arch, factory, stem)
    return ResNetAdapter(arch, factory, stem)


__all__ = ["Adapter", "ARCHS", "BASE_ARCHS", "IMAGENET_WEIGHTS", "STEMS", "arch_id", "get_adapter", "split_arch",
           "empty_keep_cfg", "normalize_keep_cfg"]
