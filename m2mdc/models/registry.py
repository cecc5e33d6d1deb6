"""The family registry: each adapter module registers its family (the torchvision architectures it
covers, their ImageNet weights and its adapter class), as steps and recipes register themselves; the
package's ``get_adapter`` and the CLIs' --arch choices read it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .base import Adapter


@dataclass(frozen=True)
class Family:
    name: str
    adapter: type[Adapter]
    archs: tuple[str, ...]  # torchvision model names
    imagenet_weights: dict[str, str] = field(default_factory=dict)  # arch -> torchvision weights enum member
    # a module instance -> (torchvision arch, stem) when it is one of this family's structures, else None
    recognise: Callable[[nn.Module], tuple[str, str] | None] | None = None


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    taken = {a for f in FAMILIES.values() for a in f.archs} & set(family.archs)
    if family.name in FAMILIES or taken:
        raise ValueError(f"family {family.name!r} or its architectures {sorted(taken)} are registered already")
    FAMILIES[family.name] = family
    return family


def family_of(arch: str) -> Family | None:
    """The family that covers a torchvision architecture name, or None."""
    return next((f for f in FAMILIES.values() if arch in f.archs), None)


def recognise(model: nn.Module) -> tuple[str, str] | None:
    """(torchvision arch, stem) of a module instance, read from its structure by the family that fits it."""
    for family in FAMILIES.values():
        found = family.recognise(model) if family.recognise is not None else None
        if found is not None:
            return found
    return None
