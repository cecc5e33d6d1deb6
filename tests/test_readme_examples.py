"""Every `python ...` command in the README is run (shrunk) by exactly one test file, or, when its whole
path has its own end-to-end test, parsed by its tool's own parser (tests/readme.py). A README command
no test file runs fails here, so a new example cannot land untested; the chaining rules are checked on a
README written here."""
import shlex
import sys
from pathlib import Path

import pytest

from tests.readme import (OWN_MODEL, REPO, RUN_BY, parses, plan, readme_commands, shrunk_key, tool_of,
                          without_ray_worker_teardown)


def test_every_readme_command_is_run_by_one_test_file_or_parsed():
    commands = readme_commands()
    chains, covered = plan(commands)
    for chain in chains:
        assert chain.file, (f"README command {chain.commands[0]!r}: no test file runs it; add its tool to RUN_BY "
                            "in tests/readme.py")
    for file in {c.file for c in chains}:
        text = (REPO / file).read_text()
        assert "chains_run_by(__file__)" in text or "chain_test(__file__)" in text, \
            f"{file} is named in RUN_BY but runs no README chain"
    placed = [cmd for c in chains for cmd in c.commands] + [cmd for cmd, _ in covered]
    assert len(placed) == len(set(placed))  # each at most once
    for cmd in set(commands) - set(placed):  # left out only as a repeat (once shrunk) of a command that runs
        argv = shlex.split(cmd)
        assert tool_of(argv) == "search/frontier.py" or shrunk_key(argv) in {
            shrunk_key(shlex.split(c)) for c in placed}, cmd
    tools = {tool_of(shlex.split(cmd)) for c in chains for cmd in c.commands}
    assert {"m2mdc.teacher", "m2mdc.compress", "m2mdc.allocate", "search/frontier.py", "analysis/review.py",
            "analysis/export.py", "analysis/compare_samplers.py", "benchmarks/latency.py",
            "benchmarks/search_overhead.py"} <= tools, tools
    own = next(c for c in chains if c.name == OWN_MODEL)
    assert {tool_of(shlex.split(cmd)) for cmd in own.commands} >= {"m2mdc.compress", "search/frontier.py",
                                                                    "analysis/review.py"}


COVERED_COMMANDS = plan(readme_commands())[1]


@pytest.mark.parametrize("cmd,test", COVERED_COMMANDS, ids=[shlex.split(c)[1] for c, _ in COVERED_COMMANDS])
def test_covered_readme_command_parses_and_its_test_exists(cmd, test):
    file, name = test.split("::")
    assert f"def {name}(" in (REPO / file).read_text(), test
    assert parses([sys.executable, *shlex.split(cmd)[1:]]), cmd  # the README's own flags, unshrunk


def test_chains_follow_what_each_command_reads():
    text = Path(__file__).with_name("data").joinpath("readme-chains.md").read_text()
    chains, covered = plan(readme_commands(text))
    got = [[shlex.split(cmd)[1 if cmd.split()[1] != "-m" else 2] for cmd in c.commands] for c in chains]
    assert got == [["search/frontier.py", "analysis/review.py", "analysis/export.py"],
                   ["m2mdc.teacher", "m2mdc.compress", "search/frontier.py", "analysis/review.py",
                    "analysis/export.py"],
                   ["m2mdc.compress"], ["m2mdc.compress"], ["m2mdc.compress"],
                   ["benchmarks/kd_epoch.py"]]
    assert chains[1].name == OWN_MODEL and chains[1].file == RUN_BY[OWN_MODEL]
    assert [c.deploy for c in chains] == [set(), {1}, set(), {0}, set(), set()]  # once per format
    latency = "tests/test_frontier.py::test_latency_objective_front_and_hypervolume_over_three_objectives"
    assert covered == [("python analysis/finalize.py --experiment frontier-resnet18-cifar100-b0.02 --k 2",
                        "tests/test_search_members.py::test_finalize_logs_finalized_children_under_the_parent"),
                       ("python search/frontier.py --budget-ms 9 --name lat-cifar100", latency),
                       ("python benchmarks/latency_budget.py --search lat-cifar100", latency)]


# What CI printed once after a finished smoke search (Ray's worker-teardown race; stop 33's CI run)
_TEARDOWN = """\x1b[36m(compression_trial pid=8374)\x1b[0m [step 2 kd on cpu] epoch 2  val_top1 46.33
\x1b[36m(compression_trial pid=8374)\x1b[0m Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f3>
\x1b[36m(compression_trial pid=8374)\x1b[0m Traceback (most recent call last):
\x1b[36m(compression_trial pid=8374)\x1b[0m   File "/x/_weakrefset.py", line 39, in _remove
\x1b[36m(compression_trial pid=8374)\x1b[0m     def _remove(item, selfref=ref(self)):
\x1b[36m(compression_trial pid=8374)\x1b[0m 
\x1b[36m(compression_trial pid=8374)\x1b[0m   File "/x/ray/_private/worker.py", line 1063, in sigterm_handler
\x1b[36m(compression_trial pid=8374)\x1b[0m     raise_sys_exit_with_custom_error_message(
\x1b[36m(compression_trial pid=8374)\x1b[0m   File "_raylet.pyx", line 712, in raise_sys_exit_with_custom_error_message
\x1b[36m(compression_trial pid=8374)\x1b[0m SystemExit: 1
"""


def test_only_rays_worker_teardown_traceback_is_forgiven():
    """The README chains' no-traceback check forgives Ray's SIGTERM-at-exit block and nothing else."""
    assert "Traceback" not in without_ray_worker_teardown(_TEARDOWN)
    assert "val_top1 46.33" in without_ray_worker_teardown(_TEARDOWN)
    ours = '(compression_trial pid=9) Traceback (most recent call last):\n(compression_trial pid=9) ValueError: x\n'
    assert "Traceback" in without_ray_worker_teardown(_TEARDOWN + ours)
    # an "Exception ignored" block that is not Ray's SIGTERM handler, or from the driver, stays
    assert "Traceback" in without_ray_worker_teardown(_TEARDOWN.replace("sigterm_handler", "close"))
    driver = "Exception ignored in: <x>\nTraceback (most recent call last):\n  File sigterm_handler\nSystemExit: 1\n"
    assert "Traceback" in without_ray_worker_teardown(driver)
