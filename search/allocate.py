"""Allocate a GMAC budget over blocks, stage planes and block mid widths, guided by MI block
scores and channel scores of the (cached) teacher; prints the keep configuration it chose.

    python search/allocate.py --arch resnet18 --budget-gmacs 0.02 --dataset digits --json
"""
from __future__ import annotations

import contextlib
import json
import sys
import warnings

from m2mdc import metrics
from m2mdc.allocate import allocate, allocation_plan, check_budget
from m2mdc.cost import CostModel
from m2mdc.data import load_dataset, probe_loader
from m2mdc.device import pick_device
from m2mdc.errors import Parser, cli, check_range
from m2mdc.io import ensure_writable, out_root
from m2mdc.models import get_adapter
from m2mdc.pipeline import prepare_context
from m2mdc.slicing import SIGNALS, channel_scores
from m2mdc.teacher import add_data_args, add_teacher_args, recipe_from_args


def build_parser() -> Parser:
    p = Parser(prog="python search/allocate.py", description=__doc__.split("\n\n")[0])
    add_teacher_args(p)
    add_data_args(p)
    g = p.add_argument_group("allocation")
    g.add_argument("--budget-gmacs", type=float, required=True,
                   help="GMAC budget of the student (fvcore count at --resolution), e.g. 0.02")
    g.add_argument("--signal", default="bn", choices=SIGNALS,
                   help="channel ranking signal: bn = |BN gamma| (default), l1 = filter L1, mi = channel MI")
    g.add_argument("--depth-share", type=float, default=0.5,
                   help="share of the MACs to remove that comes from removing blocks, in [0,1] (default 0.5)")
    g.add_argument("--min-keep", type=float, default=0.0625,
                   help="smallest share of a group's channels the width phase keeps, in (0,1] (default 1/16)")
    g.add_argument("--bins", type=int, default=10, help="MI quantile bins (default 10)")
    g.add_argument("--probe-samples", type=int, default=5000, help="probe images for MI scores (default 5000)")
    g.add_argument("--kd-epochs", type=int, default=5, help="KD epochs per repair in the emitted plan (default 5)")
    p.add_argument("--json", action="store_true", help="write the result as JSON to stdout (the summary goes to stderr)")
    return p


def summary_lines(result: dict, cost: CostModel, fvcore_gmacs: float) -> list[str]:
    cfg = result["keep_cfg"]
    adapter = cost.adapter
    budget = result["budget_gmacs"]
    lines = [f"{'stage':<8} {'blocks kept':<22} {'planes':>11}  mid widths (kept/full)"]
    for stage, names in cost.stage_blocks.items():
        kept = cfg["blocks"][stage]
        planes = f"{cfg['planes'][stage]}/{cost.full_knob_widths['planes:' + stage]}"
        mids = [f"{adapter.block_name(stage, i)} {cfg['mid'][adapter.block_name(stage, i)]}/"
                f"{cost.full_knob_widths['mid:' + adapter.block_name(stage, i)]}"
                for i in kept if adapter.block_name(stage, i) in cfg["mid"]]
        lines.append(f"{stage:<8} {str(kept) + f' of {len(names)}':<22} {planes:>11}  {', '.join(mids) or '-'}")
    lines.append(f"removed blocks: {', '.join(result['removed_blocks']) or 'none'}")
    lines.append(f"GMACs {fvcore_gmacs:.6f} (fvcore recount of the rebuilt student) "
                 f"{'<=' if fvcore_gmacs <= budget else '>'} budget {budget:g} GMACs "
                 f"({100 * fvcore_gmacs / budget:.1f}% of budget, {100 * fvcore_gmacs / result['full_gmacs']:.1f}% "
                 f"of the full {result['full_gmacs']:.4f})")
    return lines


@cli
def main(argv=None):
    # fvcore's import uses torch.jit.script, which torch 2.x flags as deprecated on every run
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    a = build_parser().parse_args(argv)
    recipe = recipe_from_args(a)
    check_range("--depth-share", a.depth_share, 0.0, 1.0, hint="it is the share of removed MACs taken by depth")
    check_range("--min-keep", a.min_keep, 0.0, 1.0, lo_open=True, hint="a share of channels, e.g. 0.0625")
    check_range("--bins", a.bins, 2, 1000)
    check_range("--probe-samples", a.probe_samples, 1, 10 ** 7)
    check_range("--kd-epochs", a.kd_epochs, 1, 10 ** 6)
    adapter = get_adapter(a.arch)
    device = pick_device(a.device)
    ensure_writable(out_root(a.out_dir))
    ds = load_dataset(a.dataset, a.data_dir, a.resolution, a.val_size, a.split_seed)
    cost = CostModel(adapter, ds.num_classes, ds.resolution)
    check_budget(cost, a.budget_gmacs)  # before any teacher training
    log = sys.stderr
    print(f"{ds.describe()}; device {device}", file=log)
    with contextlib.redirect_stdout(log) if a.json else contextlib.nullcontext():
        ctx = prepare_context(a.arch, ds, recipe, device, a.out_dir)
        block_scores = ctx.get_block_scores(a.bins, a.probe_samples)
        groups = [g for g in adapter.group_widths(ctx.teacher) if g.partition(":")[0] in ("planes", "mid", "mid2")]
        probe = probe_loader(ds, device, max_samples=a.probe_samples) if a.signal == "mi" else None
        scores = channel_scores(ctx.teacher, adapter, groups, a.signal, probe, a.bins)
        result = allocate(adapter, ctx.teacher, a.budget_gmacs, ds.num_classes, ds.resolution, block_scores,
                          scores, depth_share=a.depth_share, min_keep=a.min_keep, cost=cost)
    fv = metrics.gmacs(adapter.rebuild(result["keep_cfg"], ds.num_classes), ds.resolution)
    t = ctx.teacher_record
    head = (f"allocation for {a.arch} on {ds.name} ({ds.resolution}x{ds.resolution}): budget {a.budget_gmacs:g} GMACs, "
            f"signal {a.signal}, depth share {a.depth_share:g}, min keep {a.min_keep:g}; teacher val top-1 "
            f"{t['val_top1']:.2f}%, {result['steps']} greedy steps")
    lines = [head] + summary_lines(result, cost, fv)
    if a.json:
        print("\n".join(lines), file=log)
        out = {"arch": a.arch, "dataset": ds.name, "resolution": ds.resolution, "num_classes": ds.num_classes,
               "signal": a.signal, "depth_share": a.depth_share, "min_keep": a.min_keep, **result,
               "fvcore_gmacs": fv, "teacher": {"val_top1": t.get("val_top1"), "test_top1": t.get("test_top1"),
                                                 "path": str(ctx.cache_dir)},
               "plan": allocation_plan(result, a.signal, {"epochs": a.kd_epochs})}
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    main()
