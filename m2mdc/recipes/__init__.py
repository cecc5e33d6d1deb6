"""Recipes: from knob values to a plan. Each module of this package registers its recipes
(``m2mdc.compiler.register_recipe``); importing the package imports every one, so a new recipe is one new
file here (``fractions`` and ``allocator`` first: registration order is --preset's order)."""
from __future__ import annotations

import importlib
import pkgutil

_BUILT_IN = ("fractions", "allocator", "papers")
for _name in (*_BUILT_IN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_name}")
