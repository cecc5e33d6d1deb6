"""Paste the result tables the analysis commands wrote into README.md and docs/, verbatim, between markers.

    python analysis/readme_results.py [--out-dir outputs] [--root .]

README.md and every page under docs/ may hold `<!-- result: NAME -->` ... `<!-- /result: NAME -->`
pairs; each NAME maps to the markdown file a command wrote under the output root (SOURCES). Every such
file starts with the command line that produced it, so a page names the command beside each table
without anyone retyping a number. A marker whose file is missing keeps its current content and is
listed, so a table can be completed over several sessions. Plots are copied into docs/ and linked
relative to the page that shows them.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from m2mdc.errors import Parser, UserError, cli
from m2mdc.io import out_root, write_text

REPO = Path(__file__).resolve().parents[1]
# marker name -> (markdown file under the output root, plots beside it to show)
SOURCES = {
    "frontier-resnet18": ("review/frontier-resnet18-cifar100-b0.02-v3/pareto.md", ["frontier.png"]),
    "frontier-resnet18-v4": ("review/frontier-resnet18-cifar100-b0.02-v4/pareto.md", ["frontier.png"]),
    "frontier-resnet18-width": ("review/frontier-resnet18-cifar100-b0.02-width/pareto.md", ["frontier.png"]),
    "frontier-mobilenet_v2": ("review/frontier-mobilenet_v2-cifar100-b0.0186/pareto.md", ["frontier.png"]),
    "baselines-resnet18": ("baselines/resnet18-cifar100-b0.02/baselines.md", ["baselines.png", "baselines-latency.png",
                                                                        "baselines-throughput.png"]),
    "baselines-resnet18-teacher30": ("baselines/resnet18-cifar100-b0.02-teacher30/baselines.md",
                                     ["baselines.png", "baselines-latency.png"]),
    "baselines-resnet18-v4": ("baselines/resnet18-cifar100-b0.02-v4/baselines.md", []),
    "baselines-resnet18-shallow": ("baselines/resnet18-cifar100-b0.02-shallow/baselines.md", []),
    "baselines-resnet18-ceiling": ("baselines/resnet18-cifar100-depth-ceiling/baselines.md", []),
    "baselines-resnet18-half-budget": ("baselines/resnet18-cifar100-b0.0111/baselines.md", []),
    "samplers-resnet18": ("review/samplers-resnet18-cifar100-tpe-vs-samplers-resnet18-cifar100-nsga2-vs-"
                          "samplers-resnet18-cifar100-random/pareto.md", ["hypervolume.png", "compare.png"]),
    "finalize-samplers-tpe": ("finalize/samplers-resnet18-cifar100-tpe/finalize.md", []),
    "finalize-samplers-random": ("finalize/samplers-resnet18-cifar100-random/finalize.md", []),
    "finalize-v4-screen": ("finalize/frontier-resnet18-cifar100-b0.02-v4/finalize.md", []),
    "proxy-rank": ("proxy_rank/frontier-resnet18-cifar100-b0.02-width/proxy_rank.md", []),
    "paper-table": ("paper_table/paper_table-cifar100.md", []),
    "pqd-ablation": ("pqd_ablation/resnet18-cifar100/pqd_ablation.md", []),
    "depth-latency": ("benchmarks/depth_latency/resnet18-b0.02.md", []),
    "depth-latency-front": ("benchmarks/depth_latency/resnet18-b0.02-v4-front.md", []),
    "latency-budget": ("benchmarks/latency_budget/latency-bench-bs64-v2/latency_budget.md", []),
    "latency-recheck": ("benchmarks/latency_budget/recheck-frontier-resnet18-cifar100-9ms-bs64-v3/latency_budget.md",
                        []),
    "proxy-depth": ("proxy_depth/resnet18-cifar100-b0.02-n20-d0.md", []),
    "frontier-latency": ("review/frontier-resnet18-cifar100-9ms-bs64-v3/pareto.md", ["frontier-latency_ms.png"]),
}
MARK = re.compile(r"(<!-- result: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /result: (?P=name) -->)", re.S)


def pages(root: Path) -> list[Path]:
    """The markdown pages results may be pasted into: the README, then docs/ in path order."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def paste(readme: str, root: Path, docs: Path, page: Path | None = None) -> tuple[str, list[str], list[str]]:
    """(new text of the page, names pasted, names whose source is missing). ``page``: where the text lives
    (plots are linked relative to it); default: beside docs/, as the README is."""
    here = (page or docs.parent / "README.md").parent
    pasted, missing = [], []

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in SOURCES:
            raise UserError(f"README marker {name!r} has no source; known: {', '.join(SOURCES)}")
        md_rel, plots = SOURCES[name]
        md = root / md_rel
        if not md.exists():
            missing.append(f"{name} ({md})")
            return m.group(0)
        body = md.read_text().rstrip() + "\n"
        for png in plots:
            src = md.parent / png
            if src.exists():
                dst = docs / f"{name}-{png}"
                shutil.copyfile(src, dst)
                body += f"\n![{name} {png}]({Path(os.path.relpath(dst, here)).as_posix()})\n"
        pasted.append(name)
        return m.group(1) + body + m.group(4)

    return MARK.sub(one, readme), pasted, missing


@cli
def main(argv=None):
    p = Parser(prog="python analysis/readme_results.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="output root the commands wrote to (default: $M2MDC_OUT_DIR "
                   "or ./outputs)")
    p.add_argument("--root", default=str(REPO), help="the checkout whose README.md and docs/ are pasted into "
                   "(default: this one)")
    a = p.parse_args(argv)
    checkout = Path(a.root)
    if not (checkout / "README.md").exists():
        raise UserError(f"{checkout / 'README.md'} not found; pass --root DIR, a folder holding README.md and docs/")
    root = out_root(a.out_dir)
    docs = checkout / "docs"
    docs.mkdir(exist_ok=True)
    pasted, missing = [], []
    for page in pages(checkout):
        old = page.read_text()
        text, done, absent = paste(old, root, docs, page)
        pasted += done
        missing += absent
        if text != old:
            write_text(page, text)
    print(f"pasted: {', '.join(pasted) or 'nothing'}")
    if missing:
        print(f"not yet measured (kept as is): {'; '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
