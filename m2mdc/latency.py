"""Measured CPU latency, the one place it is measured: always timed, never derived from MACs.

``time_forward`` times any callable (warm-up, median of repeated calls, fixed thread count);
``shipped_latency`` times a model the way it ships: FP32 compiled with inductor, INT8 (a converted
PT2E graph) compiled likewise, and records which backend actually ran, so an eager fallback is
never reported as a compiled time. Every figure carries its spread over the repeats (the
interquartile range as a share of the median), because a shared CPU moves between runs.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from .metrics import default_threads, torch_threads

CPU = torch.device("cpu")


@torch.no_grad()
def time_forward(fn, resolution: int = 32, batch: int = 1, threads: int | None = None, warmup: int = 10,
                 repeats: int = 50, device: torch.device | str = "cpu") -> dict:
    """Median wall time of ``fn(x)`` for one ``(batch, 3, R, R)`` input.

    Returns {"ms": median, "p90_ms", "spread_pct": IQR / median in %, "images_per_s", "threads", "batch"}.
    """
    threads = threads or default_threads()
    device = torch.device(device)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch_threads(threads):
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [med, med, med]
    times.sort()
    return {"ms": med, "p90_ms": times[int(0.9 * (len(times) - 1))], "spread_pct": 100.0 * (q[2] - q[0]) / med,
            "images_per_s": batch * 1e3 / med, "threads": threads, "batch": batch}


def as_shipped(model: nn.Module, resolution: int, int8: bool, compiled: bool = True):
    """(callable, backend) of ``model`` as it would ship on this CPU: compiled with inductor
    ("inductor"), or the model itself ("eager", or "eager-fallback" when compiling failed)."""
    from . import quant

    cpu_model = model if int8 else copy.deepcopy(model).to(CPU).eval()  # INT8 graphs are CPU-only already
    if not compiled:
        return cpu_model, "eager"
    return quant.compile_for_cpu(cpu_model, torch.zeros(1, 3, resolution, resolution))


def shipped_latency(model: nn.Module, resolution: int, int8: bool, batch: int = 1, threads: int | None = None,
                    repeats: int = 30, compiled: bool = True) -> dict:
    """``time_forward`` of the shipped form of ``model`` plus the backend that ran."""
    fn, backend = as_shipped(model, resolution, int8, compiled)
    return {**time_forward(fn, resolution, batch=batch, threads=threads, repeats=repeats), "backend": backend}


def format_ms(t: dict) -> str:
    """"1.84 ms ±3%" with the spread over the repeats."""
    return f"{t['ms']:.2f} ms ±{t['spread_pct']:.0f}%"
