"""Search spaces: bundled files load; malformed ones are rejected with a message naming the entry."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from m2mdc.errors import UserError
from spaces import ORDERS, SPACES_DIR, load_space, parse_space

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "mobilenet_v2", "resnet18-allocator"])
def test_bundled_spaces_load(name):
    space = load_space(name)
    assert space.sampled_names(), "a bundled space samples something"
    ps = space.param_space()
    if space.mode == "fractions":
        assert set(ps["planes_keep"]) == set(
            {"resnet18": ["layer1", "layer2", "layer3", "layer4"], "resnet34": ["layer1", "layer2", "layer3", "layer4"],
             "mobilenet_v2": [f"stage{i}" for i in range(1, 8)]}[space.arch])
        assert set(space.params["order"].choices) <= set(ORDERS)


def test_every_architecture_family_has_a_space():
    assert {p.stem for p in SPACES_DIR.glob("*.yaml")} >= {"resnet18", "resnet34", "mobilenet_v2"}


def _raw(**params):
    return {"arch": "resnet18", "mode": "fractions", "params": params}


@pytest.mark.parametrize("raw, words", [
    (_raw(prune_ratio={"low": 0.0, "high": 1.0}), "prune_ratio: 1.0 is outside [0, 1)"),
    (_raw(mid_keep={"low": 0.0, "high": 0.5}), "mid_keep: 0.0 is outside (0, 1]"),
    (_raw(mid_keep={"low": 0.6, "high": 0.5}), "low 0.6 must be below high 0.5"),
    (_raw(kd_lr={"low": 0.0, "high": 1e-3, "log": True}), "kd_lr: 0.0 is outside (0, inf)"),
    (_raw(signal={"choices": ["bn", "entropy"]}), "'entropy' is not one of bn, l1, mi, group_l1"),
    (_raw(order={"choices": ["bpm", "bpx"]}), "'bpx' is not one of"),
    (_raw(qat={"choices": ["yes"]}), "'yes' is not one of"),
    (_raw(signal={"low": 0, "high": 1}), "signal is categorical"),
    (_raw(depth_share=0.5), "unusable parameter(s) ['depth_share']"),
    (_raw(widthh=0.5), "unknown or, in mode fractions, unusable parameter(s) ['widthh']"),
    (_raw(alpha={"choices": []}), "choices must be a non-empty list"),
    (_raw(alpha={"lo": 0, "hi": 1}), "must be a value, {low, high[, log]} or {choices: [...]}"),
    ({"arch": "vgg16", "params": {}}, "arch 'vgg16' is not one of"),
    ({"arch": "resnet18", "mode": "grid", "params": {}}, "mode 'grid' is not one of"),
    ({"arch": "resnet18", "mode": "allocator", "params": {"prune_ratio": 0.5}}, "unusable parameter(s) ['prune_ratio']"),
    (["arch", "resnet18"], "must be a mapping"),
])
def test_bad_spaces_are_rejected(raw, words):
    with pytest.raises(UserError) as e:
        parse_space(raw, "x.yaml")
    assert words in str(e.value)
    assert "x.yaml" in str(e.value)


def test_arch_mismatch_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="is for resnet18, not --arch mobilenet_v2"):
        load_space("resnet18", arch="mobilenet_v2")
    with pytest.raises(UserError, match="not found"):
        load_space(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: resnet18\nparams: {alpha: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_space(str(bad))


def test_fixed_values_and_digest_tracks_content(tmp_path):
    raw = yaml.safe_load((SPACES_DIR / "resnet18.yaml").read_text())
    a = parse_space(raw)
    raw["params"]["alpha"] = 0.3
    b = parse_space(raw)
    assert b.params["alpha"].fixed == 0.3 and not b.params["alpha"].sampled
    assert a.digest != b.digest
    assert parse_space(yaml.safe_load((SPACES_DIR / "resnet18.yaml").read_text())).digest == a.digest


def test_frontier_rejects_a_malformed_space_before_ray_starts(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("arch: resnet18\nparams:\n  prune_ratio: {low: 0.2, high: 1.5}\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "search/frontier.py", "--budget-gmacs", "0.02", "--dataset", "digits",
                        "--space", str(bad), "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "prune_ratio: 1.5 is outside [0, 1)" in r.stderr
    assert not (out / "mlflow.db").exists() and not (out / "search").exists()
