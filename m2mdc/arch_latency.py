"""Latency of an architecture before any training: what a latency budget is checked against.

Dense latency does not depend on the weights, so the architecture a configuration ends with (its
keep_cfg, FP32 or INT8) is built untrained, put in its shipped form (INT8: a PT2E graph converted
after calibration on random images, the same quantize/dequantize + int8 conv graph QAT ships;
then inductor-compiled, as m2mdc.latency ships everything) and timed at the budget's batch size
and threads. A measurement costs one compile (~10-50 s on 2 cores), so each is cached on disk by
architecture signature, per machine: a configuration is timed once per machine, across searches.

The machine is part of every key (CPU model, logical CPUs, torch version): a cache measured on
another CPU is never read, and ``--resume`` of a latency-budget search on another CPU model refuses
unless told to re-measure (search/frontier.py).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .io import write_json

Timer = Callable[[dict, bool], dict]  # (keep_cfg, int8) -> {"ms", "spread_pct", "backend", ...}

# Rounds of timing a search's latencies take (the quietest is kept), before and after training alike, so
# predicted and measured figures are the same statistic. One round read 12-33 % high on some CIFAR
# predictions timed while the search's driver shared the two cores (README, latency budget).
QUIET_ROUNDS = 5


def cpu_model() -> str:
    """The CPU's model name (what a latency figure refers to), e.g. 'Intel(R) Xeon(R) Platinum 8581C CPU'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache  # read once per process: it is part of every cache key and entry
def machine() -> dict:
    """What a latency measurement depends on besides the model: CPU model, CPUs, torch version."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count() or 1, "torch": torch.__version__.split("+")[0]}


@dataclass
class ArchLatency:
    """Pre-training latency of architectures of one adapter, at one batch size and thread count.

    ``timer`` is injectable (tests give a deterministic function of the keep_cfg, so budget logic
    never depends on timing noise); by default the architecture is built and timed as shipped.
    ``cache_dir``: where measurements are kept (one small JSON per architecture, per machine);
    None keeps them in memory only. ``write=False`` reads the cache but writes nothing until
    ``save_to`` (a CLI measuring before it knows its input is good).
    """

    adapter: object  # m2mdc.models.base.Adapter
    num_classes: int
    resolution: int
    batch: int = 1
    threads: int = 1
    cache_dir: Path | None = None
    timer: Timer | None = None
    write: bool = True
    repeats: int = 30
    rounds: int = QUIET_ROUNDS  # the quietest of these rounds of ``repeats`` is kept (m2mdc.latency.time_forward)
    measured: int = 0  # measurements taken (cache misses) by this instance
    seconds: float = 0.0  # wall time they took (builds, compiles, timing)
    memo: dict = field(default_factory=dict)  # key -> latency
    signatures: dict = field(default_factory=dict)  # key -> (signature, latency) of what this instance measured

    def signature(self, keep_cfg: dict, int8: bool) -> dict:
        return {"arch": self.adapter.arch, "num_classes": self.num_classes, "resolution": self.resolution,
                "keep_cfg": keep_cfg, "int8": bool(int8), "batch": self.batch, "threads": self.threads,
                "rounds": self.rounds}

    def _path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        m = machine()
        folder = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()[:12]
        return Path(self.cache_dir) / folder / f"{key}.json"

    def __call__(self, keep_cfg: dict, int8: bool) -> dict:
        """{"ms", "spread_pct", "backend", "cached"} of the architecture as shipped (measured once)."""
        sig = self.signature(keep_cfg, int8)
        key = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:20]
        if key in self.memo:
            return {**self.memo[key], "cached": True}
        path = self._path(key)
        if path is not None and path.exists():
            try:
                entry = json.loads(path.read_text())
                if entry.get("signature") == sig and entry.get("machine") == machine():
                    self.memo[key] = entry["latency"]
                    return {**entry["latency"], "cached": True}
            except (OSError, ValueError, KeyError):
                pass  # unreadable entry: measure again and overwrite it
        t0 = time.perf_counter()
        result = (self.timer or self._measure)(keep_cfg, int8)
        took = time.perf_counter() - t0
        self.measured += 1
        self.seconds += took
        lat = {"ms": float(result["ms"]), "spread_pct": float(result.get("spread_pct", 0.0)),
               "backend": str(result.get("backend", "injected"))}
        self.memo[key] = lat
        self.signatures[key] = (sig, lat)
        if path is not None and self.write and lat["backend"] != "eager-fallback":  # a fallback is never the truth
            write_json(path, {"signature": sig, "machine": machine(), "latency": lat, "seconds": took})
        return {**lat, "cached": False}

    def save_to(self, cache_dir: Path) -> None:
        """Keep this instance's measurements under ``cache_dir`` (and cache there from now on)."""
        self.cache_dir, self.write = Path(cache_dir), True
        for key, (sig, lat) in self.signatures.items():
            path = self._path(key)
            if lat["backend"] != "eager-fallback" and not path.exists():
                write_json(path, {"signature": sig, "machine": machine(), "latency": lat})

    def _measure(self, keep_cfg: dict, int8: bool) -> dict:
        from .latency import shipped_latency

        model = self.adapter.rebuild(keep_cfg, self.num_classes).eval()
        if int8:
            model = untrained_int8(model, self.resolution, self.adapter.arch)
        return shipped_latency(model, self.resolution, int8, batch=self.batch, threads=self.threads,
                               repeats=self.repeats, rounds=self.rounds)


def untrained_int8(model: torch.nn.Module, resolution: int, name: str) -> torch.nn.Module:
    """The INT8 program of an untrained architecture: PT2E PTQ calibrated on random images. Its graph
    (quantize/dequantize around int8 conv/linear, BN folded) is the one QAT's convert ships; only the
    scales differ, and dense int8 kernels do not run faster or slower for them."""
    from .data import Batch
    from .quant import ptq

    g = torch.Generator().manual_seed(0)
    calib = [Batch(torch.randn(8, 3, resolution, resolution, generator=g), torch.zeros(8, dtype=torch.long),
                   torch.arange(8), torch.zeros(8, dtype=torch.bool)) for _ in range(2)]
    return ptq(model, calib, batches=2, name=name)

