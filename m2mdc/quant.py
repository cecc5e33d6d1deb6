"""INT8 quantisation of conv nets for x86 CPUs with PT2E (torchao): QAT, PTQ, convert, compile.

Flow: ``torch.export`` (strict, dynamic batch) -> X86InductorQuantizer annotates -> fake-quant
(QAT) or observers (PTQ) -> ``convert_pt2e`` gives a graph of quantize/dequantize + FP32 ops ->
``torch.compile`` (inductor with freezing) fuses those into oneDNN int8 kernels. The converted
model run *uncompiled* executes the reference dequantize -> FP32 -> quantize graph: numerically
INT8, but slower than FP32 eager; only the compiled model is fast.

Knowledge distillation while fake-quant is active: the prepared model is a flat exported
GraphModule of aten ops. The head Linear survives only as a plain Module holding the weights, and
forward hooks on it never fire. A KD loop can use (a) the logits it returns, or (b) the
penultimate features: pass ``head=<adapter.head_name>`` to ``prepare_qat`` and the graph returns
``(logits, features)``, where features is the tensor the head receives (before its input
fake-quant). ``convert`` then drops the features output, so the INT8 model returns logits only.
``QATStudent`` wraps such a graph so hook-based KD code (a forward pre-hook on the head) works.
"""
from __future__ import annotations

import copy
import types
from typing import Iterable

import torch
from torch import nn
from torch.fx import GraphModule
from . import pattern_cache  # first: it imports torchao quietly (see there)
from torchao.quantization.pt2e import (disable_observer, enable_observer,
                                       move_exported_model_to_eval, move_exported_model_to_train)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
# Importing this module also registers torchao's int8 fusion passes with inductor.
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer, get_default_x86_inductor_quantization_config)

from .data import Batch
from .errors import UserError

pattern_cache.install()  # torchao's pattern graphs exported once, not on every convert (m2mdc.pattern_cache)

_aten = torch.ops.aten
_DEQUANT_OPS = {"dequantize_per_tensor", "dequantize_per_channel"}
_WEIGHTED_OPS = {_aten.conv1d, _aten.conv2d, _aten.conv3d, _aten.conv_transpose1d, _aten.conv_transpose2d,
                 _aten.conv_transpose3d, _aten.linear}  # overload packets: every overload counts
CPU = torch.device("cpu")


class _WithFeatures(nn.Module):
    """Returns (logits, input of the head) so both survive export as graph outputs."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.body = copy.deepcopy(model)
        parent, _, child = head.rpartition(".")
        owner = self.body.get_submodule(parent) if parent else self.body
        self.head = getattr(owner, child)
        setattr(owner, child, nn.Identity())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class _LogitsOnly(nn.Module):
    """The INT8 model of a features-returning graph, reduced to its logits."""

    def __init__(self, model: GraphModule):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def _is_weighted(n: torch.fx.Node) -> bool:
    return n.op == "call_function" and getattr(n.target, "overloadpacket", None) in _WEIGHTED_OPS


def _name(model: nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else 'no detail'}"


def _quantizer(is_qat: bool) -> X86InductorQuantizer:
    return X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))


def _export(model: nn.Module, example: torch.Tensor, name: str, step: str) -> GraphModule:
    """Strict export with a dynamic batch (non-strict export breaks the X86 annotator on ResNets;
    a static batch would reject any other batch size)."""
    if example.shape[0] < 2:  # export specialises a size-1 dimension, however it is declared
        example = example.expand(2, *example.shape[1:])
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                 strict=True)
    except Exception as e:
        raise UserError(f"INT8 {step} of {name} failed at torch.export (strict, dynamic batch): {first_line(e)}; "
                        f"the model needs export-friendly control flow (no data-dependent branches)") from None
    return ep.module()


def _check_annotated(prepared: GraphModule, name: str, step: str) -> None:
    """The X86 quantizer silently skips ops it cannot handle; no weighted op quantised is a failure."""
    fq_inputs = {n for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in n.target}
    weighted = [n for n in prepared.graph.nodes if _is_weighted(n)]
    if not weighted or not any(a in fq_inputs for n in weighted for a in n.all_input_nodes):
        raise UserError(f"INT8 {step} of {name} failed at annotate: the X86 inductor quantizer quantised none of "
                        f"its {len(weighted)} conv/linear ops; use FP32 for this architecture")


def _dropouts(gm: GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if getattr(n.target, "overloadpacket", None) is _aten.dropout]


def _set_mode(gm: GraphModule, train: bool) -> None:
    """torchao's mode switch, then each dropout's p put back.

    move_exported_model_to_train/eval swap in pattern graphs built with p=0.5 (ignore_literals),
    so mobilenet_v2's dropout 0.2 would silently train at 0.5.
    """
    (move_exported_model_to_train if train else move_exported_model_to_eval)(gm)
    nodes, ps = _dropouts(gm), gm.meta["m2mdc_dropout_p"]
    if len(nodes) != len(ps):
        raise RuntimeError(f"train/eval switch changed the number of dropout ops ({len(ps)} -> {len(nodes)})")
    for n, p in zip(nodes, ps):
        n.args = (n.args[0], p, *n.args[2:])
    gm.recompile()


def _switchable(gm: GraphModule) -> GraphModule:
    """Make ``train()``/``eval()`` on an exported QAT graph behave like on any module.

    Exported graphs bake batch-norm/dropout mode into the graph, so mode changes rewrite it.
    eval() also freezes the fake-quant ranges so evaluating never changes the model; train()
    re-enables observing.
    """

    def train(self: GraphModule, mode: bool = True) -> GraphModule:
        _set_mode(self, mode)
        self.apply(enable_observer if mode else disable_observer)
        for m in self.modules():
            m.training = mode
        return self

    def eval(self: GraphModule) -> GraphModule:
        return self.train(False)

    gm.train = types.MethodType(train, gm)
    gm.eval = types.MethodType(eval, gm)
    for m in gm.modules():  # exported from a train-mode model: only the flags need setting
        m.training = True
    return gm


def _zero_masked(gm: GraphModule, args: tuple) -> None:
    """Forward pre-hook: re-zero the weights that were zero at prepare time (pruned weights)."""
    with torch.no_grad():
        for pname, keep in gm.meta["m2mdc_masks"].items():
            p = gm.get_parameter(pname)
            p.mul_(keep.to(p.device))


def prepare_qat(model: nn.Module, example_input: torch.Tensor, head: str | None = None,
                name: str | None = None, keep_zeros: bool = True) -> GraphModule:
    """A fake-quant copy of ``model`` to train with any optimizer loop (``model`` is not modified).

    Runs on the device of ``model`` and ``example_input``. With ``head`` (the final Linear's module
    name, e.g. ``get_adapter(arch).head_name``) the graph returns ``(logits, features)`` for KD.
    ``keep_zeros``: conv/linear weights that are exactly zero now (pruned, after
    ``sparsity.make_permanent``) are re-zeroed before every forward, so QAT keeps the sparsity.
    ``name`` labels errors (default: the class name). ``copy.deepcopy`` of the result keeps the
    graph and weights but not the train()/eval() switch or the zero-keeping hook (GraphModule's
    deepcopy drops instance methods and forward hooks): snapshot with ``state_dict`` instead.
    """
    name = _name(model, name)
    if any(hasattr(m, "weight_orig") for m in model.modules()):
        raise UserError(f"{name} still carries pruning hooks, which torch.export cannot keep trainable; call "
                        f"m2mdc.sparsity.make_permanent(model) before prepare_qat (its zeros are kept through QAT)")
    odd_bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and (m.eps != 1e-5 or m.momentum != 0.1)]
    if odd_bn:
        raise UserError(f"INT8 QAT of {name} failed at prepare_qat_pt2e: its conv-bn fusion hard-codes BatchNorm "
                        f"eps=1e-5 and momentum=0.1, but {odd_bn[0]} (and {len(odd_bn) - 1} more) differ; "
                        f"use PTQ, or BatchNorm defaults")
    model = _WithFeatures(model, head) if head is not None else copy.deepcopy(model)
    masks = {n: p != 0 for n, p in model.named_parameters()
             if keep_zeros and p.dim() > 1 and bool((p == 0).any())}
    gm = _export(model.train(), example_input, name, "QAT")
    try:
        prepared = prepare_qat_pt2e(gm, _quantizer(is_qat=True))
    except Exception as e:
        raise UserError(f"INT8 QAT of {name} failed at prepare_qat_pt2e (X86 inductor quantizer): "
                        f"{first_line(e)}; use FP32 or PTQ for this architecture") from None
    _check_annotated(prepared, name, "QAT")
    own = {n for n, _ in prepared.named_parameters()}
    if not set(masks) <= own:
        raise UserError(f"INT8 QAT of {name} failed at keeping pruned weights at zero: the exported graph renamed "
                        f"{sorted(set(masks) - own)[:3]}; pass keep_zeros=False to let QAT refill them")
    # meta, unlike attributes and hooks, survives the deepcopy that convert makes
    prepared.meta["m2mdc_features"] = head is not None
    prepared.meta["m2mdc_masks"] = masks
    prepared.meta["m2mdc_dropout_p"] = [n.args[1] for n in _dropouts(prepared)]
    if masks:
        prepared.register_forward_pre_hook(_zero_masked)
        prepared.meta["m2mdc_mask_hook"] = True
    return _switchable(prepared)


def int8_coverage(model: nn.Module) -> dict[str, int]:
    """How many conv/linear ops of a converted model take a dequantised (int8) weight."""
    gm = model.model if isinstance(model, _LogitsOnly) else model
    if not isinstance(gm, GraphModule):
        return {"int8": 0, "total": sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in gm.modules())}
    weighted = [n for n in gm.graph.nodes if _is_weighted(n)]
    int8 = [n for n in weighted if len(n.args) > 1 and isinstance(n.args[1], torch.fx.Node)
            and getattr(n.args[1].target, "__name__", "").split(".")[0] in _DEQUANT_OPS]
    return {"int8": len(int8), "total": len(weighted)}


def _finish(converted: GraphModule, name: str, step: str, features: bool) -> nn.Module:
    """Eval-mode INT8 model (the graph was already in eval mode when converted); raises rather
    than hand back a model with no int8 weight."""
    cov = int8_coverage(converted)
    if cov["int8"] == 0:
        raise UserError(f"INT8 {step} of {name} failed at convert: none of its {cov['total']} conv/linear ops "
                        f"has an int8 weight after convert_pt2e; use FP32 for this architecture")
    strip_unused(converted)
    _inference_only(converted)
    return _LogitsOnly(converted).eval() if features else converted


def strip_unused(gm: GraphModule) -> GraphModule:
    """Drop the parameters, buffers and submodules no graph node reads. convert_pt2e folds the
    weights into int8 constants but leaves the FP32 originals attached, which made the INT8
    artefact larger than the FP32 checkpoint (measured: 8.5 MB vs 6.5 MB for a 1.6M-param
    student)."""
    gm.graph.eliminate_dead_code()  # get_attr nodes nothing reads (a reloaded export has them)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _inference_only(gm: GraphModule) -> None:
    """convert_pt2e makes train()/eval() raise; the INT8 graph is eval-only (BN folded, dropout
    off), so let them just set the flags and generic loops such as ``evaluate`` work."""

    def train(self: GraphModule, mode: bool = True) -> GraphModule:
        for m in self.modules():
            m.training = mode
        return self

    gm.train = types.MethodType(train, gm)
    gm.eval = types.MethodType(lambda self: self.train(False), gm)
    gm.eval()


def convert(prepared: GraphModule, name: str | None = None) -> nn.Module:
    """The INT8 CPU model of a QAT-prepared graph (the prepared graph stays usable).

    Folds BN into conv and replaces fake-quant by quantize/dequantize ops. The first convert of a process
    takes ~25-30 s on resnet18 (torchao exports ~100 pattern graphs), later ones ~3 s (the pattern cache
    above; benchmarks/qat_convert.py). Compile the result for speed.
    """
    name = name or "model"
    model = copy.deepcopy(prepared).to(CPU)  # deepcopy drops _switchable's methods: switch by hand
    _set_mode(model, train=False)
    model.apply(disable_observer)
    _zero_masked(model, ())
    try:
        converted = convert_pt2e(model)
    except Exception as e:
        raise UserError(f"INT8 QAT of {name} failed at convert_pt2e: {first_line(e)}") from None
    return _finish(converted, name, "QAT", prepared.meta.get("m2mdc_features", False))


@torch.no_grad()
def ptq(model: nn.Module, calib_loader: Iterable[Batch], batches: int = 8, name: str | None = None) -> nn.Module:
    """Post-training INT8: observe activation ranges on ``batches`` calibration batches, convert.

    Runs on the CPU whatever device ``model`` and the loader use; ``model`` is not modified.
    """
    name = _name(model, name)
    if batches < 1:
        raise UserError(f"PTQ needs at least one calibration batch (got batches={batches})")
    it = iter(calib_loader)
    first = next(it, None)
    if first is None:
        raise UserError(f"PTQ of {name}: the calibration loader is empty")
    gm = _export(copy.deepcopy(model).to(CPU).eval(), first.x.to(CPU), name, "PTQ")
    try:
        prepared = prepare_pt2e(gm, _quantizer(is_qat=False))
    except Exception as e:
        raise UserError(f"INT8 PTQ of {name} failed at prepare_pt2e (X86 inductor quantizer): "
                        f"{first_line(e)}; use FP32 for this architecture") from None
    _check_annotated(prepared, name, "PTQ")
    prepared(first.x.to(CPU))
    for _, b in zip(range(batches - 1), it):
        prepared(b.x.to(CPU))
    try:
        converted = convert_pt2e(prepared)
    except Exception as e:
        raise UserError(f"INT8 PTQ of {name} failed at convert_pt2e: {first_line(e)}") from None
    return _finish(converted, name, "PTQ", features=False)


class _HeadTap(nn.Identity):
    """Stands where the head Linear was, so KD's feature hook and width lookup work unchanged."""

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features


class QATStudent(nn.Module):
    """A fake-quant student that looks like an ordinary classifier to training/KD/eval code:
    forward returns logits, and phi passes through a pass-through module at the head's path."""

    def __init__(self, prepared: GraphModule, head_name: str, in_features: int):
        super().__init__()
        self.prepared = prepared
        self.head_name = head_name
        owner: nn.Module = self
        *parents, leaf = head_name.split(".")
        for part in parents:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        owner.add_module(leaf, _HeadTap(in_features))

    @classmethod
    def prepare(cls, model: nn.Module, example: torch.Tensor, head_name: str, name: str | None = None) -> "QATStudent":
        in_features = model.get_submodule(head_name).in_features
        return cls(prepare_qat(model, example, head=head_name, name=name), head_name, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, features = self.prepared(x)
        self.get_submodule(self.head_name)(features)
        return logits

    def convert(self, name: str | None = None) -> nn.Module:
        return convert(self.prepared, name)


def _weight_params(gm: GraphModule) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in gm.named_parameters() if p.dim() > 1]


@torch.no_grad()
def sparsify_prepared(prepared: GraphModule, sparsity: float) -> dict:
    """Global magnitude pruning of a QAT-prepared graph's conv/linear weights (orders such as
    QAT -> prune): the masks join those ``prepare_qat`` keeps at zero before every forward.

    Ranks the weights the next forward uses (masked ones count as zero), so exactly
    round(sparsity * N) weights end up masked; less sparsity than already masked is an error.
    """
    from .errors import check_range

    check_range("sparsity", sparsity, 0.0, 1.0, hi_open=True,
                hint="give the fraction of conv + linear weights to zero, e.g. 0.5")
    masks = prepared.meta.setdefault("m2mdc_masks", {})
    params = _weight_params(prepared)
    effective = [p.detach() * masks[n].to(p.device) if n in masks else p.detach() for n, p in params]
    flat = torch.cat([w.abs().flatten() for w in effective])
    k = round(sparsity * flat.numel())
    already = int((flat == 0).sum())
    if k < already:
        raise UserError(f"sparsity={sparsity} is below the {already / flat.numel():.4f} the model already has; "
                        f"masks cannot be undone")
    if k:
        # the k smallest |w| go (ties broken by topk, like torch.nn.utils.prune's L1Unstructured)
        drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        drop[torch.topk(flat, k, largest=False).indices] = True
        start = 0
        for n, p in params:
            masks[n] = ~drop[start:start + p.numel()].view_as(p)
            start += p.numel()
    if masks and not prepared.meta.get("m2mdc_mask_hook"):
        prepared.register_forward_pre_hook(_zero_masked)
        prepared.meta["m2mdc_mask_hook"] = True
    _zero_masked(prepared, ())
    return {"target": sparsity, "achieved": prepared_sparsity(prepared)}


def prepared_sparsity(prepared: GraphModule) -> float:
    """Fraction of exactly-zero conv/linear weights of a prepared graph (after masks apply)."""
    masks = prepared.meta.get("m2mdc_masks", {})
    zeros = total = 0
    for n, p in _weight_params(prepared):
        w = p.detach() * masks[n].to(p.device) if n in masks else p.detach()
        zeros += int((w == 0).sum())
        total += p.numel()
    return zeros / max(total, 1)
