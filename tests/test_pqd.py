"""Prune-Quantize-Distill as plan steps: legal orders, an INT8 plan end to end, exact reload."""
import pytest
import torch

from m2mdc.data import Loader
from m2mdc.errors import UserError
from m2mdc.context import Context
from m2mdc.presets import PQD_ORDERS, PRESETS, preset_plan
from m2mdc.results import load_result, save_result
from m2mdc.runner import run_plan
from m2mdc.steps import validate_plan
from m2mdc.teacher import TeacherRecipe, get_teacher
from m2mdc.train import evaluate


@pytest.fixture(scope="module")
def ctx(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("pqd")
    teacher, rec = get_teacher("resnet18", digits, TeacherRecipe(epochs=6), torch.device("cpu"), out, quiet=True)
    return Context("resnet18", digits, teacher, torch.device("cpu"), rec, out / "cache")


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_legal(name):
    plan = validate_plan(preset_plan(name), "resnet18", 10)
    steps = [s["step"] for s in plan]
    if name in PQD_ORDERS:
        order = [{"sparsity": "p", "qat": "q", "kd": "d"}[s] for s in steps if s in ("sparsity", "qat", "kd")]
        assert "".join(order) == name


def test_pqd_epoch_split():
    plan = preset_plan("pqd", epochs=10, split=(0.2, 0.4, 0.4))
    assert [(s["step"], s.get("epochs")) for s in plan if s["step"] in ("train", "kd")] == \
        [("train", 2), ("train", 4), ("kd", 4)]


@pytest.mark.parametrize("plan,msg", [
    ([{"step": "qat"}, {"step": "planes", "keep": 0.5}], "illegal stage order"),
    ([{"step": "sparsity", "target": 0.5}, {"step": "block_prune", "ratio": 0.5}], "illegal stage order"),
    ([{"step": "qat"}, {"step": "kd"}, {"step": "qat"}], "twice"),
    ([{"step": "sparsity", "target": 1.0}], "outside"),
    ([{"step": "train", "epochs": 0}], "epochs"),
])
def test_illegal_orders_and_values(plan, msg):
    with pytest.raises(UserError, match=msg):
        validate_plan(plan, "resnet18", 10)


def test_qat_plan_converts_to_int8_and_reloads_exactly(ctx, tmp_path):
    plan = [{"step": "sparsity", "target": 0.5}, {"step": "qat", "calib_batches": 2},
            {"step": "kd", "epochs": 1}, {"step": "sparsity", "target": 0.6}]
    model, rec = run_plan(plan, ctx, quiet=True)
    assert rec["int8"] is True and rec["steps"][-1]["step"] == "convert"
    assert rec["sparsity"] == pytest.approx(0.6, abs=1e-3)
    # the INT8 model agrees with its fake-quant twin (val accuracy within one image in a hundred)
    assert abs(rec["val_top1"] - rec["fake_quant_val_top1"]) <= 1.0
    folder = save_result(model, rec, tmp_path / "int8")
    again, meta = load_result(folder)
    assert meta["int8"]
    assert evaluate(again, Loader(ctx.ds.val, 512)) == rec["val_top1"]


def test_sparse_fp32_plan_keeps_zeros_and_reloads(ctx, tmp_path):
    model, rec = run_plan([{"step": "sparsity", "target": 0.7}, {"step": "train", "epochs": 1}], ctx,
                          quiet=True, eval_test=False)
    assert rec["int8"] is False and rec["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # masks made permanent
    folder = save_result(model, rec, tmp_path / "fp32")
    again, _ = load_result(folder)
    assert evaluate(again, Loader(ctx.ds.val, 512)) == rec["val_top1"]
    prog = torch.export.load(folder / "model.pt2").module()
    x = next(iter(Loader(ctx.ds.val, 16))).x
    assert torch.allclose(prog(x), again(x), atol=1e-5)
