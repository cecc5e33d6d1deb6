"""Model adapters: all architecture knowledge of the library lives in this package.

An architecture is named by torchvision's name, optionally with a stem suffix: ``resnet18`` is
torchvision's model (7x7/2 conv + max pool, as ImageNet checkpoints have it), ``resnet18-cifar``
the CIFAR literature's variant (3x3 stride-1 first conv, no max pool; MobileNetV2: stride-1
first conv), with torchvision's parameter names either way.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

import torch
from torch import nn
from torchvision import models as tvm

from ..errors import UserError
from .base import Adapter, empty_keep_cfg, normalize_keep_cfg
from .registry import FAMILIES, Family, family_of, recognise, register_family

# every module of this package but the base and the registry is a family and registers itself
# (the built-in ones first: registration order is --arch's order)
_BUILT_IN = ("resnet", "mobilenet")
for _name in (*_BUILT_IN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_name}")

BASE_ARCHS = tuple(a for f in FAMILIES.values() for a in f.archs)
STEMS = ("torchvision", "cifar")
ARCHS = BASE_ARCHS  # --arch choices; the stem is its own flag
# torchvision's ImageNet weights per architecture (used when --weights imagenet).
IMAGENET_WEIGHTS = {a: w for f in FAMILIES.values() for a, w in f.imagenet_weights.items()}


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
    family = family_of(base)
    if family is None or stem not in STEMS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(BASE_ARCHS)} (optionally with "
                        f"the CIFAR stem: --stem cifar)")
    return family.adapter(arch, getattr(tvm, base), stem)


def recognise_module(model: nn.Module) -> tuple[str, nn.Module]:
    """(architecture name with its stem, the same network as the adapter's torchvision module) of a user's
    module instance, recognised from its structure (not its class name: subclasses and replaced heads
    qualify). The rebuilt module holds the user's weights and must compute what the user's does."""
    expected = ("a torchvision ResNet / ResNeXt / wide ResNet or MobileNetV2 instance (or a subclass) with its "
                "torchvision or CIFAR stem and an nn.Linear head")
    if not isinstance(model, nn.Module):
        raise UserError(f"model is a {type(model).__name__}, not an nn.Module; pass {expected}")
    found = recognise(model)
    if found is None:
        raise UserError(f"no adapter fits {type(model).__name__}: expected {expected}; see docs/extending.md "
                        f"to add a family")
    arch = arch_id(*found)
    adapter = get_adapter(arch)
    head = model.get_submodule(adapter.head_name) if _has(model, adapter.head_name) else None
    if not isinstance(head, nn.Linear):
        raise UserError(f"{type(model).__name__} looks like {arch} but its head {adapter.head_name} is "
                        f"{type(head).__name__}, not nn.Linear; replace the head by one nn.Linear(in, classes)")
    rebuilt = adapter.base_model(head.out_features)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        raise UserError(f"{type(model).__name__} looks like {arch} but its parameters differ from torchvision's "
                        f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}); pass "
                        f"{expected}") from None
    param = next(model.parameters())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    was_training = model.training
    with torch.no_grad():
        same = torch.allclose(model.eval()(x), rebuilt.to(param.device, param.dtype).eval()(x), atol=1e-4,
                              rtol=1e-3)
    model.train(was_training)
    if not same:
        raise UserError(f"{type(model).__name__} has {arch}'s layers but computes something else (its forward "
                        f"differs from torchvision's); compress a module whose forward is torchvision's")
    return arch, rebuilt.cpu()


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


__all__ = ["Adapter", "ARCHS", "BASE_ARCHS", "FAMILIES", "Family", "IMAGENET_WEIGHTS", "STEMS", "arch_id",
           "family_of", "get_adapter", "recognise_module", "register_family", "split_arch", "empty_keep_cfg",
           "normalize_keep_cfg"]
