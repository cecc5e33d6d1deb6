"""Measured CPU latency, the one place it is measured: always timed, never derived from MACs.

``time_forward`` times any callable (warm-up, median of repeated calls, fixed thread count);
``shipped_latency`` times a model the way it ships: FP32 compiled with inductor, INT8 (a converted
PT2E graph) compiled likewise, and records which backend actually ran, so an eager fallback is
never reported as a compiled time. Every figure carries its spread over the repeats (the
interquartile range as a share of the median), because a shared CPU moves between runs.
"""
from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from typing import Callable

import torch
from torch import nn
from torch._dynamo.utils import counters

from .metrics import default_threads, torch_threads
from .quant import first_line, int8_coverage

CPU = torch.device("cpu")
# inductor's C++ toolchain logs "No CUDA runtime is found, using CUDA_HOME=..." at its first compile on a
# machine without CUDA (this CUDA build of torch); irrelevant to CPU kernels, and it would break CLIs' one-line errors
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@torch.no_grad()
def time_forward(fn, resolution: int = 32, batch: int = 1, threads: int | None = None, warmup: int = 10,
                 repeats: int = 50, device: torch.device | str = "cpu", rounds: int = 1,
                 pause_s: float = 0.2) -> dict:
    """Median wall time of ``fn(x)`` for one ``(batch, 3, R, R)`` input.

    With ``rounds`` > 1 the ``repeats`` are taken ``rounds`` times, ``pause_s`` apart, and the quietest
    round (lowest median) is kept: on a small machine another process (a Ray driver writing to MLflow,
    the sampler) can hold a core for a second, and a 2-thread forward then waits on it; the quietest
    round is the latency the model has on the machine when it is its own.

    Returns {"ms": median, "p90_ms", "spread_pct": IQR / median in %, "images_per_s", "threads", "batch"}
    (+ "rounds_ms", every round's median, when ``rounds`` > 1).
    """
    threads = threads or default_threads()
    device = torch.device(device)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    per_round = []
    with torch_threads(threads):
        for r in range(rounds):
            if r:
                time.sleep(pause_s)
            times = []
            for i in range((warmup if r == 0 else min(warmup, 2)) + repeats):
                sync()
                t0 = time.perf_counter()
                fn(x)
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
            per_round.append(times[-repeats:])
    times = min(per_round, key=statistics.median)
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [med, med, med]
    times = sorted(times)
    out = {"ms": med, "p90_ms": times[int(0.9 * (len(times) - 1))], "spread_pct": 100.0 * (q[2] - q[0]) / med,
           "images_per_s": batch * 1e3 / med, "threads": threads, "batch": batch}
    if rounds > 1:
        out["rounds_ms"] = [statistics.median(t) for t in per_round]
    return out


class CompiledForCPU:
    """A frozen inductor build of a model, for inference only (runs under ``no_grad``).

    Freezing (weights folded as constants) is what lets inductor swap the quantize/dequantize
    graph for oneDNN int8 kernels. Inductor reads it from its global config whenever a graph
    compiles, and that can be any call: a new batch size recompiles (``dynamic=False``), and
    every strict ``torch.export`` in the process (also inside torchao's convert_pt2e and
    train/eval switches) calls ``torch._dynamo.reset()``, silently discarding compiled code.
    So every call sets ``freezing`` (a plain attribute write, ~4x cheaper than ``config.patch``);
    ``torch.compile(options={"freezing": True})`` is no alternative: it fails on PT2E int8 graphs.
    Weights are frozen in: compile again after changing them.

    Dynamo keys compiled code by the *code object* (e.g. torchvision's ``ResNet.forward``, shared by
    every ResNet in the process) and, past ``recompile_limit`` (8) versions, silently runs it eagerly:
    timing nine models at two batch sizes in one process measured the last ones in eager mode while
    reporting "inductor". So each build starts from a reset dynamo, and every call runs with
    ``fail_on_recompile_limit_hit``: a fallback can never pass for a compiled time.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        torch._dynamo.reset()  # a fresh recompile budget per model (see above)
        self._compiled: Callable = torch.compile(model, backend="inductor", dynamic=False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        config, dynamo = torch._inductor.config, torch._dynamo.config
        was, strict = config.freezing, dynamo.fail_on_recompile_limit_hit
        config.freezing = True
        dynamo.fail_on_recompile_limit_hit = True
        try:
            return self._compiled(x)
        finally:
            config.freezing = was
            dynamo.fail_on_recompile_limit_hit = strict


def compile_for_cpu(model: nn.Module, example: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(callable, backend): the inductor build ("inductor"), or ``model`` itself ("eager-fallback")
    when compiling fails or, for an INT8 model, inductor did not produce int8 conv/linear kernels.

    Compiles for ``example``'s shape now; other batch sizes compile on first use. Inference only.
    Compile after any ``torch.export`` work where possible: each export resets dynamo, and the
    next call then pays for a silent recompile.
    """
    int8 = int8_coverage(model)["int8"] > 0
    before = counters["inductor"]["qconv_weight_prepack_matcher_count"] + \
        counters["inductor"]["qlinear_weight_prepack_matcher_count"]
    hits = counters["inductor"]["fxgraph_cache_hit"]
    try:
        compiled = CompiledForCPU(model)
        compiled(example)
    except Exception as e:  # no C++ toolchain, unsupported op, ...: run uncompiled, and say so
        warnings.warn(f"torch.compile failed ({first_line(e)}); using the uncompiled model", stacklevel=2)
        return model, "eager-fallback"
    fused = counters["inductor"]["qconv_weight_prepack_matcher_count"] + \
        counters["inductor"]["qlinear_weight_prepack_matcher_count"] - before
    if int8 and fused == 0 and counters["inductor"]["fxgraph_cache_hit"] == hits:
        warnings.warn("inductor compiled the INT8 model without int8 conv/linear kernels; "
                      "using the uncompiled model", stacklevel=2)
        return model, "eager-fallback"
    return compiled, "inductor"


def as_shipped(model: nn.Module, resolution: int, int8: bool, compiled: bool = True, batch: int = 1):
    """(callable, backend) of ``model`` as it would ship on this CPU: compiled with inductor
    ("inductor"), or the model itself ("eager", or "eager-fallback" when compiling failed).
    Compiled for ``batch`` (other sizes recompile on first use, so pass the size you will time)."""
    cpu_model = model if int8 else copy.deepcopy(model).to(CPU).eval()  # INT8 graphs are CPU-only already
    if not compiled:
        return cpu_model, "eager"
    return compile_for_cpu(cpu_model, torch.zeros(batch, 3, resolution, resolution))


def shipped_latency(model: nn.Module, resolution: int, int8: bool, batch: int = 1, threads: int | None = None,
                    repeats: int = 30, compiled: bool = True, rounds: int = 1) -> dict:
    """``time_forward`` of the shipped form of ``model`` plus the backend that ran. Compiled under the
    timed thread count: inductor bakes the thread count into its kernels, and for the timed batch
    only (a batch-1 build first would be a second, unused compile)."""
    threads = threads or default_threads()
    with torch_threads(threads):
        fn, backend = as_shipped(model, resolution, int8, compiled, batch=batch)
    return {**time_forward(fn, resolution, batch=batch, threads=threads, repeats=repeats, rounds=rounds),
            "backend": backend}


def format_ms(t: dict) -> str:
    """"1.84 ms ±3%" with the spread over the repeats."""
    return f"{t['ms']:.2f} ms ±{t['spread_pct']:.0f}%"
