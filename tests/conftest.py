import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# One torchao pattern-graph cache (m2mdc.pattern_cache) for the whole run: made by the first process
# that loads this file (xdist's controller, before it starts the workers), inherited by the workers, their
# subprocesses and Ray trial workers; it starts empty, as on a new machine, and its maker removes it at the
# end. Set before m2mdc is imported (the cache reads it when m2mdc.quant is first imported).
_RUN_CACHE = None
if "M2MDC_CACHE_DIR" not in os.environ:
    _RUN_CACHE = os.environ["M2MDC_CACHE_DIR"] = tempfile.mkdtemp(prefix="m2mdc-test-cache-")

from m2mdc.data import data_root, load_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def cifar100_available() -> bool:
    return (data_root() / "cifar-100-python" / "train").exists()


requires_cifar = pytest.mark.skipif(not cifar100_available(), reason="CIFAR-100 not under the data root "
                                    "(set M2MDC_DATA_DIR or unpack it into ./data)")


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def smoke_teacher(tmp_path_factory, worker_id) -> Path:
    """``teachers/`` holding the smoke profile's digits ResNet-18 teacher (5 epochs), trained once per run
    by the first worker that asks, through the user's command (so its cache key is the one a search
    computes); the others wait for it (xdist's documented pattern: a lock in the run's shared folder)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # xdist: the folder of this run's workers
    done = root / "smoke-teacher"
    with FileLock(str(root / "smoke-teacher.lock")):
        if not done.exists():
            tmp = root / "smoke-teacher.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            r = subprocess.run([sys.executable, "-m", "m2mdc.teacher", "--arch", "resnet18", "--dataset", "digits",
                                "--epochs", "5", "--out-dir", str(tmp)], cwd=REPO, capture_output=True, text=True,
                               timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
            os.replace(tmp, done)
    return done / "teachers"


@pytest.fixture(scope="session")
def search_out(tmp_path_factory, smoke_teacher):
    """Makes a module's output root with the smoke teacher in it: the module's searches find it cached
    (~20 s of training each module would otherwise repeat)."""
    def make() -> Path:
        out = tmp_path_factory.mktemp("search")
        shutil.copytree(smoke_teacher, out / "teachers")
        return out
    return make


@pytest.fixture(scope="module")
def readme_out(search_out) -> Path:
    """The output root a README test file's command chains share (tests/readme.py)."""
    return search_out()


@pytest.fixture()
def out_dir(tmp_path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture(autouse=True)
def _isolate_outputs(tmp_path, monkeypatch):
    """No test writes into the repo's ./outputs."""
    monkeypatch.setenv("M2MDC_OUT_DIR", str(tmp_path / "default-outputs"))
    monkeypatch.setenv("M2MDC_RESULTS_DIR", str(tmp_path / "results"))  # the committed results/ stays untouched


# The longest files first (measured: `make test` prints --durations): with xdist's workers taking one
# file at a time, a long file started last would leave cores idle at the end. This order only holds
# with --no-loadscope-reorder (the Makefile passes it): xdist otherwise sorts files by their test count.
# The README's commands are spread over several files for this (tests/readme.py).
LONGEST_FIRST = ("test_shared_store.py", "test_crash_kills.py", "test_promotion.py", "test_search_members.py",
                 "test_search_resume.py", "test_frontier.py", "test_readme_latency.py", "test_api.py",
                 "test_pqd_ablation.py", "test_own_model.py", "test_readme_compress.py", "test_ray_cluster.py",
                 "test_mlflow_models.py",
                 "test_readme_benchmarks.py", "test_quant.py", "test_pipeline.py", "test_readme_searches.py",
                 "test_pqd.py", "test_paper_table.py", "test_proxy_depth.py", "test_models.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def pytest_sessionfinish(session):
    if _RUN_CACHE is not None:  # its maker: the controller, after every worker has finished
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)
