"""analysis/paper_table.py on the embedded digits data: per-seed runs, mean ± std, sizes, resume."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import paper_table
from m2mdc import metrics
from m2mdc.models import get_adapter

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--dataset", "digits", "--archs", "resnet18", "--seeds", "0,1", "--kd-epochs", "1", "--steps-per-epoch", "2",
        "--epochs", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    # module scope runs before conftest's per-test isolation: keep the committed results/ untouched here too
    mp = pytest.MonkeyPatch()
    mp.setenv("M2MDC_RESULTS_DIR", str(out / "results"))
    try:
        assert paper_table.main([*ARGS, "--out-dir", str(out)]) == 0
    finally:
        mp.undo()
    return out, json.loads((out / "paper_table" / "paper_table-digits.json").read_text())


def test_rows_are_mean_and_std_of_the_seed_runs(report):
    out, rep = report
    records = [json.loads(p.read_text()) for p in sorted((out / "paper_table").glob("resnet18-digits-seed*/record.json"))]
    assert len(records) == 2 and [r["plan"][1]["seed"] for r in records] == [0, 1]
    stages = rep["archs"]["resnet18"]["stages"]
    assert list(stages) == list(paper_table.ROWS)
    kd_steps = [[s for s in r["steps"] if s["step"] == "kd"] for r in records]
    for i, label in enumerate(paper_table.ROWS[1:]):  # block-KD, planes-KD, inner-slice = the 3 KD repairs
        assert stages[label]["test_top1"] == [k[i]["test_top1"] for k in kd_steps]
        assert stages[label]["gmacs"] == kd_steps[0][i]["gmacs"]
    md = (out / "paper_table" / "paper_table-digits.md").read_text()
    final = stages[paper_table.ROWS[-1]]["test_top1"]
    assert f"{statistics.mean(final):.2f} ± {statistics.stdev(final):.2f}" in md
    assert "85.29 (mean), 85.46 (best)" in md and "Differences of setting" in md


def test_student_has_the_papers_size_shares_recounted_with_fvcore(report):
    out, rep = report
    arch = rep["archs"]["resnet18"]
    a = get_adapter("resnet18")
    record = json.loads(next((out / "paper_table").glob("resnet18-digits-seed0*/record.json")).read_text())
    keep_cfg = record["keep_cfg"]
    teacher = a.base_model(10)
    assert metrics.gmacs(a.rebuild(keep_cfg, 10)) == pytest.approx(arch["stages"][paper_table.ROWS[-1]]["gmacs"])
    # the analytic pick (CostModel, before training) is what the run built
    assert arch["shares"]["gmacs_share"] == pytest.approx(record["gmacs"] / metrics.gmacs(teacher), rel=1e-9)
    assert arch["shares"]["params_share"] == pytest.approx(record["params"] / metrics.count_params(teacher), rel=1e-9)
    paper = paper_table.PAPER["resnet18"]
    assert abs(arch["shares"]["gmacs_share"] - paper["gmacs_share"]) < 0.02
    assert abs(arch["shares"]["params_share"] - paper["params_share"]) < 0.02


def test_a_second_call_reuses_the_seed_runs(report, capsys):
    out, _ = report
    before = {p: p.stat().st_mtime_ns for p in (out / "paper_table").glob("resnet18-digits-seed*/model.pt")}
    assert paper_table.main([*ARGS, "--out-dir", str(out)]) == 0
    assert capsys.readouterr().out.count("[paper] reusing") == 2
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize("args, words", [
    (["--archs", "vgg16"], "the paper reports resnet18, resnet34, mobilenet_v2"),
    (["--seeds", "0,0"], "repeats a seed"),
    (["--seeds", "a"], "comma-separated integers"),
    (["--kd-epochs", "0"], "--kd-epochs=0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    r = subprocess.run([sys.executable, "analysis/paper_table.py", "--dataset", "digits", "--out-dir", str(tmp_path),
                        *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "paper_table").exists()


def test_a_later_call_for_another_arch_completes_the_same_table(report, tmp_path):
    """One table per dataset over several calls: an earlier architecture stays, with its own command."""
    out, rep = report
    path = out / "paper_table" / "paper_table-digits.json"
    older = {k: v for k, v in rep["archs"]["resnet18"].items() if k != "seeds"}  # before per-architecture seeds
    fake = {**rep, "archs": {"resnet34": {**older, "command": "python analysis/paper_table.py --archs resnet34"}}}
    merged = paper_table.merged_with_earlier({**rep, "archs": {"resnet18": rep["archs"]["resnet18"]}}, path)
    assert list(merged["archs"]) == ["resnet18"]
    path2 = tmp_path / "paper_table-digits.json"
    path2.write_text(json.dumps(fake))
    merged = paper_table.merged_with_earlier(rep, path2)
    assert set(merged["archs"]) == {"resnet18", "resnet34"}
    assert "Command (resnet34): `python analysis/paper_table.py --archs resnet34`" in paper_table.render(merged)
    fewer = {**fake, "seeds": [7]}  # other seeds: still one table, each architecture says its own
    path2.write_text(json.dumps(fewer))
    merged = paper_table.merged_with_earlier(rep, path2)
    assert set(merged["archs"]) == {"resnet18", "resnet34"}
    text = paper_table.render(merged)
    assert "each architecture's seeds (resnet34 7; resnet18 0,1)" in text and "1 for resnet34, 2 for resnet18" in text
    other = {**fake, "kd_epochs": 9}  # other settings: not merged
    path2.write_text(json.dumps(other))
    assert set(paper_table.merged_with_earlier(rep, path2)["archs"]) == {"resnet18"}
