"""What does each removed block buy at batch 1, at one GMACs budget? Torch-Pruning's full-depth model
against the same budget spent on fewer, wider blocks, side by side.

    python benchmarks/depth_latency.py --arch resnet18 --budget-gmacs 0.02 --threads 2

At 32x32 a compressed ResNet's batch-1 time is mostly per-operator overhead, so depth, not width,
should set it. Each row is an architecture the search's fractions recipe builds: k of the free
(unprotected) blocks removed (every stage keeps one), widths at full and projected onto the budget
exactly as a trial is (m2mdc.compiler.compile_config); row 0 is the Torch-Pruning-like point (all
blocks, one width ratio). Plus the teacher and the family's floor (fewest blocks, one channel per
group). Untrained weights (dense FP32 latency does not depend on them); without a trained teacher the
block scores tie, so the earliest free block of a stage goes first (blocks of a stage share shapes).
Compiled with inductor as shipped, at the timed thread count; each row timed in rounds (median of the
rounds' medians), the reference again at the end to show the run's drift. The ratio
column is the Torch-Pruning-like point's time over the row's: what the issue's "1.5x faster at equal
accuracy" asks of the search at this budget. ``--config LABEL=JSON`` adds an architecture of your own
(a front member's knob values), built as a trial builds it. Writes
OUT/benchmarks/depth_latency/ARCH-bBUDGET.{json,md} (``--name`` another stem).
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from m2mdc import metrics  # noqa: E402
from m2mdc.arch_latency import cpu_model  # noqa: E402
from m2mdc.compiler import compile_config, compile_within, depth_ladder, dry_target, thinnest  # noqa: E402
from m2mdc.errors import Parser, UserError, check_range, cli, plain_name, positive_ints  # noqa: E402
from m2mdc.io import ensure_writable, out_root, write_json, write_text  # noqa: E402
from m2mdc.knobs import parse_labelled_configs  # noqa: E402
from m2mdc.latency import as_shipped, time_forward  # noqa: E402
from m2mdc.models import ARCHS  # noqa: E402


def blocks_kept(keep_cfg: dict) -> int:
    return sum(len(v) for v in keep_cfg["blocks"].values())


def architectures(arch: str, num_classes: int, resolution: int, budget: float,
                  configs: dict[str, dict] | None = None) -> tuple[list[dict], object]:
    """The rows: the teacher, then k = 0.. free blocks removed (m2mdc.compiler.depth_ladder: widths full,
    projected onto the budget), one row per depth reached, then the floor of the shallowest depth, then
    each of ``configs`` (label -> knob values, e.g. a search trial's) as a trial builds it at the budget."""
    target = dry_target(arch, num_classes, resolution)
    ladder = depth_ladder(target)
    full = compile_config(ladder[0], target)
    total = blocks_kept(full.keep_cfg)
    rows = [{"name": "teacher (full model)", "config": ladder[0], "keep_cfg": full.keep_cfg, "gmacs": full.gmacs,
             "width_scale": 1.0, "blocks": total}]
    seen = set()
    for k, config in enumerate(ladder):
        plan = compile_config(config, target, budget_gmacs=budget)
        if not plan.feasible:
            if k == 0:
                thin = compile_config(thinnest(config), target).gmacs
                raise UserError(f"--budget-gmacs {budget:g} is below the thinnest full-depth {arch} (one channel per "
                                f"group: {thin:.2g} GMACs at {resolution}x{resolution}); raise it")
            continue
        kept = blocks_kept(plan.keep_cfg)
        if kept in seen:
            continue  # every stage keeps a block: past that, a larger ratio removes nothing more
        seen.add(kept)
        name = ("Torch-Pruning-like (all blocks, one width ratio)" if kept == total else
                f"{total - kept} block{'s' * (total - kept > 1)} removed, widths onto the budget")
        rows.append({"name": name, "config": config, "keep_cfg": plan.keep_cfg, "gmacs": plan.gmacs,
                     "width_scale": plan.width_scale, "blocks": kept})
    config = thinnest(rows[-1]["config"])
    floor = compile_config(config, target)
    rows.append({"name": "floor: fewest blocks, one channel per group", "config": config, "keep_cfg": floor.keep_cfg,
                 "gmacs": floor.gmacs, "width_scale": floor.width_scale, "blocks": rows[-1]["blocks"]})
    for label, config in (configs or {}).items():
        plan = compile_within(config, target, budget, f"--config {label}")
        if any(step["step"] == "qat" for step in plan.plan):
            raise UserError(f"--config {label}: its plan ships INT8 (QAT) and this benchmark times FP32; drop qat "
                            f"(benchmarks/latency.py times INT8)")
        rows.append({"name": f"{label} (--config)", "config": config, "keep_cfg": plan.keep_cfg, "gmacs": plan.gmacs,
                     "width_scale": plan.width_scale, "blocks": blocks_kept(plan.keep_cfg)})
    return rows, target.adapter


def measure(rows: list[dict], adapter, a) -> dict:
    """Each row built, compiled and timed in turn, ``rounds`` rounds per batch size (median of the rounds'
    medians). Not interleaved: dynamo keys compiled code by code object and every build resets it
    (m2mdc.latency.CompiledForCPU), so compiled ResNets cannot wait side by side. Instead the
    Torch-Pruning-like reference is timed first and again last: the drift over the run, returned."""
    ref = next(i for i, r in enumerate(rows) if r["name"].startswith("Torch-Pruning"))
    again = {}
    for i in [ref] + [i for i in range(len(rows)) if i != ref] + [ref]:
        r = rows[i]
        model = adapter.rebuild(r["keep_cfg"], a.num_classes).eval()
        r["params"] = metrics.count_params(model)
        timed = {}
        for b in a.batch_sizes:
            fn, backend = as_shipped(model, a.resolution, int8=False, batch=b)
            if backend != "inductor":
                raise UserError(f"{r['name']}: inductor did not compile it ({backend}); an eager time is not a "
                                f"shipped time (install a C++ compiler, or check torch)")
            ms = [time_forward(fn, a.resolution, b, a.threads, a.warmup if rnd == 0 else 2, a.repeats)["ms"]
                  for rnd in range(a.rounds)]
            timed[b] = (statistics.median(ms), 100 * (max(ms) - min(ms)) / statistics.median(ms))
        if "ms" in r:  # the reference, timed again at the end
            again = {b: t[0] for b, t in timed.items()}
        else:
            r["ms"] = {b: t[0] for b, t in timed.items()}
            r["round_spread_pct"] = {b: t[1] for b, t in timed.items()}
        print(f"[depth-latency] {r['name']} ({r['blocks']} blocks, {r['gmacs']:.4f} GMACs): "
              + ", ".join(f"bs{b} {t[0]:.3f} ms" for b, t in timed.items()), flush=True)
    return {b: 100 * (again[b] - rows[ref]["ms"][b]) / rows[ref]["ms"][b] for b in a.batch_sizes}


def table(rows: list[dict], batch_sizes: list[int]) -> str:
    ref = next(r for r in rows if r["name"].startswith("Torch-Pruning"))
    head = ["architecture", "blocks", "GMACs", "width scale", "params"]
    for b in batch_sizes:
        head += [f"bs{b} ms", f"Torch-Pruning bs{b} / this"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], str(r["blocks"]), f"{r['gmacs']:.4f}", f"{r['width_scale']:.2f}",
                 f"{r['params'] / 1e6:.3f}M" if r["params"] >= 10_000 else f"{r['params']:,}"]
        for b in batch_sizes:
            cells += [f"{r['ms'][b]:.3f} (rounds ±{r['round_spread_pct'][b] / 2:.0f}%)",
                      f"{ref['ms'][b] / r['ms'][b]:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@cli
def main(argv=None):
    p = Parser(prog="python benchmarks/depth_latency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=ARCHS)
    p.add_argument("--budget-gmacs", type=float, default=0.02, help="GMACs budget (default 0.02)")
    p.add_argument("--num-classes", type=int, default=100, help="head size (default 100)")
    p.add_argument("--resolution", type=int, default=32, help="input resolution (default 32)")
    p.add_argument("--threads", type=int, default=metrics.default_threads(),
                   help="torch threads for compiling and timing (default: CPUs available to this process)")
    p.add_argument("--batch-sizes", default="1,64", help="comma list (default 1,64)")
    p.add_argument("--rounds", type=int, default=7, help="measurement rounds per row and batch size (default 7)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls in the first round (default 10; 2 later)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per variant and round (default 30)")
    p.add_argument("--config", action="append", default=[], metavar="LABEL=JSON",
                   help="an architecture of your own as a row: knob values as a search trial takes them (e.g. a "
                   "front member's), built as a trial builds it at the budget (widths projected onto it); repeatable")
    p.add_argument("--name", default=None, help="output file stem (default ARCH-bBUDGET)")
    p.add_argument("--out-dir", default=None, help="output root (default ./outputs)")
    a = p.parse_args(argv)
    configs = parse_labelled_configs(a.config)
    stem = f"{a.arch}-b{a.budget_gmacs:g}" if a.name is None else plain_name(a.name, "--name", "resnet18-b0.02-front")
    check_range("--budget-gmacs", a.budget_gmacs, 0, float("inf"), lo_open=True)
    a.batch_sizes = positive_ints(a.batch_sizes, "--batch-sizes")
    if min(a.threads, a.rounds, a.repeats, a.warmup + 1, a.resolution) < 1 or a.num_classes < 2:
        raise UserError("--threads, --rounds, --repeats, --resolution must be >= 1, --warmup >= 0, --num-classes >= 2")
    out = ensure_writable(out_root(a.out_dir) / "benchmarks" / "depth_latency")
    rows, adapter = architectures(a.arch, a.num_classes, a.resolution, a.budget_gmacs, configs)
    header = (f"torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPUs visible, {a.threads} threads, "
              f"{a.arch} at {a.resolution}x{a.resolution}, budget {a.budget_gmacs:g} GMACs, compiled FP32 (inductor), "
              f"median of {a.rounds} rounds of {a.repeats} calls, OMP_WAIT_POLICY "
              f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} (PASSIVE reads batch 1 ~2.6x slower); load average at "
              f"start {os.getloadavg()[0]:.2f}")
    print(header, flush=True)
    with metrics.torch_threads(a.threads):
        drift = measure(rows, adapter, a)
    md = (f"Command: `{a.command}`\n\n{header}, at end {os.getloadavg()[0]:.2f}\n\n" + table(rows, a.batch_sizes) +
          "\nRows timed one after another (each built and compiled, then its rounds); the Torch-Pruning-like "
          "reference first and again last, which moved it by " +
          ", ".join(f"{d:+.1f} % at batch {b}" for b, d in drift.items()) + ".\n")
    print(md)
    write_json(out / f"{stem}.json", {"settings": vars(a), "rows": rows, "reference_drift_pct": drift})
    write_text(out / f"{stem}.md", md)
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    main()
