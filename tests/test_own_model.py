"""Compress the user's own model on the user's own data: an image folder written here as PNG files
(from the digits data; one grayscale, one RGBA), a checkpoint trained by a plain PyTorch loop
written here (not the project's teacher code), saved as a bare state_dict and as a DataParallel
checkpoint dict; compress runs on them (the README's own-model commands, a smoke search on this folder
and checkpoint included: the README's own-model commands, tests/readme.py); bad input is one line, exit 2, nothing written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import models as tvm

from m2mdc.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def write_folder(root: Path, splits: dict, grayscale_one: bool = True) -> Path:
    """digits images as PNG files in ImageFolder layout: root/<split>/<class>/<i>.png."""
    for split, (x, y) in splits.items():
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / f"digit{int(label)}"
            d.mkdir(parents=True, exist_ok=True)
            arr = img.permute(1, 2, 0).numpy()
            if grayscale_one and split == "train" and i == 0:
                Image.fromarray(arr[:, :, 0], mode="L").save(d / f"{i}.png")  # grayscale: becomes RGB
            elif grayscale_one and split == "train" and i == 1:
                Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)]), mode="RGBA").save(
                    d / f"{i}.png")
            else:
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def read_folder(folder: Path):
    """The images of one split read independently of the project (PIL -> RGB -> tensor), labels by
    sorted class folder."""
    classes = sorted(p.name for p in folder.iterdir())
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            xs.append(torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1))
            ys.append(c)
    return torch.stack(xs), torch.tensor(ys)


def plain_accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = model((x.float() / 255 - MEAN) / STD).argmax(1)
    return 100.0 * int((pred == y).sum()) / len(y)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ds = load_dataset("digits")
    tr, va, te = ds.train, ds.val, ds.test
    root = tmp_path_factory.mktemp("own")
    full = write_folder(root / "full", {"train": (tr.images[:700], tr.labels[:700]),
                                        "val": (va.images, va.labels), "test": (te.images, te.labels)})
    no_val = write_folder(root / "noval", {"train": (tr.images[:700], tr.labels[:700]), "test": (te.images, te.labels)})
    no_test = write_folder(root / "notest", {"train": (tr.images[:700], tr.labels[:700]),
                                             "val": (va.images, va.labels)})
    return {"full": full, "noval": no_val, "notest": no_test, "root": root}


@pytest.fixture(scope="module")
def checkpoints(data):
    """resnet18 trained by a plain loop on the folder's train images; saved two ways."""
    torch.manual_seed(0)
    x, y = read_folder(data["full"] / "train")
    model = tvm.resnet18(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(4):
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model((x[idx].float() / 255 - MEAN) / STD), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    bare = data["root"] / "bare.pt"
    torch.save(model.state_dict(), bare)
    wrapped = data["root"] / "ddp.pth"
    torch.save({"epoch": 4, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    return {"bare": bare, "ddp": wrapped, "model": model.eval()}


def run(*args, out: Path, timeout=900):
    return subprocess.run([sys.executable, *args, "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_compress_a_user_checkpoint_on_a_user_folder(data, checkpoints, tmp_path):
    out = tmp_path / "out"
    r = run("-m", "m2mdc.compress", "--dataset", "folder", "--data-dir", str(data["full"]), "--teacher",
            str(checkpoints["ddp"]), "--prune-ratio", "0.5", "--planes-keep", "0.75", "--mid-keep", "0.75",
            "--kd-epochs", "1", "--steps-per-epoch", "2", "--no-deploy", "--name", "mine", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((out / "compress" / "mine" / "record.json").read_text())
    teacher = json.loads((Path(record["teacher"]["path"]) / "record.json").read_text())
    val_x, val_y = read_folder(data["full"] / "val")
    test_x, test_y = read_folder(data["full"] / "test")
    # the recorded teacher accuracy is an independent evaluation of the checkpoint
    assert teacher["val_top1"] == pytest.approx(plain_accuracy(checkpoints["model"], val_x, val_y), abs=1e-9)
    assert teacher["test_top1"] == pytest.approx(plain_accuracy(checkpoints["model"], test_x, test_y), abs=1e-9)
    assert teacher["val_seen_by_teacher"] is False and teacher["source"] == "file"
    assert f"[teacher] val top-1 {teacher['val_top1']:.2f}%" in r.stdout
    assert record["keep_cfg"]["blocks"] and record["test_top1"] is not None
    # the same weights as a bare state_dict are the same teacher (same content hash): its cache is reused
    r2 = run("-m", "m2mdc.teacher", "--dataset", "folder", "--data-dir", str(data["full"]), "--teacher",
             str(checkpoints["bare"]), out=out)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert f"val top-1 {teacher['val_top1']:.2f}%" in r2.stdout
    assert len(list((out / "datasets").glob("folder-*.pt"))) == 1  # decoded once, then loaded from the cache


def test_without_val_or_test_split(data, checkpoints, tmp_path):
    out = tmp_path / "out"
    r = run("-m", "m2mdc.teacher", "--dataset", "folder", "--data-dir", str(data["noval"]), "--teacher",
            str(checkpoints["bare"]), out=out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(held out of train)" in r.stderr
    rec = json.loads(next((out / "teachers").glob("*/record.json")).read_text())
    assert rec["val_seen_by_teacher"] is True
    r = run("-m", "m2mdc.compress", "--dataset", "folder", "--data-dir", str(data["notest"]), "--teacher",
            str(checkpoints["bare"]), "--prune-ratio", "0.5", "--planes-keep", "1", "--mid-keep", "1", "--kd-epochs",
            "1", "--steps-per-epoch", "2", "--no-deploy", "--name", "notest", out=out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test numbers unavailable" in r.stderr and "test top-1 n/a" in r.stdout
    assert json.loads((out / "compress" / "notest" / "record.json").read_text())["test_top1"] is None


def _bad_checkpoints(root: Path, checkpoints) -> dict:
    seven = tvm.resnet18(num_classes=7).state_dict()
    torch.save(seven, root / "seven.pt")
    torch.save(tvm.resnet34(num_classes=10).state_dict(), root / "r34.pt")
    (root / "corrupt.pt").write_bytes(b"\x80\x04 not a checkpoint")
    return {"classes": root / "seven.pt", "arch": root / "r34.pt", "corrupt": root / "corrupt.pt"}


@pytest.mark.parametrize("case, words", [
    ("classes", "has a 7-class head but the dataset has 10 classes"),
    ("arch", "does not match resnet18"),
    ("corrupt", "is corrupt or not a weights-only PyTorch checkpoint"),
    ("no_train", "has no train/ folder"),
    ("classes_differ", "differ from train/'s"),
    ("memory", "over the"),
    ("corrupt_image", "cannot decode image"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(data, checkpoints, tmp_path, case, words):
    bad = _bad_checkpoints(tmp_path, checkpoints)
    folder, teacher, extra = data["full"], checkpoints["bare"], []
    if case in bad:
        teacher = bad[case]
    elif case == "no_train":
        folder = tmp_path / "empty"
        (folder / "val" / "a").mkdir(parents=True)
    elif case == "classes_differ":
        folder = tmp_path / "differ"
        (folder / "test" / "digit0").mkdir(parents=True)
        (folder / "train").symlink_to(data["full"] / "train", target_is_directory=True)
        Image.new("RGB", (32, 32)).save(folder / "test" / "digit0" / "0.png")
        (folder / "test" / "cat").mkdir()
        Image.new("RGB", (32, 32)).save(folder / "test" / "cat" / "0.png")
    elif case == "memory":
        extra = ["--max-memory-gb", "0.0001"]
    elif case == "corrupt_image":
        folder = tmp_path / "corrupt-img"
        write_folder(folder, {"train": (torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10)}, False)
        (folder / "train" / "digit3" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    r = run("-m", "m2mdc.compress", "--dataset", "folder", "--data-dir", str(folder), "--teacher", str(teacher),
            *extra, out=out)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines()  # the decoding progress bar aside
             if ln.strip() and not ln.lstrip("\r").startswith("decoding")]
    assert len(lines) == 1 and words in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    if case == "corrupt_image":
        assert "broken.png" in lines[0]
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not written, written


def test_readme_own_model_commands_run_shrunk(data, checkpoints, readme_out):
    """The README's own-model commands (teacher check, compress, search, review, export), shrunk to this
    folder and checkpoint (tests/readme.py). The search's recorded teacher accuracy is an independent
    evaluation of the user's checkpoint, and its trial trained on the CPU."""
    import mlflow

    from tests.readme import OWN_MODEL, chains_run_by, run_chain

    chain = next(c for c in chains_run_by(__file__) if c.name == OWN_MODEL)
    run_chain(chain, readme_out, {"folder": str(data["full"]), "teacher": str(checkpoints["bare"]), "run_id": None})
    client = mlflow.MlflowClient(f"sqlite:///{readme_out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    parent = next(x for x in runs if x.data.tags.get("role") == "search")
    val_x, val_y = read_folder(data["full"] / "val")
    assert parent.data.metrics["teacher_val_top1"] == pytest.approx(plain_accuracy(checkpoints["model"], val_x, val_y))
    trials = [x for x in runs if x.data.tags.get("role") == "trial"]
    assert len(trials) == 1 and trials[0].data.tags["status"] == "completed" and trials[0].data.tags["device"] == "cpu"
