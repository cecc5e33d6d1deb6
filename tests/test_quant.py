"""INT8 via PT2E: QAT trains, keeps pruned zeros, converts to a real int8 graph that agrees with
its fake-quant model; PTQ baseline; clear errors for what the quantizer cannot handle.

One tiny PQD pipeline (resnet18 @32x32 on digits: brief FP32 training, 50% pruning, QAT, convert)
is shared by most tests; convert alone costs ~25 s of CPU, so the file converts once.
INT8 kernels are CPU-only, so everything runs on the CPU.
"""
from __future__ import annotations

import copy
import operator
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from m2mdc import pattern_cache, quant, sparsity
from m2mdc.latency import compile_for_cpu
from m2mdc.bn import recalibrate_bn
from m2mdc.data import Loader
from m2mdc.errors import UserError
from m2mdc.models import get_adapter
from m2mdc.train import evaluate, train_epoch_ce

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fp32(digits):
    torch.manual_seed(0)
    model = get_adapter("resnet18").base_model(digits.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    # a reasonably trained model: near-tied logits (an untrained model's) would make the
    # fake-quant vs INT8 agreement a coin toss on rounding noise rather than a check
    loader = Loader(digits.train, 64, CPU, shuffle=True)
    for epoch in range(3):
        loader.set_epoch(epoch)
        train_epoch_ce(model, loader, opt)
    return recalibrate_bn(model, Loader(digits.train, 128, CPU, limit=256))  # exact stats after few steps


@pytest.fixture(scope="module")
def pattern_dir(tmp_path_factory):
    """The pattern cache on an empty disk folder and an empty memory for this file: the fixture's
    convert exports every pattern graph and saves it (a cold cache, whatever ran before)."""
    cache = pattern_cache.installed()
    saved = cache.directory, dict(cache.graphs)
    cache.directory = tmp_path_factory.mktemp("torchao-patterns")
    cache.graphs.clear()
    yield cache.directory
    cache.directory = saved[0]
    cache.graphs.update(saved[1])


@pytest.fixture(scope="module")
def pqd(fp32, digits, pattern_dir):
    """Prune 50% -> QAT trained by the generic train_epoch_ce loop -> convert."""
    pruned = copy.deepcopy(fp32)
    sparsity.apply_sparsity(pruned, 0.5)
    sparsity.make_permanent(pruned)
    prepared = quant.prepare_qat(pruned, next(iter(Loader(digits.train, 4, CPU))).x, name="resnet18")
    before = {n: p.detach().clone() for n, p in prepared.named_parameters()}
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    stats = train_epoch_ce(prepared, Loader(digits.train, 64, CPU, shuffle=True, seed=1, limit=128), opt)
    converted = quant.convert(prepared, name="resnet18")
    return {"prepared": prepared, "converted": converted, "before": before, "stats": stats}


def _weights(prepared) -> dict[str, torch.Tensor]:
    return {n: prepared.get_parameter(n) for n in prepared.meta["m2mdc_masks"]}


def test_qat_trains_and_keeps_pruned_zeros(pqd, digits):
    prepared = pqd["prepared"]
    assert pqd["stats"]["loss"] > 0
    changed = [n for n, p in prepared.named_parameters() if not torch.equal(p, pqd["before"][n])]
    assert len(changed) > 10
    masks = prepared.meta["m2mdc_masks"]
    assert len(masks) == 21  # 20 convs + fc, named as in the FP32 model
    prepared.eval()
    with torch.no_grad():
        prepared(next(iter(Loader(digits.test, 8, CPU))).x)  # the pre-hook re-zeroes after opt.step
    zeros = sum(int((w == 0).sum()) for w in _weights(prepared).values())
    assert zeros == sum(int((~keep).sum()) for keep in masks.values())
    assert zeros >= 0.5 * sum(w.numel() for w in _weights(prepared).values()) - 1


def test_qat_model_switches_modes_in_generic_loops(pqd, digits):
    """evaluate() calls eval()/train(), which must rewrite BN in the graph and freeze fake-quant ranges."""
    prepared = pqd["prepared"]
    prepared.train()
    assert prepared.training and prepared.get_submodule("activation_post_process_0").training
    test = Loader(digits.test, 120, CPU, limit=120)
    acc = evaluate(prepared, test)
    assert prepared.training  # evaluate restored train mode
    assert acc > 30
    assert evaluate(prepared, test) == acc  # eval uses running BN stats and frozen ranges: no drift
    prepared.eval()
    assert not prepared.training and not prepared.get_submodule("activation_post_process_0").training


def test_converted_is_int8_sparse_and_runs_at_batch_1(pqd, digits):
    converted = pqd["converted"]
    assert quant.int8_coverage(converted) == {"int8": 21, "total": 21}
    consts = [operator.attrgetter(n.target)(converted) for n in converted.graph.nodes if n.op == "get_attr"]
    int8_weights = [t for t in consts if isinstance(t, torch.Tensor) and t.dtype == torch.int8]
    assert len(int8_weights) == 21
    zeros = sum(int((w == 0).sum()) for w in int8_weights)
    assert zeros >= 0.5 * sum(w.numel() for w in int8_weights)
    assert converted(next(iter(Loader(digits.test, 1, CPU))).x).shape == (1, 10)


def test_converted_artefact_ships_int8_not_fp32_weights(pqd, fp32):
    """convert_pt2e leaves the FP32 weights attached; the INT8 export must not carry them."""
    from m2mdc.deploy import export_bytes
    from m2mdc.sparsity import dense_checkpoint_bytes

    int8_bytes = export_bytes(pqd["converted"], 32)
    assert int8_bytes < 0.35 * dense_checkpoint_bytes(fp32)  # int8 weights: ~1/4 of FP32, plus scales
    assert not [n for n, p in pqd["converted"].named_parameters() if p.dtype == torch.float32 and p.dim() == 4]


def _make(flag, fn=F.conv2d, eps=1e-5):
    def pattern(x):
        return fn(x, x) * eps if flag else fn(x, x) - eps
    return pattern


def test_pattern_key_tells_patterns_apart_by_flags_and_shapes_not_values():
    """The cache keys: the same builder flags and input shapes share a graph, whatever the random example
    values; another flag, function, shape or dtype does not; what cannot be keyed is not cached."""
    from torchao.quantization.pt2e.export_utils import WrapperModule

    x = (torch.randn(1, 3),)
    for key in (pattern_cache.memory_key, pattern_cache.disk_key):
        assert key(_make(True), x, False, {}) == key(_make(True), (torch.randn(1, 3),), False, {})
        assert key(WrapperModule(_make(True)), x, False, {}) == key(_make(True), x, False, {})
        assert key(_make(True), x, False, {}) != key(_make(False), x, False, {})
        assert key(_make(True), x, False, {}) != key(_make(True, F.conv1d), x, False, {})
        assert key(_make(True), x, False, {}) != key(_make(True, eps=1e-3), x, False, {})
        assert key(_make(True), x, False, {}) != key(_make(True), (torch.randn(2, 3),), False, {})
        assert key(_make(True), x, False, {}) != key(_make(True), (torch.randn(1, 3, dtype=torch.float64),), False,
                                                     {})
        assert key(_make(True), x, False, {"s": torch.ones(1)}) != key(_make(True), x, False, {"s": torch.ones(2)})
        assert key(_make(True), x, False, {}) != key(_make(True), x, True, {})
        assert key(_make([1]), x, False, {}) is None  # an unhashable closure value
        assert key(torch.nn.Linear(1, 1), x, False, {}) is None  # not a function
    assert pattern_cache.disk_key(_make(True, fn=torch.nn.ReLU()), x, False, {}) is None  # no process-free text


def test_disk_key_is_the_same_in_another_process():
    """A disk key names a file other processes read: no address, no hash order may enter it."""
    code = ("import torch, torch.nn.functional as F; from m2mdc import pattern_cache; from tests.test_quant import _make; "
            "print([pattern_cache.disk_key(_make(f, fn), (torch.randn(1, 3),), False, {'s': torch.ones(2)}) "
            "for f in (True, False) for fn in (F.conv2d, torch.add)])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONHASHSEED": "123"})
    assert r.returncode == 0, r.stderr[-2000:]
    here = [pattern_cache.disk_key(_make(f, fn), (torch.randn(1, 3),), False, {"s": torch.ones(2)})
            for f in (True, False) for fn in (F.conv2d, torch.add)]
    assert None not in here and len(set(here)) == 4
    assert r.stdout.strip() == str(here)


def test_pattern_cache_changes_nothing_in_the_converted_model(pqd, digits, pattern_dir, monkeypatch):
    """m2mdc.pattern_cache keeps torchao's pattern-graph exports (a speed fix, ~25-30 s per convert): the
    INT8 model converted through torchao's own, uncached builder is the same graph with the same
    constants and the same outputs as the fixture's (exported and saved) and as one converted from the
    saved programs alone (what a new process does); so is a train/eval switch of the QAT graph."""
    import importlib

    modules = [importlib.import_module(f"torchao.quantization.pt2e.{m}") for m in ("utils", "qat_utils")]
    cached = pattern_cache.installed()
    assert cached is not None and all(m._get_aten_graph_module_for_pattern is cached for m in modules)
    assert cached.graphs  # the fixture's convert went through the cache
    assert len(list(pattern_dir.glob("*.pt2"))) == len(cached.graphs)  # and saved every graph
    with pattern_cache.uncached():
        assert all(m._get_aten_graph_module_for_pattern is cached.uncached for m in modules)
        plain = quant.convert(pqd["prepared"], name="resnet18")
    cached.graphs.clear()  # as in a new process: only the disk has the graphs
    real, exports = torch.export.export, []
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: exports.append(a) or real(*a, **k))
    from_disk = quant.convert(pqd["prepared"], name="resnet18")
    monkeypatch.undo()
    assert not exports and cached.graphs  # every pattern graph came from the saved programs
    x = next(iter(Loader(digits.test, 64, CPU))).x
    for converted in (pqd["converted"], from_disk):
        assert plain.code == converted.code
        a, b = plain.state_dict(), converted.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(plain(x), converted(x))

    def switched():
        gm = copy.deepcopy(pqd["prepared"])
        quant._set_mode(gm, train=True)
        quant._set_mode(gm, train=False)
        return gm.code

    with pattern_cache.uncached():
        uncached = switched()
    assert all(m._get_aten_graph_module_for_pattern is cached for m in modules)  # restored
    assert switched() == uncached


def test_an_unreadable_saved_graph_is_exported_again(tmp_path):
    """A truncated entry (a full disk, a killed writer) is no error: exported again and overwritten."""
    from torchao.quantization.pt2e.export_utils import WrapperModule

    def fresh_cache():  # a new process's: nothing in memory
        return pattern_cache.cached_pattern_graphs(pattern_cache.installed().uncached, tmp_path)

    x = (torch.randn(2, 3),)
    first = fresh_cache()(WrapperModule(_make(True, torch.add)), x)
    (entry,) = tmp_path.glob("*.pt2")
    entry.write_bytes(entry.read_bytes()[:100])
    again = fresh_cache()(WrapperModule(_make(True, torch.add)), x)
    assert again.code == first.code
    assert torch.equal(again(*x), first(*x))
    assert entry.stat().st_size > 100  # overwritten with a whole program


def test_converted_agrees_with_fake_quant(pqd, digits):
    prepared, converted = pqd["prepared"], pqd["converted"]
    prepared.eval()
    agree = total = correct = 0
    preds = set()
    with torch.no_grad():
        for b in Loader(digits.test, 120, CPU):
            fq = prepared(b.x).argmax(1)
            q = converted(b.x).argmax(1)
            agree += int((fq == q).sum())
            correct += int((q == b.y).sum())
            total += len(b.y)
            preds |= set(q.tolist())
    assert total == len(digits.test)
    assert len(preds) >= 5, "degenerate predictions would make agreement meaningless"
    assert correct / total > 0.3
    assert agree / total >= 0.99, f"fake-quant vs int8 top-1 agreement {agree}/{total}"


class _Tiny(nn.Module):
    """MobileNet-like naming: the head is ``classifier.1``, behind a dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_features_output_for_kd():
    """With head=..., the QAT graph returns (logits, what the head receives) for a KD loss."""
    torch.manual_seed(0)
    model, x = _Tiny(), torch.randn(16, 3, 8, 8)
    prepared = quant.prepare_qat(model, x[:4], head="classifier.1")
    assert prepared.meta["m2mdc_features"]
    logits, feats = prepared(x)
    assert logits.shape == (16, 10) and feats.shape == (16, 8)
    teacher_feats = torch.randn(16, 8)
    (F.cross_entropy(logits, torch.arange(16) % 10) + F.mse_loss(feats, teacher_feats)).backward()
    assert prepared.get_parameter("body.features.0.weight").grad.abs().sum() > 0
    assert prepared.get_parameter("head.weight").grad.abs().sum() > 0
    prepared.eval()  # dropout off, BN on running stats: features are deterministic
    with torch.no_grad():
        assert torch.equal(prepared(x)[1], prepared(x)[1])
    assert _dropout_args(prepared) == [(0.2, False)]
    prepared.train()  # torchao's own switch would leave p=0.5
    assert _dropout_args(prepared) == [(0.2, True)]
    assert isinstance(model.classifier[1], nn.Linear)  # the caller's model is untouched


def _dropout_args(gm) -> list[tuple]:
    """(p, train) of each dropout in the graph."""
    return [tuple(n.args[1:3]) for n in gm.graph.nodes
            if getattr(n.target, "overloadpacket", None) is torch.ops.aten.dropout]


def test_non_default_batchnorm_is_refused_for_qat():
    model = _Tiny()
    model.features[1].eps = 1e-3
    with pytest.raises(UserError, match=r"eps=1e-5.*features\.1"):
        quant.prepare_qat(model, torch.randn(2, 3, 8, 8))


def test_ptq_baseline(fp32, digits):
    int8 = quant.ptq(fp32, Loader(digits.train, 32, CPU, limit=64), batches=2, name="resnet18")
    assert quant.int8_coverage(int8) == {"int8": 21, "total": 21}
    agree = correct = total = 0
    with torch.no_grad():
        for b in Loader(digits.test, 120, CPU, limit=240):
            q = int8(b.x).argmax(1)
            agree += int((q == fp32(b.x).argmax(1)).sum())
            correct += int((q == b.y).sum())
            total += len(b.y)
    assert agree / total >= 0.9 and correct / total > 0.3


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


class _Deconv(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 4, 3)

    def forward(self, x):
        return self.up(x)


@pytest.mark.parametrize("model, step", [(_Branchy(), "torch.export"), (_Deconv(), "annotate")])
def test_unsupported_model_raises_user_error(model, step):
    with pytest.raises(UserError) as e:
        quant.prepare_qat(model, torch.randn(2, 3, 8, 8), name="toynet")
    assert "toynet" in str(e.value) and step in str(e.value) and "\n" not in str(e.value)


def test_live_pruning_hooks_rejected():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    sparsity.apply_sparsity(model, 0.5)
    with pytest.raises(UserError, match="make_permanent"):
        quant.prepare_qat(model, torch.randn(2, 3, 8, 8))


def test_compile_failure_falls_back_to_eager(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn, backend = compile_for_cpu(model, torch.randn(1, 3, 8, 8))
    assert fn is model and backend == "eager-fallback"
    assert any("no C++ compiler" in str(w.message) for w in caught)


def test_many_models_in_one_process_each_run_compiled():
    """Dynamo keys compiled code by the forward's code object, shared by every instance of a class;
    past its recompile limit (8) it silently runs eagerly. Five models at two batch sizes (ten
    versions) are timed compiled, each one: a fallback would raise (fail_on_recompile_limit_hit)."""
    from m2mdc.latency import time_forward

    for i in range(5):
        model = nn.Sequential(nn.Conv2d(3, 4 + i, 3), nn.ReLU()).eval()
        fn, backend = compile_for_cpu(model, torch.randn(1, 3, 8, 8))
        assert backend == "inductor"
        for batch in (1, 4):
            time_forward(fn, resolution=8, batch=batch, warmup=1, repeats=2)
