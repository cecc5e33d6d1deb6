"""Output locations and all-or-nothing writes (no partial checkpoint is ever left behind)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserError

OUT_ENV = "M2MDC_OUT_DIR"


def out_root(out_dir=None) -> Path:
    """--out-dir, else $M2MDC_OUT_DIR, else ./outputs."""
    return Path(out_dir or os.environ.get(OUT_ENV) or "outputs")


def ensure_writable(path: Path, fix: str = "pass a writable --out-dir") -> Path:
    """Create ``path`` if needed and prove it is writable, before any long work starts (``fix``: what the
    one-line refusal tells the user to do)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise UserError(f"output directory {path} is not writable ({e.strerror}); {fix}") from None
    return path


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; it becomes ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def stable_hash(obj, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_file(path: Path):
    """Yield a temporary sibling path; it replaces ``path`` only if the block succeeds, so a
    concurrent reader (parallel trials) or a crash never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_tensors(obj, path: Path) -> None:
    """``torch.save``, atomically."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def load_state_dict(path: Path, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True; a corrupt or foreign file becomes a UserError."""
    try:
        with warnings.catch_warnings():  # torch comments on odd pickle protocols before failing on them
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except Exception as e:
        raise UserError(f"{what} {path} is corrupt or not a state_dict ({type(e).__name__}); "
                        f"delete it or point to a valid file") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{what} {path} does not hold a state_dict of tensors")
    return sd
