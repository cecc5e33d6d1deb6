"""Compare samplers at the same number of trials: one frontier search per sampler, then one review.

    python analysis/compare_samplers.py --samplers tpe,nsga2,random -- --budget-gmacs 0.02 --dataset digits --profile smoke

Arguments after ``--`` go to every search/frontier.py run unchanged (same budget, space, profile,
teacher, seed); each search is named BASE-SAMPLER. Afterwards analysis/review.py overlays the
fronts and plots each search's hypervolume after every trial. Run again, the command resumes: a
search already under the output root is continued with --resume (a finished one is only re-reported,
an interrupted one finishes its trials; changed settings are refused by the search itself).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from m2mdc.errors import Parser, UserError, cli
from m2mdc.io import out_root

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = ("tpe", "nsga2", "random")


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = Parser(prog="python analysis/compare_samplers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--samplers", default="tpe,nsga2,random", help="comma-separated (default tpe,nsga2,random)")
    p.add_argument("--base-name", default="samplers", help="searches are named BASE-SAMPLER")
    a = p.parse_args(own)
    samplers = [s for s in a.samplers.split(",") if s]
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad or not samplers:
        raise UserError(f"--samplers {a.samplers!r}: choose from {', '.join(SAMPLERS)}")
    if any(x in extra for x in ("--sampler", "--name")):
        raise UserError("do not pass --sampler or --name after --: this command sets them per search")
    # search.driver imports Ray Tune, Optuna and the m2mdc models (~2.7 s, python -X importtime) that this CLI's
    # --help and bad-input checks do not pay
    from search.driver import SEARCH_RECORD, search_folder

    def given(flag: str) -> str | None:  # a flag's value among the searches' arguments
        return extra[extra.index(flag) + 1] if flag in extra[:-1] else None

    root = out_root(given("--out-dir"))
    names = []
    for s in samplers:
        name = f"{a.base_name}-{s}"
        started = (search_folder(root, name) / SEARCH_RECORD).exists()
        print(f"== {name}{' (resumed: it exists under ' + str(root) + ')' if started else ''}", flush=True)
        r = subprocess.run([sys.executable, str(REPO / "search" / "frontier.py"), *extra, "--sampler", s,
                            "--name", name, *(["--resume"] if started else [])], cwd=REPO)
        if r.returncode != 0:
            return r.returncode
        names.append(name)
    review = [sys.executable, str(REPO / "analysis" / "review.py"), "--experiment", names[0], "--compare", *names[1:]]
    for flag in ("--out-dir", "--mlflow-uri"):
        if given(flag) is not None:
            review += [flag, given(flag)]
    return subprocess.run(review, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
