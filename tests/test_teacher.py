"""Teacher: cache hits train nothing; ImageNet-weights path via a local state_dict; bad input."""
import subprocess
import sys

import pytest
import torch
from torchvision import models as tvm

from m2mdc import teacher as T
from m2mdc.errors import UserError

RECIPE = T.TeacherRecipe(epochs=1, batch_size=128)


def test_second_request_is_a_cache_hit(digits, out_dir, monkeypatch):
    m1, r1 = T.get_teacher("resnet18", digits, RECIPE, torch.device("cpu"), out_dir, quiet=True)
    assert r1["cache_hit"] is False and 0 <= r1["test_top1"] <= 100

    def boom(*a, **k):
        raise AssertionError("a cached teacher must not be retrained")

    monkeypatch.setattr(T, "train_teacher", boom)
    m2, r2 = T.get_teacher("resnet18", digits, RECIPE, torch.device("cpu"), out_dir, quiet=True)
    assert r2["cache_hit"] is True and r2["val_top1"] == r1["val_top1"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # a different recipe is a different cache entry
    assert T.cache_dir("resnet18", digits, RECIPE, out_dir) != T.cache_dir(
        "resnet18", digits, T.TeacherRecipe(epochs=2), out_dir)


def test_corrupt_cached_checkpoint_is_a_user_error(digits, out_dir):
    folder = T.cache_dir("resnet18", digits, RECIPE, out_dir)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        T.get_teacher("resnet18", digits, RECIPE, torch.device("cpu"), out_dir, quiet=True)


def test_imagenet_weights_path_with_local_state_dict(tmp_path):
    src = tvm.resnet18(num_classes=1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(src.state_dict(), path)
    m = T.init_model("resnet18", 10, str(path))
    assert torch.equal(m.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert m.fc.out_features == 10
    with pytest.raises(UserError, match="do not match"):
        T.init_model("resnet34", 10, str(path))


def test_finetune_trains_only_last_third(digits, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(tvm.resnet18(num_classes=1000).state_dict(), path)
    model = T.init_model("resnet18", 10, str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = T._unfreeze_last_third(model, "resnet18")
    assert 0 < len(params) < len(list(model.parameters()))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("layer4.", "fc.")) for n in names) and "conv1.weight" not in names
    assert torch.equal(before["conv1.weight"], model.conv1.weight)


def _cli(*args, env_out):
    return subprocess.run([sys.executable, "-m", "m2mdc.teacher", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "M2MDC_OUT_DIR": str(env_out)}, timeout=300)


@pytest.mark.parametrize("args,needle", [
    (["--arch", "vgg"], "invalid choice"),
    (["--dataset", "imagenet"], "invalid choice"),
    (["--weights", "/no/such/file.pth"], "neither"),
    (["--epochs", "0"], "--epochs must be"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
])
def test_cli_bad_input_exits_2_with_one_line(args, needle, tmp_path):
    r = _cli("--dataset", "digits", *args, env_out=tmp_path / "o")
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "teachers").exists()


def test_cli_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a folder cannot be created below a file, even by root
    r = _cli("--dataset", "digits", "--out-dir", str(blocker / "sub"), env_out=tmp_path / "o")
    assert r.returncode == 2 and "not writable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_trains_then_hits_cache(tmp_path):
    args = ("--dataset", "digits", "--epochs", "1", "--out-dir", str(tmp_path / "o"))
    r1 = _cli(*args, env_out=tmp_path / "o")
    assert r1.returncode == 0, r1.stderr
    assert "(trained)" in r1.stdout and "test top-1" in r1.stdout
    r2 = _cli(*args, env_out=tmp_path / "o")
    assert r2.returncode == 0, r2.stderr
    assert "(cache hit)" in r2.stdout
