"""Every `python ...` command in the README's bash blocks runs: shrunk to the embedded digits data (or
to a small image folder and a checkpoint trained here, for the own-model commands), deployment
measurements on (once per numeric format for compress), and each must exit 0 without a traceback.
A README command this file cannot shrink fails the test, so a new example cannot land untested."""
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_own_model import checkpoints, data  # noqa: F401  (fixtures: an image folder, a trained model)

REPO = Path(__file__).resolve().parents[1]

# flag -> its shrunk value (None: drop the flag and its value); "{...}" names a fixture value
SHRINK = {"--dataset": "digits", "--data-dir": None, "--resolution": None, "--arch": "resnet18", "--archs": "resnet18",
          "--epochs": "2", "--teacher-epochs": "2", "--budget-gmacs": "0.02", "--pqd-epochs": "2", "--seeds": "0",
          "--k": "1", "--samples": "300", "--n": "1", "--kd-epochs": "1", "--steps-per-epoch": "2",
          "--profile": "smoke", "--num-samples": "1", "--budget-ms": "1000", "--run-id": "{run_id}",
          "--teacher": "{teacher}", "--samplers": "tpe", "--out-dir": "{out}", "--latency-batch": "8"}
# what a tool needs added to stay small (only when the README does not set the flag itself)
EXTRA = {"m2mdc.compress": ["--dataset", "digits", "--kd-epochs", "1", "--steps-per-epoch", "2", "--teacher-epochs", "2"],
         "analysis/finalize.py": ["--dataset", "digits", "--epochs", "5"],  # the smoke search's teacher
         "m2mdc.teacher": ["--epochs", "2"], "m2mdc.allocate": ["--dataset", "digits", "--epochs", "2"],
         "search/frontier.py": ["--dataset", "digits", "--profile", "smoke", "--num-samples", "1"],
         "benchmarks/data_pipeline.py": ["--batches", "3", "--repeats", "1"],
         "benchmarks/kd_epoch.py": ["--batches", "3", "--repeats", "1"], "benchmarks/mi_scoring.py": ["--repeats", "1"],
         "benchmarks/latency.py": ["--rounds", "1", "--repeats", "3", "--int8", "qat", "--batch-sizes", "1"],
         "benchmarks/latency_budget.py": ["--space", "tests/data/space-lean.yaml", "--threads", "1"],
         "analysis/readme_results.py": ["--readme", "{readme}"]}  # a copy: the test never edits the README
# a --budget-ms search runs under a generous budget (one timed build, not six: ~1 min less);
# fitting configurations onto a tight budget is what this file's latency_budget benchmark command runs.
# Latencies are timed at batch 8, not the README's 64 (the same code path; measured: the latency_budget
# benchmark's fit still projects a trial onto its budget, and the command takes ~40 s less)
# commands whose whole path has its own end-to-end test on digits (the test named must exist): here they
# are only parsed, by the tool's own parser, so a README flag that does not exist still fails
COVERED = {"analysis/baselines.py": "tests/test_search_members.py::test_baselines_train_every_row_with_the_same_settings",
           "analysis/proxy_rank.py": "tests/test_search_resume.py::test_proxy_rank_retrains_spread_trials_at_both_budgets",
           "analysis/pqd_ablation.py": "tests/test_pqd_ablation.py::test_orders_each_trained_as_its_order_for_"
                                       "equal_epochs",
           "analysis/finalize.py": "tests/test_search_members.py::test_finalize_logs_finalized_children_under_the_parent",
           "analysis/paper_table.py": "tests/test_paper_table.py::test_rows_are_mean_and_std_of_the_seed_runs"}
FOLDER_FLAGS = ("--dataset", "folder")  # own-model commands keep their folder, shrunk to the test's
# m2mdc.compress measures deployment (compiled latency, size) on the first command of each numeric format
# only (--no-deploy on the others: compiles that repeat one code path whatever the plan)


def readme_commands() -> list[str]:
    """The `python ...` lines of the README's bash blocks, continuation lines joined, comments dropped,
    then the benchmark commands quoted inline in its list items."""
    text = (REPO / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("python "):
                cmds.append(re.sub(r"\[(--[^\]]*)\]", r"\1", line))  # [--optional flags] as given
    # pasted result tables quote the command that measured them; the Benchmarks list runs each tool already
    listed = re.sub(r"<!-- result: ([\w-]+) -->.*?<!-- /result: \1 -->", "", text, flags=re.S)
    cmds += re.findall(r"`(python benchmarks/[^`]+)`", listed)
    return cmds


def tool_of(argv: list[str]) -> str:
    return argv[2] if argv[1] == "-m" else argv[1]


def shrink(cmd: str, fixtures: dict) -> list[str]:
    argv = shlex.split(cmd)
    tool = tool_of(argv)
    own_model = " ".join(FOLDER_FLAGS) in cmd
    head, rest = argv[: 3 if argv[1] == "-m" else 2], argv[3 if argv[1] == "-m" else 2:]
    out, i = [], 0
    while i < len(rest):
        tok = rest[i]
        val = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("--") else None
        if tok.startswith("--") and val is not None:
            if own_model and tok == "--dataset":
                new = "folder"
            elif own_model and tok == "--data-dir":
                new = fixtures["folder"]
            elif own_model and tok == "--resolution":
                new = "32"
            elif tok in ("--experiment", "--name", "--search"):
                new = val.replace("cifar100", "digits")
            else:
                new = SHRINK.get(tok, val)
            if new is not None:
                out += [tok, fixtures[new[1:-1]] if new.startswith("{") else new]
            i += 2
        else:
            out.append(tok)
            i += 1
    extra = EXTRA.get(tool, [])
    for j in range(0, len(extra), 2):
        if extra[j] not in out and not (own_model and extra[j] == "--dataset"):
            if extra[j] in ("--epochs", "--teacher-epochs") and "--teacher" in out:  # a given teacher never trains
                continue
            value = extra[j + 1]
            out += [extra[j], fixtures[value[1:-1]] if value.startswith("{") else value]
    if tool == "analysis/compare_samplers.py":
        out += ["--num-samples", "1"]  # after its `--`: each sampler's search
    return [sys.executable, *head[1:], *out]


@functools.cache
def _help(head: tuple[str, ...]) -> str:
    return subprocess.run([*head, "--help"], cwd=REPO, capture_output=True, text=True).stdout


def accepts_out_dir(argv: list[str]) -> bool:
    """Whether the tool takes --out-dir (its --help asked once per tool, not once per command)."""
    return "--out-dir" in _help(tuple(argv[:3 if argv[1] == "-m" else 2]))


@pytest.fixture(scope="module")
def fixtures(data, checkpoints):  # noqa: F811
    return {"folder": str(data["full"]), "teacher": str(checkpoints["bare"]), "run_id": None}


class _Parsed(BaseException):
    """Raised by the patched parser once a tool's arguments parsed: the tool stops there."""


def parses(argv: list[str]) -> bool:
    """Run the tool in this process until its argument parser has parsed ``argv`` (True), then stop
    it: nothing is trained or written. False if the tool returned without parsing anything; a flag
    its parser refuses exits 2 (SystemExit), which fails the test with argparse's line above it."""
    import argparse
    import runpy
    from unittest import mock

    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)  # argparse exits 2 on an unknown flag or a bad value
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
            mock.patch.object(sys, "argv", argv[1:]):
        try:
            runpy.run_path(str(REPO / argv[1]), run_name="__main__")  # the covered tools are scripts
        except _Parsed:
            return True
    return False


def pareto_run_id(out: Path, experiment: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.pareto = 'true'")
    assert runs, f"no Pareto member in {experiment}"
    return runs[0].info.run_id


def test_every_readme_command_runs_shrunk(fixtures, checkpoints, tmp_path, search_out):  # noqa: F811
    out = search_out()  # the smoke teacher cached: the shrunk searches find it
    fixtures["out"] = str(out)
    fixtures["readme"] = str(tmp_path / "README.md")
    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    env = {**os.environ, "M2MDC_OUT_DIR": str(out)}  # the review tools read the default output root
    seen, ran, last_experiment, took, deployed = set(), [], None, {}, set()
    for cmd in readme_commands():
        if "--run-id" in cmd:  # export: a Pareto member of the search run last
            fixtures["run_id"] = pareto_run_id(out, last_experiment)
        argv = shrink(cmd, fixtures)
        if tool_of(argv) in COVERED:
            file, name = COVERED[tool_of(argv)].split("::")
            assert f"def {name}(" in (REPO / file).read_text(), COVERED[tool_of(argv)]
            assert parses([sys.executable, *shlex.split(cmd)[1:]]), cmd  # the README's own flags, unshrunk
            continue
        if tool_of(argv) == "m2mdc.compress":
            fmt = "int8" if "qat" in cmd or "--preset pqd" in cmd else "fp32"
            if fmt in deployed:
                argv.append("--no-deploy")
            deployed.add(fmt)
        key = tuple(sorted(argv))
        if key in seen:  # two README lines that shrink to one command (e.g. the default and CI-sized search)
            continue
        seen.add(key)
        if "--out-dir" not in argv and accepts_out_dir(argv):
            argv += ["--out-dir", str(out)]
        if tool_of(argv) == "search/frontier.py":
            i = argv.index("--name") + 1 if "--name" in argv else None
            last_experiment = argv[i] if i else "frontier-resnet18-digits-b0.02"
            if (out / "search" / last_experiment).exists():  # the same search again: it is already there
                continue
        start = time.perf_counter()
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (cmd, argv, r.stdout[-2000:], r.stderr[-3000:])
        ran.append(cmd)
        took[cmd] = time.perf_counter() - start
    # where this test's time goes (`pytest -rP` prints it): what to look at first when CI runs long
    print("\n".join(f"{t:6.0f} s  {c}" for c, t in sorted(took.items(), key=lambda kv: -kv[1])))
    tools = {tool_of(shlex.split(c)) for c in ran}
    assert {"m2mdc.teacher", "m2mdc.compress", "m2mdc.allocate", "search/frontier.py", "analysis/review.py",
            "analysis/export.py", "analysis/compare_samplers.py", "benchmarks/latency.py",
            "benchmarks/search_overhead.py"} <= tools, tools
    # the own-model search ran on the user's folder with the user's checkpoint: its recorded teacher
    # accuracy is an independent evaluation of that checkpoint, and its trials trained on the CPU
    import mlflow

    from tests.test_own_model import plain_accuracy, read_folder

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    parent = next(x for x in runs if x.data.tags.get("role") == "search")
    val_x, val_y = read_folder(Path(fixtures["folder"]) / "val")
    assert parent.data.metrics["teacher_val_top1"] == pytest.approx(plain_accuracy(checkpoints["model"], val_x, val_y))
    trials = [x for x in runs if x.data.tags.get("role") == "trial"]
    assert len(trials) == 1 and trials[0].data.tags["status"] == "completed" and trials[0].data.tags["device"] == "cpu"
    # the README's first compress command ran with deployment numbers on (the crash it once had)
    records = [json.loads(p.read_text()) for p in (out / "compress").glob("*/record.json")]
    assert any(r.get("deploy", {}).get("latency") for r in records), [list(r) for r in records]
