"""Deployment numbers of a finished model, measured on this CPU: latency (batch 1), throughput
(batch 64), checkpoint sizes. Latency is always measured, never derived from MACs."""
from __future__ import annotations

import copy
import io

import torch
from torch import nn

from . import metrics

CPU = torch.device("cpu")


def export_bytes(model: nn.Module, resolution: int) -> int | None:
    """Size of the torch.export artefact (what an INT8 model ships as); None if export fails."""
    try:
        ep = torch.export.export(model, (torch.zeros(2, 3, resolution, resolution),))
        buf = io.BytesIO()
        torch.export.save(ep, buf)
        return buf.getbuffer().nbytes
    except Exception:  # noqa: BLE001 - a size we cannot measure is reported as missing, not guessed
        return None


def deployment_metrics(model: nn.Module, resolution: int = 32, int8: bool = False, threads: int | None = None,
                       compile_fp32: bool = True, repeats: int = 50) -> dict:
    """Latency at batch 1 (median ms) and throughput at batch 64 (images/s) on the CPU.

    FP32 models are timed eager and, if ``compile_fp32``, compiled with inductor; INT8 models only
    compiled (uncompiled INT8 runs the slow reference graph). Backend and threads are recorded.
    """
    from . import quant, sparsity

    threads = threads or metrics.default_threads()
    # INT8 models are CPU-only already, and deep copies of exported graphs lose their eval switch
    model = model if int8 else copy.deepcopy(model).to(CPU).eval()
    out: dict = {"threads": threads, "int8": int8}
    variants = {}
    if not int8:
        variants["fp32_eager"] = (model, "eager")
    if int8 or compile_fp32:
        compiled, backend = quant.compile_for_cpu(model, torch.zeros(1, 3, resolution, resolution))
        variants["int8" if int8 else "fp32_compiled"] = (compiled, backend)
    for key, (fn, backend) in variants.items():
        with torch.no_grad():
            b1 = metrics.latency_ms(fn, resolution, batch=1, threads=threads, repeats=repeats)
            b64 = metrics.latency_ms(fn, resolution, batch=64, threads=threads, repeats=max(5, repeats // 5),
                                     warmup=3)
        out[key] = {"backend": backend, "bs1_ms": b1["ms"], "bs64_images_per_s": b64["images_per_s"],
                    "bs64_ms": b64["ms"]}
    if int8:
        out["size_bytes"] = export_bytes(model, resolution)
    else:
        out["size_bytes"] = sparsity.dense_checkpoint_bytes(model)
        out["sparse_size_bytes"] = sparsity.sparse_checkpoint_bytes(model)
    return out
