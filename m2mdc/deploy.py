"""Deployment numbers of a finished model, measured on this CPU: latency (batch 1), throughput
(batch 64), checkpoint sizes. Latency is always measured (m2mdc.latency), never derived from MACs."""
from __future__ import annotations

import io

import torch
from torch import nn

from . import metrics
from .latency import as_shipped, time_forward


class ExportError(RuntimeError):
    """The model cannot be written as a torch.export artefact (so its shipped size is unknown)."""


def export_bytes(model: nn.Module, resolution: int) -> int:
    """Size of the torch.export artefact (what an INT8 model ships as); ExportError when export
    fails: a size that cannot be measured is reported missing with its reason, never replaced."""
    try:
        ep = torch.export.export(model, (torch.zeros(2, 3, resolution, resolution),))
        buf = io.BytesIO()
        torch.export.save(ep, buf)
        return buf.getbuffer().nbytes
    except Exception as e:  # noqa: BLE001 - any failure: the artefact cannot be shipped this way
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else "no detail"
        raise ExportError(f"torch.export failed: {type(e).__name__}: {first}") from e


def shipped_size(model: nn.Module, resolution: int) -> tuple[int | None, str | None]:
    """(bytes, None) of the INT8 artefact, or (None, the export error)."""
    try:
        return export_bytes(model, resolution), None
    except ExportError as e:
        return None, str(e)


def deployment_metrics(model: nn.Module, resolution: int = 32, int8: bool = False, threads: int | None = None,
                       compile_fp32: bool = True, repeats: int = 50) -> dict:
    """Latency at batch 1 (median ms) and throughput at batch 64 (images/s) on the CPU.

    Returns {"threads", "latency": {variant: {"backend", "bs1_ms", "bs1_spread_pct", "bs64_ms",
    "bs64_images_per_s"}}, "size_bytes", "export_error", "sparse_size_bytes"}. FP32 models are timed
    eager ("fp32_eager") and, if ``compile_fp32``, compiled ("fp32_compiled"); INT8 models only
    compiled ("int8_compiled": uncompiled INT8 runs the slow reference graph). A variant whose
    compilation fell back to eager says so in its backend.
    """
    from . import sparsity

    threads = threads or metrics.default_threads()
    variants = {}
    if not int8:
        variants["fp32_eager"] = as_shipped(model, resolution, int8=False, compiled=False)
    if int8 or compile_fp32:
        variants["int8_compiled" if int8 else "fp32_compiled"] = as_shipped(model, resolution, int8)
    latency = {}
    for key, (fn, backend) in variants.items():
        b1 = time_forward(fn, resolution, batch=1, threads=threads, repeats=repeats)
        b64 = time_forward(fn, resolution, batch=64, threads=threads, repeats=max(5, repeats // 5), warmup=3)
        latency[key] = {"backend": backend, "bs1_ms": b1["ms"], "bs1_spread_pct": b1["spread_pct"],
                        "bs64_ms": b64["ms"], "bs64_images_per_s": b64["images_per_s"]}
    out: dict = {"threads": threads, "latency": latency, "export_error": None}
    if int8:
        out["size_bytes"], out["export_error"] = shipped_size(model, resolution)
    else:
        shipped = variants["fp32_eager"][0]
        out["size_bytes"] = sparsity.dense_checkpoint_bytes(shipped)
        out["sparse_size_bytes"] = sparsity.sparse_checkpoint_bytes(shipped)
    return out
