"""m2mdc.compress on what a user builds: torchvision modules (a replaced head, a subclass under another
name, a MobileNetV2), trained by a plain loop, on a custom Dataset class whose own transform the accuracy
depends on; the recorded accuracy equals a fresh evaluation, in a new process, through the user's loader;
bad input raises one UserError that says what to fix."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.models import mobilenet_v2
from torchvision.models.resnet import BasicBlock, ResNet

import m2mdc
from m2mdc.metrics import gmacs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from compress_own_model import Digits, train_plainly  # noqa: E402

FRESH_EVAL = """
import json, sys
import torch
from torch.utils.data import DataLoader
sys.path.insert(0, {examples!r})
from compress_own_model import Digits
from m2mdc.metrics import gmacs
from m2mdc.results import load_result
model, _ = load_result({out!r})
model.eval()
correct = total = 0
with torch.no_grad():
    for x, y in DataLoader(Digits("val", invert={invert}), batch_size=37):
        correct += int((model(x).argmax(1) == y).sum()); total += len(y)
print(json.dumps({{"val_top1": 100.0 * correct / total, "gmacs": gmacs(model, 32)}}))
"""


def fresh_eval(out: Path, invert: bool = True) -> dict:
    """Val top-1 and fvcore GMACs of a saved result, in a new process, through the user's own loader."""
    code = FRESH_EVAL.format(examples=str(REPO / "examples"), out=str(out), invert=invert)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


class DigitNet(ResNet):
    """A user's subclass of torchvision's ResNet under its own name: ResNet-18's blocks, ``cifar``: the
    CIFAR stem (3x3 stride-1 conv, no max pool)."""

    def __init__(self, num_classes=10, cifar=False):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()


@pytest.fixture(scope="module")
def trained():
    """A DigitNet trained by a plain loop on the inverting transform (~10 s on 2 cores)."""
    torch.manual_seed(0)
    return train_plainly(DigitNet(), Digits("train"), epochs=3)


def test_example_compresses_within_budget_and_records_what_a_fresh_process_measures(tmp_path):
    out = tmp_path / "ex"
    r = subprocess.run([sys.executable, "examples/compress_own_model.py", "--out", str(out), "--epochs", "3"],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    api = json.loads((out / "api.json").read_text())
    fresh = fresh_eval(out)
    assert fresh["val_top1"] == pytest.approx(api["val_top1"], abs=1e-9)
    assert fresh["gmacs"] <= api["budget_gmacs"] and fresh["gmacs"] >= 0.98 * api["budget_gmacs"]
    assert api["val_top1"] > 50  # it learnt (10 classes: chance is 10 %)


@pytest.mark.slow
def test_search_example_finds_members_a_fresh_process_measures_the_same(tmp_path):
    """examples/search_own_model.py: a smoke search through search.api on the user's model and Datasets;
    every Pareto member is within the budget (fvcore) and scores its recorded val through the user's loader."""
    out = tmp_path / "search"
    r = subprocess.run([sys.executable, "examples/search_own_model.py", "--out", str(out), "--epochs", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    members = json.loads((out / "frontier.json").read_text())
    assert members and all(m["run_id"] for m in members)
    for m in members:
        fresh = fresh_eval(Path(m["model_dir"]))
        assert fresh["gmacs"] <= 0.02 and fresh["gmacs"] == pytest.approx(m["gmacs"], abs=1e-9)
        assert fresh["val_top1"] == pytest.approx(m["val_top1"], abs=1e-9)


def test_search_refuses_bad_input_before_writing_anything(tmp_path):
    from search import api

    with pytest.raises(m2mdc.UserError, match="no adapter fits Sequential"):
        api.search(nn.Sequential(nn.Conv2d(3, 4, 3)), Digits("train"), Digits("val"), budget_gmacs=0.02,
                   out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_subclass_compresses_and_its_accuracy_depends_on_the_users_transform(trained, tmp_path):
    budget = 0.5 * gmacs(trained, 32)
    kw = dict(budget_gmacs=budget, kd_epochs=1, steps_per_epoch=6, batch_size=64)
    result = m2mdc.compress(trained, Digits("train"), Digits("val"), out_dir=tmp_path / "inv", **kw)
    assert result.arch == "resnet18"
    assert type(result.model).__name__ == "ResNet"  # the library's torchvision module, the user's weights sliced
    assert 0.98 * budget <= gmacs(result.model, 32) <= budget
    assert fresh_eval(tmp_path / "inv")["val_top1"] == pytest.approx(result.val_top1, abs=1e-9)
    # the same model on data without its transform: a second call in this process must read the new data
    # (nothing cached from the first), on which the model scores far lower: the transform is applied
    plain = m2mdc.compress(trained, Digits("train", invert=False), Digits("val", invert=False), **kw)
    assert result.record["teacher"]["val_top1"] > 70
    assert plain.record["teacher"]["val_top1"] < result.record["teacher"]["val_top1"] - 30


def test_structure_not_name_decides_the_family():
    from m2mdc.models import recognise_module

    assert recognise_module(DigitNet(cifar=True))[0] == "resnet18-cifar"
    assert recognise_module(DigitNet())[0] == "resnet18"
    assert recognise_module(mobilenet_v2(num_classes=3))[0] == "mobilenet_v2"

    class Other(DigitNet):
        def forward(self, x):  # the layers of ResNet-18, another computation
            return super().forward(x.flip(3) * 2)

    with pytest.raises(m2mdc.UserError, match="computes something else"):
        recognise_module(Other())


def test_replaced_head_and_mobilenet_are_recognised(tmp_path):
    from torchvision.models import resnet18

    head = resnet18()
    head.fc = nn.Linear(512, 10)
    mnet = mobilenet_v2(num_classes=10)
    tiny = TensorDataset(torch.randn(40, 3, 32, 32), torch.arange(40) % 10)
    for model, arch in ((head, "resnet18"), (mnet, "mobilenet_v2")):
        budget = 0.7 * gmacs(model, 32)
        result = m2mdc.compress(model, tiny, DataLoader(tiny, batch_size=16), budget_gmacs=budget, kd_epochs=1,
                                steps_per_epoch=1, batch_size=16)
        assert result.arch == arch
        assert 0.98 * budget <= gmacs(result.model, 32) <= budget
        assert result.record["teacher"]["gmacs"] == pytest.approx(gmacs(model, 32))


class WrongShapes(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(1, 32, 32), 0  # one channel


@pytest.mark.parametrize("case, match", [
    ("module", "no adapter fits Sequential"),
    ("shapes", r"images of shape \[1, 32, 32\]; each must be a square 3-channel"),
    ("labels", r"labels 0\.\.11, but the model's head has 10 classes"),
    ("empty", "is empty"),
    ("budget", "cannot meet budget_gmacs=1e-05"),
    ("head", "head fc is Sequential, not nn.Linear"),
])
def test_bad_input_is_one_error_saying_what_to_fix(case, match):
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    ok = TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 10)
    train, val, kw = ok, ok, {"budget_gmacs": 0.02}
    if case == "module":
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    elif case == "shapes":
        train = WrongShapes()
    elif case == "labels":
        val = TensorDataset(torch.randn(12, 3, 32, 32), torch.arange(12))
    elif case == "empty":
        val = DataLoader(TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long)))
    elif case == "budget":
        kw = {"budget_gmacs": 1e-5}
    elif case == "head":
        model.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 10))
    with pytest.raises(m2mdc.UserError, match=match):
        m2mdc.compress(model, train, val, kd_epochs=1, steps_per_epoch=1, **kw)


def test_readme_python_block_is_the_example_ci_runs():
    """Every line of the README's Python blocks is a line of an example script (which the tests run)."""
    import re

    readme = (REPO / "README.md").read_text()
    examples = "\n".join(p.read_text() for p in (REPO / "examples").glob("*.py"))
    lines = [ln.strip() for b in re.findall(r"```python\n(.*?)```", readme, re.S) for ln in b.splitlines()]
    assert lines and all(ln in examples for ln in lines if ln), [ln for ln in lines if ln and ln not in examples]
