"""analysis/proxy_depth.py: a design over depth and cost, each architecture at every fidelity, Kendall's tau
of each cheap one against the long budget; runs saved and reused (a second call trains nothing)."""
from __future__ import annotations

import json
import os
import subprocess

from m2mdc import metrics
from m2mdc.models import get_adapter
from tests.shrunk import LONG_STEPS, SHORT_STEPS
from tests.shrunk import PREFIX as SHRUNK

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_design_spans_depth_and_cost_and_every_fidelity_is_trained_as_named(search_out, tmp_path):
    out = search_out()
    env = {**os.environ, "M2MDC_RESULTS_DIR": str(tmp_path / "results")}
    cmd = [*SHRUNK, "analysis/proxy_depth.py", "--budget-gmacs", "0.02", "--dataset", "digits", "--epochs", "5",
           "--n", "4", "--out-dir", str(out), "--name", "digits"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "results" / "proxy_depth" / "digits"
    design = json.loads((folder / "design.json").read_text())["archs"]
    adapter = get_adapter("resnet18")
    keep = set()
    for arch in design:  # distinct architectures, each at (or, at full width, under) its cost target
        assert arch["gmacs"] <= arch["target_gmacs"] * (1 + 1e-9)
        assert arch["under_target"] or arch["gmacs"] >= arch["target_gmacs"] * 0.98
        keep.add(json.dumps(arch["config"], sort_keys=True))
    assert len(keep) == 4
    runs = [json.loads(p.read_text()) for p in folder.glob("*-seed0-*.json")]
    by_budget = {}
    for run in runs:
        by_budget.setdefault(run["run"]["budget"], []).append(run)
    assert {b: len(v) for b, v in by_budget.items()} == {"adaptive_bn": 4, "search": 4, "short": 4, "long": 4}
    assert all(x["kd_epochs_trained"] == 0 and x["kd_settings"] == {} for x in by_budget["adaptive_bn"])
    assert {x["kd_settings"]["steps_per_epoch"] for x in by_budget["short"] + by_budget["search"]} == {SHORT_STEPS}
    assert all(x["kd_epochs_trained"] == 8 and x["kd_settings"]["steps_per_epoch"] == LONG_STEPS
               for x in by_budget["long"])
    for x in runs:  # the architecture each fidelity trained is the design's, recounted with fvcore
        assert metrics.gmacs(adapter.rebuild(x["keep_cfg"], 10), 32) <= 0.02
    stats = json.loads((folder / "proxy_depth.json").read_text())["tau"]
    assert set(stats) == {"adaptive_bn", "search", "short"}
    assert all(-1 <= s["tau"] <= 1 and -1 <= s["ci_low"] <= s["ci_high"] <= 1 for s in stats.values())
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "[study]" not in again.stdout  # every run reused, nothing trained
    # --partial reports the architectures whose runs are all saved, trains nothing, and says it is partial
    os.remove(next(p for p in folder.glob("long-seed0-*.json")))
    part = subprocess.run([*cmd, "--partial"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert part.returncode == 0, part.stderr[-3000:]
    assert "[study]" not in part.stdout and "Partial: 3 of 4 architectures" in part.stdout
    assert len(json.loads((folder / "proxy_depth.json").read_text())["rows"]) == 3
    assert len(list(folder.glob("long-seed0-*.json"))) == 3
