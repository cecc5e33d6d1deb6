"""CPU latency of FP32 eager vs FP32 compiled vs INT8 (PT2E PTQ / QAT, converted + compiled), side by side.

    python benchmarks/latency.py --archs resnet18,mobilenet_v2 --threads 2 --batch-sizes 1,64

Weights are untrained unless --checkpoint is given: latency does not depend on weight values,
and PTQ calibrates on random tensors for the same reason (no accuracy is reported here). INT8
kernels exist for the CPU only, so every row runs on the CPU. Models are compiled under the
timed thread count, since inductor bakes the thread count into its kernels. Variants are timed
in interleaved rounds so that load from other processes hits all of them alike.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from m2mdc import metrics, quant  # noqa: E402
from m2mdc.arch_latency import cpu_model  # noqa: E402
from m2mdc.latency import compile_for_cpu, time_forward  # noqa: E402
from m2mdc.data import Batch  # noqa: E402
from m2mdc.errors import Parser, UserError, cli, positive_ints  # noqa: E402
from m2mdc.io import load_state_dict  # noqa: E402
from m2mdc.models import ARCHS, get_adapter  # noqa: E402

INT8_FLOWS = ("ptq", "qat")


def _names(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in valid]
    if not names or bad:
        raise UserError(f"{what} {bad or text!r} not recognised; choose from {', '.join(valid)}")
    return names


def _load_model(arch: str, checkpoint: str | None, num_classes: int) -> nn.Module:
    adapter = get_adapter(arch)
    if checkpoint is None:
        return adapter.base_model(num_classes).eval()
    sd = load_state_dict(Path(checkpoint), "--checkpoint")
    head = f"{adapter.head_name}.weight"
    if head not in sd:
        raise UserError(f"--checkpoint {checkpoint} has no {head}; it is not a {arch} state_dict")
    model = adapter.base_model(sd[head].shape[0])
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise UserError(f"--checkpoint {checkpoint} does not fit {arch} ({str(e).splitlines()[0][:120]})") from None
    return model.eval()


class _RandomBatches:
    """Calibration batches of random images: PTQ ranges only matter for accuracy, not latency."""

    def __init__(self, n: int, batch: int, resolution: int):
        self.n, self.batch, self.resolution = n, batch, resolution

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            yield Batch(torch.randn(self.batch, 3, self.resolution, self.resolution, generator=g), None, None, None)


def _qat_int8(model: nn.Module, resolution: int, arch: str) -> nn.Module:
    """prepare_qat -> two train-mode forwards (so fake-quant ranges exist) -> convert."""
    prepared = quant.prepare_qat(model, torch.randn(8, 3, resolution, resolution), name=arch)
    with torch.no_grad():
        for _ in range(2):
            prepared(torch.randn(16, 3, resolution, resolution))
    return quant.convert(prepared, name=arch)


def _coverage(model: nn.Module) -> str:
    cov = quant.int8_coverage(model)
    return f"{cov['int8']}/{cov['total']}"


def _build(arch: str, model: nn.Module, flows: list[str], example: torch.Tensor, a) -> list[dict]:
    """Every variant of one model, converted and compiled before any timing starts.
    "build s" is conversion + compilation for the first batch size."""
    entries = [{"variant": "fp32 eager", "fn": model, "backend": "eager", "int8 ops": _coverage(model),
                "build s": 0.0}]
    t0 = time.perf_counter()
    fn, backend = compile_for_cpu(model, example)
    entries.append({"variant": "fp32 compiled", "fn": fn, "backend": backend, "int8 ops": _coverage(model),
                    "build s": time.perf_counter() - t0})
    for flow in flows:
        t0 = time.perf_counter()
        if flow == "ptq":
            int8 = quant.ptq(model, _RandomBatches(a.calib_batches, 32, a.resolution), a.calib_batches, name=arch)
        else:
            int8 = _qat_int8(model, a.resolution, arch)
        fn, backend = compile_for_cpu(int8, example)
        entries.append({"variant": f"int8 {flow} compiled", "fn": fn, "backend": backend,
                        "int8 ops": _coverage(int8), "build s": time.perf_counter() - t0})
    return entries


def _measure(arch: str, entries: list[dict], a, device: torch.device) -> list[dict]:
    """Median over rounds of each round's median (the first round's warm-up also compiles the
    other batch sizes)."""
    ms: dict[tuple[int, int], list[float]] = {(i, b): [] for i in range(len(entries)) for b in a.batch_sizes}
    for r in range(a.rounds):
        for i, e in enumerate(entries):
            for b in a.batch_sizes:
                res = time_forward(e["fn"], a.resolution, b, a.threads, a.warmup if r == 0 else 2,
                                         a.repeats, device)
                ms[(i, b)].append(res["ms"])
    rows = []
    for i, e in enumerate(entries):
        row = {"arch": arch, "variant": e["variant"], "backend": e["backend"], "threads": a.threads,
               "int8 ops": e["int8 ops"], "build s": f"{e['build s']:.1f}"}
        for b in a.batch_sizes:
            med = statistics.median(ms[(i, b)])
            row[f"b{b} ms"] = f"{med:.2f}"
            row[f"b{b} img/s"] = f"{b * 1e3 / med:.0f}"
        rows.append(row)
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-|-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(width[c]) for c in cols))


@cli
def main(argv=None):
    p = Parser(prog="benchmarks/latency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet18,mobilenet_v2", help=f"comma list from {', '.join(ARCHS)}")
    p.add_argument("--threads", type=int, default=metrics.default_threads(),
                   help="torch threads for compiling and timing (default: CPUs available to this process)")
    p.add_argument("--batch-sizes", default="1,64", help="comma list (default 1,64)")
    p.add_argument("--checkpoint", default=None, help="state_dict to load (one arch only; default: untrained)")
    p.add_argument("--num-classes", type=int, default=100, help="head size without --checkpoint (default 100)")
    p.add_argument("--resolution", type=int, default=32, help="input resolution (default 32)")
    p.add_argument("--int8", default="ptq,qat", help="INT8 flows to time: ptq, qat or both (default ptq,qat)")
    p.add_argument("--calib-batches", type=int, default=4, help="PTQ calibration batches of 32 (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (default 5)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls in the first round (default 10; 2 later)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per variant and round (default 20)")
    a = p.parse_args(argv)
    archs = _names(a.archs, ARCHS, "--archs")
    flows = _names(a.int8, INT8_FLOWS, "--int8")
    a.batch_sizes = positive_ints(a.batch_sizes, "--batch-sizes")
    if a.checkpoint and len(archs) != 1:
        raise UserError(f"--checkpoint fits one architecture; pass exactly one --archs (got {', '.join(archs)})")
    if min(a.threads, a.rounds, a.repeats, a.calib_batches, a.warmup + 1) < 1 or a.num_classes < 2:
        raise UserError("--threads, --rounds, --repeats, --calib-batches must be >= 1, --warmup >= 0, "
                        "--num-classes >= 2")
    device = torch.device("cpu")  # INT8 kernels are CPU-only; FP32 runs there too to compare like with like
    print(f"torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPUs visible, {a.threads} threads, "
          f"input {a.resolution}x{a.resolution}, median of {a.rounds} interleaved rounds of {a.repeats} calls; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    with metrics.torch_threads(a.threads):
        for arch in archs:
            model = _load_model(arch, a.checkpoint, a.num_classes)
            example = torch.randn(a.batch_sizes[0], 3, a.resolution, a.resolution)
            entries = _build(arch, model, flows, example, a)
            print(f"{arch}: built {', '.join(e['variant'] + ' (' + e['backend'] + ')' for e in entries)}; timing",
                  file=sys.stderr, flush=True)
            rows += _measure(arch, entries, a, device)
    print(f"load average at end {os.getloadavg()[0]:.2f} (latency on a shared machine is only as good as this)")
    _print_table(rows)
    return 0


if __name__ == "__main__":
    main()
