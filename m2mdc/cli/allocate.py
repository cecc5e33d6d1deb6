"""Allocate a GMAC budget over blocks, stage planes and block mid widths, guided by MI block
scores and channel scores of the (cached) teacher; prints the keep configuration it chose.

    python -m m2mdc.allocate --arch resnet18 --budget-gmacs 0.02 --dataset digits --json
"""
from __future__ import annotations

import contextlib
import json
import sys

from .. import metrics
from ..allocate import check_budget
from ..compiler import compile_config, target_of
from ..context import prepare_context
from ..cost import CostModel
from ..device import pick_device
from ..errors import Parser, UserError, check_range, cli
from ..io import ensure_writable, out_root
from ..knobs import KNOBS
from ..models import get_adapter
from ..data import num_classes_of
from .args import add_data_args, add_teacher_args, teacher_and_data, teacher_from_args
from .compress import _knob_value, knob_metavar

KNOBS_USED = [k for k in KNOBS.values() if "allocator" in k.recipes]  # what the allocator recipe reads


def build_parser() -> Parser:
    p = Parser(prog="python -m m2mdc.allocate", description=__doc__.split("\n\n")[0])
    add_teacher_args(p)
    add_data_args(p)
    g = p.add_argument_group("allocation")
    g.add_argument("--budget-gmacs", type=float, required=True,
                   help="GMAC budget of the student (fvcore count at --resolution), e.g. 0.02")
    for knob in KNOBS_USED:
        g.add_argument(knob.flag, dest=f"knob_{knob.name}", type=_knob_value(knob), default=knob.default,
                       metavar=knob_metavar(knob), help=f"{knob.doc} (default {knob.default})")
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
    a = build_parser().parse_args(argv)
    config = {}
    for knob in KNOBS_USED:
        value = getattr(a, f"knob_{knob.name}")
        msg = knob.rule.message(knob.flag, value)
        if msg is not None:
            raise UserError(msg)
        config[knob.name] = value
    check_range("--bins", a.bins, 2, 1000)
    check_range("--probe-samples", a.probe_samples, 1, 10 ** 7)
    check_range("--kd-epochs", a.kd_epochs, 1, 10 ** 6)
    device = pick_device(a.device)
    ensure_writable(out_root(a.out_dir))
    teacher_from_args(a)  # the architecture's full name, for the budget check
    adapter = get_adapter(a.arch)
    cost = CostModel(adapter, num_classes_of(a.dataset, a.data_dir), a.resolution)
    check_budget(cost, a.budget_gmacs)  # before any teacher training or data decoding
    recipe, ds = teacher_and_data(a)
    log = sys.stderr
    print(f"{ds.describe()}; device {device}", file=log)
    with contextlib.redirect_stdout(log) if a.json else contextlib.nullcontext():
        ctx = prepare_context(a.arch, ds, recipe, device, a.out_dir)
        compiled = compile_config(config, target_of(ctx, a.bins, a.probe_samples), recipe="allocator",
                                  budget_gmacs=a.budget_gmacs, training={"epochs": a.kd_epochs}, bins=a.bins,
                                  probe_samples=a.probe_samples)
    result = compiled.details
    fv = metrics.gmacs(adapter.rebuild(result["keep_cfg"], ds.num_classes), ds.resolution)
    t = ctx.teacher_record
    head = (f"allocation for {a.arch} on {ds.name} ({ds.resolution}x{ds.resolution}): budget {a.budget_gmacs:g} GMACs, "
            + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in config.items())
            + f"; teacher val top-1 {t['val_top1']:.2f}%, {result['steps']} greedy steps")
    lines = [head] + summary_lines(result, cost, fv)
    if a.json:
        print("\n".join(lines), file=log)
        out = {"arch": a.arch, "dataset": ds.name, "resolution": ds.resolution, "num_classes": ds.num_classes,
               **config, **result, "fvcore_gmacs": fv,
               "teacher": {"val_top1": t.get("val_top1"), "test_top1": t.get("test_top1"), "path": str(ctx.cache_dir)},
               "plan": compiled.plan}
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    main()
