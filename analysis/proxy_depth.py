"""How well does each cheap fidelity rank architectures across depth and cost? Kendall's tau, with a
bootstrap interval, between each cheaper fidelity's val top-1 and the long budget's.

    python analysis/proxy_depth.py --budget-gmacs 0.02 --n 20 --seeds 0

The architectures are not a search's (a search's trials cluster where its sampler went): they are a
design over the search space (spaces/ARCH.yaml): block-prune ratio and cost target stratified over
their whole ranges (a Latin hypercube: prune ratio 0 to the space's maximum, cost 0.3 to 1.0 of the
budget), every other structural knob drawn from the space, KD at the comparison tables' fixed
settings, no sparsity and no QAT (structure only). Each is compiled as a search trial is (widths
projected onto its cost target, up or down) and drafts are drawn until N distinct projected
keep_cfgs exist. Each is then trained from the teacher at every fidelity of analysis/study.py's
budgets: adaptive_bn (no training: edits + BN recalibration), search (the quick profile's proxy, 2 KD
epochs of 40 batches per repair), short (8 epochs of 40 batches in all) and long (8 full epochs in
all). Runs are saved under results/proxy_depth/NAME/ and reused, so an interrupted measurement resumes
(cheap fidelities of every architecture first, then the long runs). Val only; test is never read.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from m2mdc.cli.args import add_data_args, add_teacher_args, teacher_and_data
from m2mdc.compiler import compile_config, design_point, target_of
from m2mdc.context import prepare_context
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root, write_json, write_text
from m2mdc.knobs import knob_for
from spaces import load_space

from search.promotion import band_edges, band_of

from analysis.finalize import parse_seeds
from analysis.proxy_rank import kendall_with_interval
from analysis.study import BUDGETS, Run, execute, machine, results_root, saved_result

CHEAP = ("adaptive_bn", "search", "short")  # each compared with "long"
STRUCTURE_ONLY = {"qat": False, "sparsity": 0.0}  # the design varies shape and cost, nothing else
COST_RANGE = (0.3, 1.0)
BANDS = 3  # the search's default cost bands (search/frontier.py --bands)


def _draw(param, rng):
    if param.choices is not None:
        return param.choices[int(rng.integers(len(param.choices)))]
    if param.low is not None:
        if param.log:
            return float(np.exp(rng.uniform(np.log(param.low), np.log(param.high))))
        return float(rng.uniform(param.low, param.high))
    return param.fixed


def nest(flat: dict) -> dict:
    """``knob/stage`` entries as {knob: {stage: value}}, as a trial's configuration holds them."""
    out: dict = {}
    for name, value in flat.items():
        head, _, tail = name.partition("/")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[name] = value
    return out


def design(space, target, budget: float, n: int, seed: int = 0, max_draws: int = 50) -> list[dict]:
    """``n`` configurations of ``space`` with distinct projected keep_cfgs, block-prune ratio and cost
    target each stratified over its range (drafts in rounds of n, each round a Latin hypercube)."""
    rng = np.random.default_rng(seed)
    pr = space.params[knob_for("block_prune.ratio")]
    lo_r, hi_r = (pr.low, pr.high) if pr.low is not None else (pr.fixed, pr.fixed)
    chosen, seen = [], set()
    for _ in range(max_draws):
        strata = [(rng.permutation(n) + rng.uniform(size=n)) / n for _ in range(2)]
        for i in range(n):
            flat = {name: _draw(p, rng) for name, p in space.params.items()}
            flat.update(STRUCTURE_ONLY)
            config = nest(design_point(flat, lo_r + strata[0][i] * (hi_r - lo_r),
                                       COST_RANGE[0] + strata[1][i] * (COST_RANGE[1] - COST_RANGE[0])))
            plan = compile_config(config, target, budget_gmacs=budget, project="both")
            key = json.dumps(plan.keep_cfg, sort_keys=True)
            if not plan.feasible or key in seen:
                continue
            seen.add(key)
            chosen.append({"config": config, "gmacs": plan.gmacs, "target_gmacs": plan.target_gmacs,
                           "blocks": sum(len(b) for b in plan.keep_cfg["blocks"].values()),
                           "under_target": plan.under_target})
            if len(chosen) == n:
                return chosen
    raise UserError(f"the space yields only {len(chosen)} distinct architectures in {max_draws * n} draws; "
                    f"lower --n")


@cli
def main(argv=None):
    p = Parser(prog="python analysis/proxy_depth.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-gmacs", type=float, required=True, help="the search budget the costs are shares of")
    p.add_argument("--n", type=int, default=20, help="distinct architectures (default 20)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds; tau uses the mean val (default 0)")
    p.add_argument("--design-seed", type=int, default=0, help="seed of the design's draws (default 0)")
    p.add_argument("--space", default=None, help="space name or YAML path (default: the --arch's)")
    p.add_argument("--name", default=None, help="results folder name (default ARCH-DATASET-bBUDGET-nN-dSEED)")
    p.add_argument("--partial", action="store_true", help="train nothing: the table over the architectures whose "
                   "runs are all saved so far, marked partial (a long measurement's progress)")
    add_teacher_args(p)
    add_data_args(p)
    a = p.parse_args(argv)
    seeds = parse_seeds(a.seeds)
    check_range("--n", a.n, 4, 1000)
    check_range("--budget-gmacs", a.budget_gmacs, 0.0, 1e6, lo_open=True)

    source, ds = teacher_and_data(a)
    space = load_space(a.space or a.arch, arch=a.arch)
    if space.mode != "fractions":
        raise UserError(f"{space.source} is a {space.mode!r} space; the design needs a fractions space")
    name = a.name or f"{a.arch}-{ds.name}-b{a.budget_gmacs:g}-n{a.n}-d{a.design_seed}"
    folder = ensure_writable(results_root() / "proxy_depth" / name)
    ctx = prepare_context(a.arch, ds, source, pick_device(a.device), a.out_dir)
    target = target_of(ctx)
    archs = design(space, target, a.budget_gmacs, a.n, a.design_seed)
    write_json(folder / "design.json", {"budget_gmacs": a.budget_gmacs, "design_seed": a.design_seed,
                                        "space": space.source, "space_digest": space.digest, "archs": archs})
    vals: dict[str, dict[str, list[float]]] = {b: {} for b in (*CHEAP, "long")}
    for fidelity in (*CHEAP, "long"):  # every cheap number first: they are minutes, the long runs hours
        for i, arch in enumerate(archs):
            for seed in seeds:
                run = Run(f"design {i}", "config", fidelity, seed, config=arch["config"], project="both")
                if a.partial:
                    got = saved_result(run, ctx, a.budget_gmacs, folder)
                    if got is not None:
                        vals[fidelity].setdefault(i, []).append(got["val_top1"])
                    continue
                print(f"[proxy-depth] {fidelity}: architecture {i + 1}/{len(archs)} ({arch['blocks']} blocks, "
                      f"{arch['gmacs']:.4f} GMACs), seed {seed}", flush=True)
                got = execute(run, ctx, target, a.budget_gmacs, folder)
                vals[fidelity].setdefault(i, []).append(got["val_top1"])
    done = [i for i in range(len(archs)) if all(len(vals[f].get(i, [])) == len(seeds) for f in vals)]
    if len(done) < 3:
        raise UserError(f"only {len(done)} of {len(archs)} architectures have every run saved; tau needs 3")
    archs = {i: archs[i] for i in done}
    rows = [{"arch": i, "blocks": arch["blocks"], "gmacs": arch["gmacs"], "cost_share": arch["gmacs"] / a.budget_gmacs,
             "block_ratio": arch["config"][knob_for("block_prune.ratio")], **{f: float(np.mean(vals[f][i])) for f in vals}}
            for i, arch in archs.items()]
    stats = {f: kendall_with_interval([r[f] for r in rows], [r["long"] for r in rows]) for f in CHEAP}
    lines = ["| fidelity | what it trains | Kendall tau vs long | 95 % bootstrap interval |", "|---|---|---|---|"]
    for f in CHEAP:
        b = BUDGETS[f]
        what = ("nothing (edits + BN recalibration)" if b["epochs"] == 0 else
                f"{b['epochs']} KD epochs of {b['steps_per_epoch']} batches {'per repair' if b.get('per_repair') else 'in all'}")
        s = stats[f]
        lines.append(f"| {f} | {what} | **{s['tau']:.2f}** | {s['ci_low']:.2f} to {s['ci_high']:.2f} |")
    lines += ["", f"Within the search's {BANDS} cost bands (what promotion ranks: search/promotion.py), tau vs long and "
              "the long-budget val lost by promoting each fidelity's best instead of the band's long-budget best:", "",
              "| band (GMACs) | architectures | " + " | ".join(f"{f}: tau / lost" for f in CHEAP) + " |",
              "|---|---|" + "---|" * len(CHEAP)]
    from scipy.stats import kendalltau  # ~0.6 s of import, as in analysis/proxy_rank.py: not on --help

    edges = band_edges(a.budget_gmacs, BANDS)
    for b in range(BANDS):
        inside = [r for r in rows if band_of(r["gmacs"], edges) == b]
        if len(inside) < 2:
            continue
        best = max(r["long"] for r in inside)
        cells = []
        for f in CHEAP:
            tau = float(kendalltau([r[f] for r in inside], [r["long"] for r in inside]).statistic)
            lost = best - max(inside, key=lambda r: r[f])["long"]
            cells.append(f"{tau:.2f} / {lost:.2f}")
        lines.append(f"| {edges[b]:.4f}-{edges[b + 1]:.4f} | {len(inside)} | " + " | ".join(cells) + " |")
    detail = ["| # | blocks | GMACs | share of budget | prune ratio | " + " | ".join(f"val {f}" for f in vals) + " |",
              "|---" * (5 + len(vals)) + "|"]
    detail += [f"| {r['arch']} | {r['blocks']} | {r['gmacs']:.4f} | {r['cost_share']:.2f} | {r['block_ratio']:.2f} | "
               + " | ".join(f"{r[f]:.2f}" for f in vals) + " |" for r in rows]
    partial = (f"**Partial: {len(rows)} of {a.n} architectures have every run saved** (the rest resume with the "
               f"same command without --partial).\n\n" if len(rows) < a.n else "")
    md = (f"Command: `{a.command}`\n\n" + partial + "\n".join(lines) +
          f"\n\n{len(rows)} distinct architectures (projected keep_cfg), costs {min(r['cost_share'] for r in rows):.2f}"
          f"-{max(r['cost_share'] for r in rows):.2f} of {a.budget_gmacs:g} GMACs, "
          f"{min(r['blocks'] for r in rows)}-{max(r['blocks'] for r in rows)} blocks; seeds "
          f"{','.join(map(str, seeds))}; {stats[CHEAP[0]]['bootstrap']} bootstrap resamples over architectures.\n\n"
          + "\n".join(detail) + f"\n\nMachine: {machine()}.\n")
    write_text(folder / "proxy_depth.md", md)
    write_json(folder / "proxy_depth.json", {"rows": rows, "tau": stats, "seeds": seeds, "budgets": BUDGETS})
    out = ensure_writable(out_root(a.out_dir) / "proxy_depth")
    write_text(out / f"{name}.md", md)
    print(md)
    print(f"-> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
