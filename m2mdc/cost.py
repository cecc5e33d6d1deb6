"""Analytic MAC model: price a keep_cfg from channel widths and kept blocks, without tracing.

``metrics.gmacs(adapter.rebuild(keep_cfg, nc), res)`` builds a model and traces it with fvcore
(tens to hundreds of milliseconds); a search or budget allocator prices thousands of keep_cfgs.
A ``CostModel`` runs ONE hooked forward pass of the full base model and records, for every
module fvcore counts, its output spatial size and the channel groups its tensor dimensions
belong to. Spatial sizes do not change when stride-1 residual blocks are removed or channels
are sliced, so the MACs of any student are a sum of terms ``coef * w[out_group] * w[in_group]``
over the modules of the kept blocks (plus stem, tail and head), with fvcore's conventions:

* Conv2d: one MAC per multiply-add, ``out_C * in_C / groups * kh * kw * H_out * W_out``
  (bias not counted; a depthwise conv costs ``C * kh * kw * H_out * W_out``);
* Linear: ``in_features * out_features`` per output row (bias not counted);
* BatchNorm2d in eval mode, affine: 2 per element;
* adaptive average pooling (module or functional): 1 per input element.

Everything else these models run (ReLU, max pooling, residual adds, flatten, dropout) is not
counted by fvcore and not here. Integer arithmetic, so ``gmacs`` equals fvcore's count exactly.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .models.base import Adapter, Group, GroupKind, mid_groups

_POOLS = {torch.nn.functional.adaptive_avg_pool2d}


class _PoolRecorder(TorchFunctionMode):
    """Records the input shape of every adaptive average pooling call (module or functional)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _POOLS:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


class CostModel:
    """MACs of any keep_cfg of ``adapter``'s architecture at ``resolution``, with ``num_classes``.

    ``gmacs(keep_cfg)`` equals ``metrics.gmacs(adapter.rebuild(keep_cfg, num_classes), resolution)``.
    Width *knobs* are the keep_cfg's entries: ``planes:<stage>`` and ``mid:<block>`` (a
    Bottleneck's ``mid2`` group follows its ``mid`` width, as ``Adapter.rebuild`` does).
    """

    def __init__(self, adapter: Adapter, num_classes: int, resolution: int = 32):
        self.adapter = adapter
        self.arch = adapter.arch
        self.num_classes = int(num_classes)
        self.resolution = int(resolution)
        model = adapter.base_model(self.num_classes).eval()
        groups = adapter.channel_groups(model)
        full_widths = adapter.group_widths(model)

        # ---- architecture structure -------------------------------------------------------
        self.blocks: list[str] = list(adapter.blocks(model))
        self.stage_blocks: OrderedDict[str, list[str]] = adapter.blocks_by_stage(model)
        self.protected: frozenset[str] = frozenset(adapter.protected_blocks(model))
        self._block_of_index = {(adapter.stage_of(b), adapter.block_index(b)): b for b in self.blocks}
        # knobs: keep_cfg width entries -> the channel groups they set
        self.knobs: OrderedDict[str, list[str]] = OrderedDict()
        for g in full_widths:
            if g.kind in (GroupKind.PLANES, GroupKind.MID):
                self.knobs.setdefault(g, []).append(g)
        for g in full_widths:
            if g.kind is GroupKind.MID2:
                self.knobs.setdefault(mid_groups(g.owner)[0], []).append(g)
        self.full_knob_widths: dict[str, int] = {k: full_widths[gs[0]] for k, gs in self.knobs.items()}
        per_group = adapter.conv_group_size(model)
        # widths of a knob whose groups a grouped conv reads come in whole conv groups
        self.quantum: dict[str, int] = {k: max([per_group.get(g, 1) for g in gs]) for k, gs in self.knobs.items()}
        for k, gs in self.knobs.items():
            if len({full_widths[g] for g in gs}) != 1:  # pragma: no cover - torchvision nets are uniform
                raise ValueError(f"groups {gs} of knob {k} differ in width; a keep_cfg cannot express them")

        # ---- one hooked forward pass: output spatial sizes, pooled input shapes ------------
        spatial: dict[str, int] = {}
        counted = {name: m for name, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}

        def hook_for(name):
            def hook(_m, _inp, out):
                if name in spatial:
                    raise ValueError(f"{name} runs twice in one forward pass; CostModel cannot price it")
                # every output element except the batch and channel dimensions
                spatial[name] = int(out[0, 0].numel()) if out.dim() > 2 else 1
            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in counted.items()]
        rec = _PoolRecorder()
        try:
            with torch.no_grad(), rec:
                model(torch.zeros(1, 3, self.resolution, self.resolution))
        finally:
            for h in handles:
                h.remove()

        # ---- terms: (block or None, coef, group a or None, group b or None) ----------------
        # MACs of one term = coef * width(a) * width(b), width(None) = 1.
        block_prefixes = [(b + ".", b) for b in self.blocks]

        def block_of(name):
            for prefix, b in block_prefixes:
                if name.startswith(prefix):
                    return b
            return None

        terms: list[tuple[str | None, int, str | None, str | None]] = []
        for name, m in counted.items():
            if name not in spatial:
                continue  # defined but never run: fvcore does not count it either
            g_out, g_in = groups.get(name, (None, None))
            hw = spatial[name]
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                if depthwise:
                    if g_out != g_in and g_in is not None and g_out is not None:  # pragma: no cover
                        raise ValueError(f"depthwise conv {name} spans two channel groups ({g_out}, {g_in})")
                    g = g_out if g_out is not None else g_in
                    terms.append((block_of(name), k * hw * (1 if g else m.out_channels), g, None))
                    continue
                if m.groups > 1:  # grouped (ResNeXt): sliced in whole groups, so MACs = out * (in / groups) * k * hw
                    per_group = m.in_channels // m.groups
                    terms.append((block_of(name), k * hw * per_group * (1 if g_out else m.out_channels), g_out, None))
                    continue
                coef = k * hw
                coef_in = 1 if g_in else m.in_channels // m.groups
                coef_out = 1 if g_out else m.out_channels
                terms.append((block_of(name), coef * coef_in * coef_out, g_out, g_in))
            elif isinstance(m, nn.BatchNorm2d):
                if not m.affine:  # pragma: no cover - torchvision BNs are affine
                    raise ValueError(f"non-affine BatchNorm {name} is not supported")
                terms.append((block_of(name), 2 * hw * (1 if g_out else m.num_features), g_out, None))
            else:  # Linear
                coef_in = 1 if g_in else m.in_features
                coef_out = 1 if g_out else m.out_features
                terms.append((block_of(name), hw * coef_in * coef_out, g_out, g_in))
        head_in = groups[adapter.head_name][1]
        for shape in rec.shapes:
            if len(shape) != 4 or shape[0] != 1:  # pragma: no cover
                raise ValueError(f"unexpected pooling input shape {shape}")
            c, hw = shape[1], shape[2] * shape[3]
            if head_in is not None and full_widths.get(head_in) == c:
                terms.append((None, hw, head_in, None))
            else:  # pragma: no cover - pooling of an unsliced tensor
                terms.append((None, hw * c, None, None))

        # Compile: groups -> knob indices (slot 0 is the constant 1), blocks -> indices (-1: always kept).
        self._knob_list = list(self.knobs)
        self._knob_slot = knob_slot = {k: i + 1 for i, k in enumerate(self._knob_list)}
        group_slot = {g: knob_slot[k] for k, gs in self.knobs.items() for g in gs}
        self._fixed_groups = {g: w for g, w in full_widths.items() if g not in group_slot}
        self._block_slot = {b: i for i, b in enumerate(self.blocks)}
        compiled = []
        for blk, coef, a, b in terms:
            coef_a, slot_a = self._slot(a, group_slot)
            coef_b, slot_b = self._slot(b, group_slot)
            compiled.append((self._block_slot[blk] if blk is not None else -1, coef * coef_a * coef_b, slot_a, slot_b))
        self._terms = compiled
        self._terms_of_knob: dict[int, list[int]] = {}
        self._terms_of_block: dict[int, list[int]] = {}
        for i, (blk, _c, a, b) in enumerate(compiled):
            for s in {a, b} - {0}:
                self._terms_of_knob.setdefault(s, []).append(i)
            self._terms_of_block.setdefault(blk, []).append(i)
        self._full_slots = [1] + [self.full_knob_widths[k] for k in self._knob_list]
        # knob that a block's mid width sets, and the knob's block (None for planes)
        self.knob_block: dict[str, str | None] = {
            k: (k.owner if k.kind is GroupKind.MID else None) for k in self.knobs}
        self.full_macs = self.macs_of(frozenset(self.blocks), self.full_knob_widths)

    def _slot(self, group, group_slot):
        if group is None:
            return 1, 0
        if group in group_slot:
            return 1, group_slot[group]
        return self._fixed_groups[group], 0  # a group no keep_cfg can change (stem, tail)

    # ---- fast state API (used by the allocator) --------------------------------------------
    def macs_of(self, kept: frozenset[str] | set[str], widths: dict[str, int]) -> int:
        """Integer MACs of the model keeping blocks ``kept`` with knob widths ``widths``
        (missing knobs: full width). No validation: see ``resolve`` for that."""
        w = self._slots(widths)
        keep = [True] * len(self.blocks) + [True]  # index -1 -> always kept
        for i, b in enumerate(self.blocks):
            keep[i] = b in kept
        return sum(c * w[a] * w[b] for blk, c, a, b in self._terms if keep[blk])

    def _slots(self, widths: dict[str, int]) -> list[int]:
        w = list(self._full_slots)
        for k, v in widths.items():
            w[self._knob_slot[k]] = int(v)
        return w

    def block_macs(self, block: str, widths: dict[str, int]) -> int:
        """MACs of ``block``'s own modules at ``widths`` (what removing it saves)."""
        w = self._slots(widths)
        return sum(self._terms[i][1] * w[self._terms[i][2]] * w[self._terms[i][3]]
                   for i in self._terms_of_block.get(self._block_slot[block], []))

    def knob_delta(self, kept: frozenset[str] | set[str], widths: dict[str, int], knob: str, new_width: int) -> int:
        """Change of MACs when ``knob`` goes from its width in ``widths`` to ``new_width``."""
        w = self._slots(widths)
        s = self._knob_slot[knob]
        old = w[s]
        delta = 0
        for i in self._terms_of_knob.get(s, []):
            blk, c, a, b = self._terms[i]
            if blk >= 0 and self.blocks[blk] not in kept:
                continue
            wa, wb = w[a], w[b]
            new_a = new_width if a == s else wa
            new_b = new_width if b == s else wb
            delta += c * (new_a * new_b - wa * wb)
        w[s] = old
        return delta

    # ---- keep_cfg API ----------------------------------------------------------------------
    def resolve(self, keep_cfg: dict | None) -> tuple[frozenset[str], dict[str, int]]:
        """(kept block names, knob widths) of a keep_cfg; UserError if ``Adapter.validate_keep_cfg``
        rejects it."""
        cfg = self.adapter.validate_keep_cfg(keep_cfg, self.num_classes)
        kept = {b for b in self.blocks if self.adapter.stage_of(b) not in cfg["blocks"]
                or self.adapter.block_index(b) in cfg["blocks"][self.adapter.stage_of(b)]}
        widths = {Group(GroupKind(kind), owner): w for kind in ("planes", "mid") for owner, w in cfg[kind].items()}
        return frozenset(kept), widths

    def keep_cfg(self, kept: frozenset[str] | set[str], widths: dict[str, int]) -> dict:
        """The explicit keep_cfg (every stage, planes width and kept block's mid width) of a state."""
        cfg = {"blocks": {}, "planes": {}, "mid": {}}
        for stage, names in self.stage_blocks.items():
            cfg["blocks"][stage] = [self.adapter.block_index(b) for b in names if b in kept]
        for k in self.knobs:
            if k.kind is GroupKind.MID and k.owner not in kept:
                continue
            cfg[k.keep_cfg_kind][k.owner] = int(widths.get(k, self.full_knob_widths[k]))
        return cfg

    def macs(self, keep_cfg: dict | None) -> int:
        kept, widths = self.resolve(keep_cfg)
        return self.macs_of(kept, widths)

    def gmacs(self, keep_cfg: dict | None) -> float:
        """GMACs of the student ``keep_cfg`` describes, exactly as fvcore counts them."""
        return self.macs(keep_cfg) / 1e9

    @property
    def full_gmacs(self) -> float:
        return self.full_macs / 1e9

    def min_keep_cfg(self) -> dict:
        """The smallest model the adapter can build: protected blocks only (the cheapest single
        block of a stage that has none), every planes and mid width 1."""
        ones = {k: self.quantum[k] for k in self.knobs}
        kept = set()
        for stage, names in self.stage_blocks.items():
            prot = [b for b in names if b in self.protected]
            if prot:
                kept.update(prot)
            else:
                kept.add(min(names, key=lambda b: (self.block_macs(b, ones), names.index(b))))
        return self.keep_cfg(frozenset(kept), ones)

    def min_gmacs(self) -> float:
        return self.gmacs(self.min_keep_cfg())
