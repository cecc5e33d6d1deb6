"""Plans are data: validation, an end-to-end M2M-DC plan on digits, save/reload."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2mdc import metrics
from m2mdc.errors import UserError
from m2mdc.context import Context
from m2mdc.presets import m2mdc_plan
from m2mdc.results import load_result, save_result
from m2mdc.runner import run_plan
from m2mdc.steps import validate_plan
from m2mdc.teacher import TeacherRecipe, get_teacher
from m2mdc.train import evaluate
from m2mdc.data import Loader

TABLE = Path(__file__).resolve().parents[1] / "analysis" / "compress_table.py"


@pytest.fixture(scope="module")
def ctx(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    teacher, rec = get_teacher("resnet18", digits, TeacherRecipe(epochs=6), torch.device("cpu"), out, quiet=True)
    return Context("resnet18", digits, teacher, torch.device("cpu"), rec, out / "cache")


@pytest.mark.parametrize("plan,msg", [
    ([], "non-empty"),
    ([{"step": "quantum_prune"}], "unknown step"),
    ([{"step": "kd", "epochz": 3}], "unknown parameter"),
    ([{"step": "block_prune", "ratio": 1.0}], "outside"),
    ([{"step": "block_prune", "ratio": -0.1}], "outside"),
    ([{"step": "block_prune"}], "exactly one"),
    ([{"step": "block_prune", "keep_blocks": {"layer3": [5]}}], "missing block"),
    ([{"step": "block_prune", "keep_blocks": {"layer2": []}}], "empties"),
    ([{"step": "planes", "keep": 0.0}], "keep"),
    ([{"step": "mid", "keep": 1.2}], "keep"),
    ([{"step": "planes", "signal": "entropy"}], "signal"),
    ([{"step": "kd", "epochs": 0}], "epochs"),
])
def test_bad_plans(plan, msg):
    with pytest.raises(UserError, match=msg):
        validate_plan(plan, "resnet18", 10)


def test_m2mdc_plan_shape():
    steps = [s["step"] for s in m2mdc_plan(0.5, 0.5, 0.5)]
    assert steps == ["block_prune", "kd", "planes", "kd", "mid", "kd"]
    assert [s["step"] for s in m2mdc_plan(0.5, None, 1.0)] == ["block_prune", "kd"]


def test_end_to_end_plan_and_reload(ctx, tmp_path):
    seen = []
    plan = m2mdc_plan(0.5, 0.5, 0.5, epochs=1)
    model, rec = run_plan(plan, ctx, on_epoch=seen.append, quiet=True)
    assert [r["step"] for r in rec["steps"]] == ["block_prune", "kd", "planes", "kd", "mid", "kd"]
    gm = [r["gmacs"] for r in rec["steps"]]
    assert gm[0] < ctx.teacher_record["gmacs"] and gm[2] < gm[1] and gm[4] < gm[3]
    assert rec["gmacs"] == metrics.gmacs(model) == gm[-1]
    assert len(seen) == 3 and all("step_index" in r for r in seen)
    blocks = rec["keep_cfg"]["blocks"]
    assert sum(map(len, blocks.values())) == 8 - 2  # floor(0.5 * 5 free blocks)
    assert {0} <= set(blocks["layer2"]) and {0} <= set(blocks["layer4"])  # protected kept
    assert rec["feature_index"] is not None and len(rec["feature_index"]) == model.fc.in_features
    # phi tracks the teacher channels that survived layer4's planes slicing
    assert len(set(rec["feature_index"])) == len(rec["feature_index"])
    folder = save_result(model, rec, tmp_path / "student")
    again, meta = load_result(folder)
    val = Loader(ctx.ds.val, 512)
    assert evaluate(again, val) == rec["val_top1"]
    assert json.loads((folder / "record.json").read_text())["gmacs"] == rec["gmacs"]
    table = subprocess.run([sys.executable, str(TABLE), str(folder)], capture_output=True,
                           text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert [ln.split("|")[2].strip() for ln in lines[2:]] == ["teacher", "block-KD", "planes-KD",
                                                             "inner-slice (mid-KD)"]
    assert f"{rec['test_top1']:.2f}%" in lines[-1] and f"{rec['gmacs']:.4f}" in lines[-1]
    bad = subprocess.run([sys.executable, str(TABLE), str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1


def test_explicit_keep_blocks_plan(ctx):
    kb = {"layer1": [0], "layer2": [0], "layer3": [0, 1], "layer4": [0, 1]}
    model, rec = run_plan([{"step": "block_prune", "keep_blocks": kb}], ctx, quiet=True, eval_test=False)
    assert rec["keep_cfg"]["blocks"] == kb
    for name, p in model.state_dict().items():  # kept weights identical before KD
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(p, ctx.teacher.state_dict()[name])


def test_on_epoch_can_stop_the_plan(ctx):
    _, rec = run_plan(m2mdc_plan(0.5, 0.5, 0.5, epochs=2), ctx, on_epoch=lambda r: True, quiet=True,
                      eval_test=False)
    assert rec["stopped_early"] and len(rec["steps"]) == 2


@pytest.mark.parametrize("args,needle", [
    (["--prune-ratio", "1.0"], "outside"),
    (["--planes-keep", "0"], "keep"),
    (["--keep-blocks", '{"layer3": [9]}'], "missing block"),
    (["--plan", '[{"step": "shrink"}]'], "unknown step"),
    (["--plan", "not json"], "JSON"),
])
def test_compress_cli_bad_input(args, needle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "m2mdc.compress", "--dataset", "digits", "--out-dir",
                        str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "compress").exists() or not any((tmp_path / "o" / "compress").iterdir())
