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

from torchvision import models as tvm

from ..errors import UserError
from .base import Adapter, empty_keep_cfg, normalize_keep_cfg
from .registry import FAMILIES, Family, family_of, register_family

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


__all__ = ["Adapter", "ARCHS", "BASE_ARCHS", "FAMILIES", "Family", "IMAGENET_WEIGHTS", "STEMS", "arch_id",
           "family_of", "get_adapter", "register_family", "split_arch", "empty_keep_cfg", "normalize_keep_cfg"]
