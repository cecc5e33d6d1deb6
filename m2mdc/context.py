"""The inputs every plan run against one teacher shares, built once (a search ships them to its trials)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import Dataset, probe_loader
from .distill import TeacherOutputs
from .errors import UserError
from .models import get_adapter
from .models.base import Adapter


@dataclass
class Context:
    """Teacher, data and device, plus the teacher's cached MI block scores and outputs (computed on
    first use and stored next to the cached teacher, so every plan on that teacher reuses them)."""

    arch: str
    ds: Dataset
    teacher: nn.Module
    device: torch.device
    teacher_record: dict = field(default_factory=dict)
    cache_dir: Path | None = None  # the teacher's cache folder: MI scores and teacher outputs go here
    teacher_outputs: TeacherOutputs | None = None
    block_scores: dict[tuple, dict[str, float]] = field(default_factory=dict)

    @property
    def adapter(self) -> Adapter:
        return get_adapter(self.arch)

    def get_block_scores(self, bins: int, probe_samples: int) -> dict[str, float]:
        key = (bins, probe_samples)
        if key not in self.block_scores:
            from .mi import load_or_compute_block_scores

            path = self.cache_dir / f"mi-blocks-b{bins}-n{probe_samples}.json" if self.cache_dir else None
            probe = probe_loader(self.ds, self.device, max_samples=probe_samples)
            self.block_scores[key] = load_or_compute_block_scores(path, self.teacher, self.adapter, probe, bins)
        return self.block_scores[key]

    def get_teacher_outputs(self) -> TeacherOutputs:
        if self.teacher_outputs is None:
            path = self.cache_dir / "teacher-outputs.pt" if self.cache_dir else None
            if path is not None and path.exists():
                try:
                    self.teacher_outputs = TeacherOutputs.load(path, self.device)
                    self.teacher_outputs.check_matches(self.ds.train, self.ds.resolution)
                except (UserError, ValueError, RuntimeError, OSError):
                    self.teacher_outputs = None  # stale or corrupt: recompute below
            if self.teacher_outputs is None:
                self.teacher_outputs = TeacherOutputs.compute(self.teacher, self.adapter, self.ds.train,
                                                              self.device, resolution=self.ds.resolution)
                if path is not None:
                    self.teacher_outputs.save(path)
        return self.teacher_outputs


def prepare_context(arch: str, ds: Dataset, recipe, device: torch.device, out_dir=None, quiet=False) -> Context:
    """Teacher (cached), in a Context whose MI scores / teacher outputs cache next to it."""
    from .teacher import cache_dir, get_teacher

    teacher, record = get_teacher(arch, ds, recipe, device, out_dir, quiet=quiet)
    return Context(arch, ds, teacher, device, record, cache_dir(arch, ds, recipe, out_dir))
