import os
import shutil
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

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def cifar100_available() -> bool:
    return (data_root() / "cifar-100-python" / "train").exists()


requires_cifar = pytest.mark.skipif(not cifar100_available(), reason="CIFAR-100 not under the data root "
                                    "(set M2MDC_DATA_DIR or unpack it into ./data)")


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture()
def out_dir(tmp_path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture(autouse=True)
def _isolate_outputs(tmp_path, monkeypatch):
    """No test writes into the repo's ./outputs."""
    monkeypatch.setenv("M2MDC_OUT_DIR", str(tmp_path / "default-outputs"))
    monkeypatch.setenv("M2MDC_RESULTS_DIR", str(tmp_path / "results"))  # the committed results/ stays untouched


# The longest files first (measured: `make test` prints --durations): with two xdist workers taking one
# file at a time, a long file started last would leave one core idle at the end. This order only holds
# with --no-loadscope-reorder (the Makefile passes it): xdist otherwise sorts files by their test count.
LONGEST_FIRST = ("test_frontier.py", "test_readme_examples.py", "test_pqd_ablation.py", "test_ray_cluster.py",
                 "test_cli_bad_input.py", "test_own_model.py", "test_quant.py", "test_pqd.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def pytest_sessionfinish(session):
    if _RUN_CACHE is not None:  # its maker: the controller, after every worker has finished
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)
