"""Cost of INT8 conversion and of QAT train/eval switches with m2mdc's pattern-graph cache: a
convert on a new machine (every pattern graph exported: torchao's own cost) vs a new process's first
convert (graphs loaded from the disk cache) vs every later convert of a process (graphs in memory).

torchao strict-exports the same small conv-bn / batch-norm / dropout pattern graphs on every
``convert_pt2e`` and every ``move_exported_model_to_train/eval``; ``m2mdc.pattern_cache`` keeps them in
memory and on disk. Timed side by side on one QAT graph, the disk cache in a new temporary folder: the
first convert (exports every graph and saves it), a convert with the memory emptied (what a new
process pays: a search trial worker, a CLI run), a later convert (what every further QAT model of a
PQD ablation, a baselines table or a finalize run pays), and a train->eval switch pair (every
evaluation of a QAT student does one) through torchao's uncached builder and through the cache. The
converted graphs must be identical (target: later converts >= 5x faster); tests/test_quant.py
also checks the cached converts against torchao's uncached one.

    python benchmarks/qat_convert.py --arch resnet18
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2mdc import pattern_cache, quant  # noqa: E402
from m2mdc.errors import Parser, UserError, check_range, cli  # noqa: E402
from m2mdc.metrics import torch_threads  # noqa: E402
from m2mdc.models import ARCHS, get_adapter  # noqa: E402

def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def switch_pair(prepared) -> float:
    gm = copy.deepcopy(prepared)
    t0 = time.perf_counter()
    quant._set_mode(gm, train=True)
    quant._set_mode(gm, train=False)
    return time.perf_counter() - t0


def run(a) -> None:
    cached = pattern_cache.installed()
    if cached is None:
        raise UserError("m2mdc's pattern cache is not installed (torchao's layout changed?): nothing to compare")
    adapter = get_adapter(a.arch)
    torch.manual_seed(0)
    model = adapter.base_model(a.classes).eval()  # conversion cost does not depend on the weights' values
    prepared = quant.prepare_qat(model, torch.randn(4, 3, a.resolution, a.resolution), name=a.arch)
    with pattern_cache.uncached():
        plain_switch = switch_pair(prepared)
    user_directory = cached.directory
    with tempfile.TemporaryDirectory() as tmp:
        cached.directory = Path(tmp)  # an empty disk cache: the first convert exports and saves every graph
        try:
            cached.graphs.clear()
            first_s, first = timed(lambda: quant.convert(prepared, name=a.arch))
            cached.graphs.clear()  # as in a new process: the graphs are on disk only
            disk_s, from_disk = timed(lambda: quant.convert(prepared, name=a.arch))
            later_s, later = timed(lambda: quant.convert(prepared, name=a.arch))
            later_switch = switch_pair(prepared)
        finally:
            cached.directory = user_directory
    if not first.code == from_disk.code == later.code:
        raise SystemExit("FAIL: a convert from the cache produced another graph than the first")
    print(f"{a.arch} at {a.resolution}x{a.resolution}, {a.classes} classes, {torch.get_num_threads()} thread(s); "
          f"{len(cached.graphs)} distinct pattern graphs")
    print(f"convert, new machine (exports)   {first_s:7.2f} s  (every pattern graph exported: torchao's own cost)")
    print(f"convert, new process (disk)      {disk_s:7.2f} s  ({first_s / disk_s:.1f}x faster)")
    print(f"convert, later (memory)          {later_s:7.2f} s  ({first_s / later_s:.1f}x faster, target >= 5x)")
    print(f"train+eval switch, uncached      {plain_switch:7.2f} s")
    print(f"train+eval switch, cached        {later_switch:7.2f} s  ({plain_switch / later_switch:.1f}x)")
    print("converted graphs identical: yes")


@cli
def main(argv=None):
    p = Parser(prog="benchmarks/qat_convert.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", choices=ARCHS, help="architecture (default resnet18)")
    p.add_argument("--resolution", type=int, default=32, help="input resolution (default 32, CIFAR's)")
    p.add_argument("--classes", type=int, default=100, help="classes of the head (default 100)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    a = p.parse_args(argv)
    check_range("--resolution", a.resolution, 8, 4096)
    check_range("--classes", a.classes, 2, 10 ** 6)
    if a.threads is not None:
        check_range("--threads", a.threads, 1, 1024)
    with torch_threads(a.threads):
        run(a)
    return 0


if __name__ == "__main__":
    main()
