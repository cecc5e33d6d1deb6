"""Every `python ...` command in the README's bash blocks runs: shrunk to the embedded digits data (or
to a small image folder and a checkpoint trained here, for the own-model commands), deployment
measurements on (once per numeric format for compress), and each must exit 0 without a traceback.

The commands are cut into independent chains (a search with the review, export and latency check that
read it; the own-model commands; every other command alone), and each chain's tool names the test file
that runs it (``RUN_BY``), so xdist's workers run them side by side instead of one ~27-min test deciding
the suite's wall time. tests/test_readme_examples.py checks that every chain is run by exactly one file:
a README command this module cannot place fails it, so a new example cannot land untested."""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# flag -> its shrunk value (None: drop the flag and its value); "{...}" names a fixture value
SHRINK = {"--dataset": "digits", "--data-dir": None, "--resolution": None, "--arch": "resnet18", "--archs": "resnet18",
          "--epochs": "2", "--teacher-epochs": "2", "--budget-gmacs": "0.02", "--pqd-epochs": "2", "--seeds": "0",
          "--k": "1", "--samples": "300", "--n": "1", "--kd-epochs": "1", "--steps-per-epoch": "2",
          "--profile": "smoke", "--num-samples": "1", "--budget-ms": "1000", "--run-id": "{run_id}",
          "--teacher": "{teacher}", "--samplers": "tpe", "--out-dir": "{out}", "--latency-batch": "8", "--kills": "1",
          "--writers": "2", "--runs": "2", "--repeats": "1"}
# what a tool needs added to stay small (only when the README does not set the flag itself)
EXTRA = {"m2mdc.compress": ["--dataset", "digits", "--kd-epochs", "1", "--steps-per-epoch", "2", "--teacher-epochs", "2"],
         "analysis/finalize.py": ["--dataset", "digits", "--epochs", "5"],  # the smoke search's teacher
         "m2mdc.teacher": ["--epochs", "2"], "m2mdc.allocate": ["--dataset", "digits", "--epochs", "2"],
         "search/frontier.py": ["--dataset", "digits", "--profile", "smoke", "--num-samples", "1"],
         "benchmarks/data_pipeline.py": ["--batches", "3", "--repeats", "1"],
         "benchmarks/kd_epoch.py": ["--batches", "3", "--repeats", "1"], "benchmarks/mi_scoring.py": ["--repeats", "1"],
         "benchmarks/latency.py": ["--rounds", "1", "--repeats", "3", "--int8", "qat", "--batch-sizes", "1"],
         "benchmarks/depth_latency.py": ["--rounds", "1", "--repeats", "3", "--warmup", "1", "--batch-sizes", "1"],
         "benchmarks/latency_budget.py": ["--space", "tests/data/space-lean.yaml", "--threads", "1"],
         "benchmarks/crash_kills.py": ["--kills-per-search", "1"],
         "benchmarks/shared_store.py": ["--writers", "2", "--runs", "2", "--repeats", "1"],
         "analysis/readme_results.py": ["--root", "{root}"]}  # a copy: the test never edits README or docs
# a --budget-ms search runs under a generous budget (one timed build, not six: ~1 min less);
# fitting configurations onto a tight budget is what the latency_budget benchmark command runs.
# Latencies are timed at batch 8, not the README's 64 (the same code path; measured: the latency_budget
# benchmark's fit still projects a trial onto its budget, and the command takes ~40 s less)
# commands whose whole path has its own end-to-end test on digits (the test named must exist): they
# are only parsed, by the tool's own parser, so a README flag that does not exist still fails. A key
# "TOOL --FLAG" covers the tool's commands with that flag; the commands that read a covered search
# (its review, its latency check) are covered with it (that test runs them too)
COVERED = {"search/frontier.py --budget-ms": "tests/test_frontier.py::test_latency_objective_front_and_hypervolume_"
                                             "over_three_objectives",
           "analysis/baselines.py": "tests/test_search_members.py::test_baselines_train_every_row_with_the_same_settings",
           "analysis/proxy_rank.py": "tests/test_search_resume.py::test_proxy_rank_retrains_spread_trials_at_both_budgets",
           "analysis/pqd_ablation.py": "tests/test_pqd_ablation.py::test_orders_each_trained_as_its_order_for_"
                                       "equal_epochs",
           "analysis/finalize.py": "tests/test_search_members.py::test_finalize_logs_finalized_children_under_the_parent",
           "analysis/paper_table.py": "tests/test_paper_table.py::test_rows_are_mean_and_std_of_the_seed_runs"}
OWN_MODEL = "own model"  # the chain of the commands on the user's folder and checkpoint
FOLDER_FLAGS = ("--dataset", "folder")  # own-model commands keep their folder, shrunk to the test's
# the test file that runs a chain, by the chain's first tool (or OWN_MODEL). Files are xdist's units of
# work (`make test`: --dist loadfile): each is a few minutes, so three workers stay busy to the end
RUN_BY = {OWN_MODEL: "tests/test_own_model.py",  # beside the folder and checkpoint fixtures it needs
          "search/frontier.py": "tests/test_readme_searches.py", "m2mdc.allocate": "tests/test_readme_searches.py",
          "analysis/readme_results.py": "tests/test_readme_searches.py",
          "m2mdc.teacher": "tests/test_readme_compress.py", "m2mdc.compress": "tests/test_readme_compress.py",
          "benchmarks/latency_budget.py": "tests/test_readme_latency.py",
          "benchmarks/latency.py": "tests/test_readme_latency.py",
          "benchmarks/qat_convert.py": "tests/test_readme_latency.py",
          "benchmarks/data_pipeline.py": "tests/test_readme_benchmarks.py",
          "benchmarks/mi_scoring.py": "tests/test_readme_benchmarks.py",
          "benchmarks/kd_epoch.py": "tests/test_readme_benchmarks.py",
          "benchmarks/search_overhead.py": "tests/test_readme_benchmarks.py",
          "benchmarks/depth_latency.py": "tests/test_readme_benchmarks.py",
          "benchmarks/crash_kills.py": "tests/test_readme_benchmarks.py",
          "benchmarks/shared_store.py": "tests/test_readme_benchmarks.py",
          "analysis/compare_samplers.py": "tests/test_readme_benchmarks.py"}
DEFAULT_SEARCH = "frontier-resnet18-digits-b0.02"  # a shrunk search's name when the README gives none
READS_A_SEARCH = ("analysis/review.py", "benchmarks/latency_budget.py")  # by --experiment / --search


def documented_pages() -> list[Path]:
    """The pages whose commands run: the README, then docs/ in path order (analysis/readme_results.py
    pastes into the same pages)."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def readme_commands(text: str | None = None) -> list[str]:
    """The `python ...` lines of the bash blocks of the README and docs/, continuation lines joined,
    comments dropped, then the benchmark commands quoted inline in their list items."""
    text = "\n".join(p.read_text() for p in documented_pages()) if text is None else text
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


def covering_test(argv: list[str]) -> str | None:
    """The end-to-end test that covers this command (COVERED), if any."""
    tool = tool_of(argv)
    return COVERED.get(tool) or next((COVERED[f"{tool} {a}"] for a in argv if f"{tool} {a}" in COVERED), None)


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def shrunk_name(name: str) -> str:
    """A search's name once shrunk (--name, --experiment, --search): the digits data renames cifar100's."""
    return name.replace("cifar100", "digits")


def search_name(cmd: str) -> str:
    """The experiment a README search command makes once shrunk."""
    name = flag(shlex.split(cmd), "--name")
    return shrunk_name(name) if name else DEFAULT_SEARCH


@dataclass
class Chain:
    """README commands that must run in order in one output root: the first, then what reads its output."""
    name: str
    commands: list[str] = field(default_factory=list)
    deploy: set[int] = field(default_factory=set)  # indices of the compress commands that time their model
    search: str | None = None  # the experiment of the chain's search (what its review and export read)

    @property
    def id(self) -> str:
        """The test id: the chain's first command without `python` (pytest numbers any repeats)."""
        argv = shlex.split(self.commands[0])
        return self.name if self.name == OWN_MODEL else " ".join(argv[3 if argv[1] == "-m" else 1:])[:60]

    @property
    def file(self) -> str | None:
        return RUN_BY.get(self.name if self.name == OWN_MODEL else tool_of(shlex.split(self.commands[0])))


def shrunk_key(argv: list[str]) -> tuple:
    """What a command runs once shrunk (SHRINK's values, EXTRA's additions), fixtures left as named: two
    commands with one key run the same thing, e.g. a benchmark quoted at two sizes in docs/."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in SHRINK and i + 1 < len(argv):
            if SHRINK[a] is not None:
                out += [a, SHRINK[a]]
            i += 2
            continue
        out.append(a)
        i += 1
    extra = EXTRA.get(tool_of(argv), [])
    for j in range(0, len(extra), 2):
        if extra[j] not in out:
            out += extra[j:j + 2]
    return tuple(sorted(out))


def plan(commands: list[str]) -> tuple[list[Chain], list[tuple[str, str]]]:
    """The README's commands cut into chains, and the covered commands (only parsed) with their tests. A
    command that reads a search (review --experiment, latency_budget --search, export of the last search's member)
    joins that search's chain; a search or command already run is not run again (two README lines can
    shrink to one: the default and the CI-sized search)."""
    chains: list[Chain] = []
    covered: list[tuple[str, str]] = []  # (command, the test covering it)
    by_search: dict[str, Chain | str] = {}  # a search's chain, or the test covering it
    last_search, seen, deploying = None, set(), set()
    for cmd in commands:
        argv = shlex.split(cmd)
        tool = tool_of(argv)
        reads = flag(argv, "--experiment") or flag(argv, "--search")
        reads = reads and shrunk_name(reads)
        if tool == "search/frontier.py":
            last_search = search_name(cmd)
            if last_search in by_search:
                continue
        test = covering_test(argv)
        if tool in READS_A_SEARCH and isinstance(by_search.get(reads), str):
            test = by_search[reads]  # it reads a covered search: that search's test runs it
        if test:
            covered.append((cmd, test))
            if tool == "search/frontier.py":
                by_search[last_search] = test
            continue
        key = (shrunk_key(argv), last_search if "--run-id" in argv else None)  # an export reads the last search
        if key in seen:
            continue
        seen.add(key)
        if " ".join(FOLDER_FLAGS) in cmd:
            chain = next((c for c in chains if c.name == OWN_MODEL), None)
            if chain is None:
                chain = Chain(OWN_MODEL)
                chains.append(chain)
        elif tool in READS_A_SEARCH and reads:
            chain = by_search[reads]
        elif "--run-id" in argv:
            chain = by_search[last_search]
        else:
            chain = Chain(cmd)
            chains.append(chain)
        if tool == "search/frontier.py":
            by_search[last_search], chain.search = chain, last_search
        if tool == "m2mdc.compress":
            fmt = "int8" if "qat" in cmd or "--preset pqd" in cmd else "fp32"
            if fmt not in deploying:  # deployment numbers once per numeric format (compiles repeating one path)
                chain.deploy.add(len(chain.commands))
            deploying.add(fmt)
        chain.commands.append(cmd)
    return chains, covered


def chains_run_by(test_file: str) -> list[Chain]:
    """The README's chains this test file runs (its parametrization)."""
    name = Path(test_file).name
    return [c for c in plan(readme_commands())[0] if c.file and Path(c.file).name == name]


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
                new = shrunk_name(val)
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# one worker's "Exception ignored in" block, every line under its "(name pid=N)" prefix, up to its first
# "SystemExit: 1"
_WORKER_EXIT_BLOCK = re.compile(r"^(\([^)\n]*pid=\d+[^)\n]*\)) Exception ignored in.*\n"
                                r"(?:\1(?: .*)?\n)*?\1 SystemExit: 1$", re.M)


def without_ray_worker_teardown(stderr: str) -> str:
    """``stderr`` less the one traceback a *finished* search may print that is not ours: Ray's raylet
    SIGTERMs an actor's worker as it exits, and when the signal lands while the worker's Python runs a
    garbage-collection callback, Ray's ``sigterm_handler`` raises ``SystemExit`` there and Python prints
    ``Exception ignored in: ... SystemExit: 1`` (seen once in ~35 CI runs, after the trial had finished).
    Only such a block is removed: it must come from one worker (its ``(name pid=N)`` prefix), start with
    ``Exception ignored in``, pass through Ray's ``sigterm_handler`` and end with ``SystemExit: 1``; any
    other traceback stays."""
    return _WORKER_EXIT_BLOCK.sub(lambda m: "" if "sigterm_handler" in m.group(0) else m.group(0),
                                  _ANSI.sub("", stderr))


def run_chain(chain: Chain, out: Path, fixtures: dict) -> None:
    """Each of the chain's commands shrunk and run in the output root ``out``: exit 0, no traceback. Prints
    where the time went (`pytest -rP` shows it: what to look at first when CI runs long)."""
    fixtures = {**fixtures, "out": str(out)}
    env = {**os.environ, "M2MDC_OUT_DIR": str(out)}  # the review tools read the default output root
    took = []
    for i, cmd in enumerate(chain.commands):
        if "--run-id" in cmd:  # export: a Pareto member of the chain's search (it ran before)
            fixtures["run_id"] = pareto_run_id(out, chain.search)
        argv = shrink(cmd, fixtures)
        if tool_of(argv) == "m2mdc.compress" and i not in chain.deploy:
            argv.append("--no-deploy")
        if "--out-dir" not in argv and accepts_out_dir(argv):
            argv += ["--out-dir", str(out)]
        start = time.perf_counter()
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
        ok = r.returncode == 0 and "Traceback" not in without_ray_worker_teardown(r.stderr)
        assert ok, (cmd, argv, r.stdout[-2000:], r.stderr[-3000:])
        took.append((time.perf_counter() - start, cmd))
    print("\n".join(f"{t:6.0f} s  {c}" for t, c in took))
    if chain.deploy:  # a compress command with deployment numbers on recorded them (the crash it once had)
        records = [json.loads(p.read_text()) for p in (out / "compress").glob("*/record.json")]
        assert any(r.get("deploy", {}).get("latency") for r in records), [list(r) for r in records]


def chain_test(test_file: str):
    """The test a README test file runs its chains with: one item per chain, in README order, in one
    output root per file (``readme_out``, tests/conftest.py: the smoke teacher cached in it)."""
    chains = chains_run_by(test_file)

    @pytest.mark.parametrize("chain", chains, ids=[c.id for c in chains])
    def test_readme_chain_runs_shrunk(chain, readme_out, tmp_path):
        root = tmp_path / "checkout"  # a copy: the test never edits the README or docs/
        for page in documented_pages():
            copy = root / page.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(page.read_text())
        run_chain(chain, readme_out, {"root": str(root), "run_id": None})
    return test_readme_chain_runs_shrunk
