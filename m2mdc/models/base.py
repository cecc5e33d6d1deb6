"""The adapter interface: the paper's four hooks (blocks, stages, protection, rebuild) plus
the channel-group map that makes slicing generic.

A *keep_cfg* is plain data that, with the architecture name and class count, determines a
student's structure exactly::

    {"blocks": {"layer1": [0], "layer3": [0, 1], ...},   # original block indices kept per stage
     "planes": {"layer1": 40, ...},                        # residual planes kept per stage
     "mid":    {"layer1.0": 32, ...}}                      # inner (mid) channels kept per block

Missing entries mean "keep everything". Block names keep their original index (the student's
``layer3.1`` is the teacher's ``layer3.1``) so weights map across by name.

Every sliceable Conv2d / BatchNorm2d / Linear is tagged with an (out_group, in_group) pair of
channel-group names. Slicing a group keeps the same channel indices in every tensor dimension
tagged with it, which is what keeps residual additions shape-correct.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from enum import Enum
from typing import Callable

import torch
from torch import nn

from ..errors import UserError

FIXED = None  # a dimension that is never sliced (image channels, class logits)


class GroupKind(str, Enum):
    """What a channel group is, which says which keep_cfg entry sets its width."""

    PLANES = "planes"  # a stage's residual stream: keep_cfg["planes"][stage]
    MID = "mid"  # a block's inner channels: keep_cfg["mid"][block]
    MID2 = "mid2"  # a Bottleneck's second inner conv: follows its block's MID width
    UNSLICED = "unsliced"  # the stem or the tail before the head: never sliced


class Group(str):
    """A channel group: its name (``kind:owner``, or the owner alone for an unsliced group, e.g. ``stem``)
    with its kind and owner attached, so code reads ``g.kind`` instead of parsing the name. Equal to and
    hashed as its name, so keep_cfg-built names find it in any dict an adapter returns."""

    kind: GroupKind
    owner: str

    def __new__(cls, kind: GroupKind, owner: str):
        kind = GroupKind(kind)
        g = super().__new__(cls, owner if kind is GroupKind.UNSLICED else f"{kind.value}:{owner}")
        g.kind, g.owner = kind, owner
        return g

    def __getnewargs__(self):  # pickled (to Ray workers) as a Group, not rebuilt from its name
        return self.kind, self.owner

    @property
    def keep_cfg_kind(self) -> str | None:
        """The keep_cfg entry ("planes" / "mid") that sets this group's width; None when unsliced."""
        return {GroupKind.PLANES: "planes", GroupKind.MID: "mid", GroupKind.MID2: "mid"}.get(self.kind)


def planes_group(stage: str) -> Group:
    return Group(GroupKind.PLANES, stage)


def mid_groups(block: str) -> tuple[Group, Group]:
    """A block's mid group and its Bottleneck twin (which a BasicBlock does not have)."""
    return Group(GroupKind.MID, block), Group(GroupKind.MID2, block)


def empty_keep_cfg() -> dict:
    return {"blocks": {}, "planes": {}, "mid": {}}


def normalize_keep_cfg(keep_cfg: dict | None) -> dict:
    cfg = empty_keep_cfg()
    for key, val in (keep_cfg or {}).items():
        if key not in cfg:
            raise UserError(f"keep_cfg has unknown key {key!r}; expected blocks, planes, mid")
        cfg[key] = {str(k): (sorted(int(i) for i in v) if key == "blocks" else int(v)) for k, v in val.items()}
    return cfg


class Adapter(ABC):
    """Architecture knowledge for one family. Subclasses implement the hooks marked below."""

    arch: str
    family: str

    def __init__(self, arch: str, factory: Callable[..., nn.Module], stem: str = "torchvision"):
        self.arch = arch
        self.stem = stem
        self._factory = factory
        self._full: dict[int, tuple] = {}

    # ---- construction -------------------------------------------------------------
    def base_model(self, num_classes: int) -> nn.Module:
        """The unpruned torchvision architecture with a head for ``num_classes`` (and the CIFAR stem
        when the adapter's name asks for it)."""
        model = self._factory(num_classes=num_classes)
        if self.stem == "cifar":
            self.apply_cifar_stem(model)
        return model

    @abstractmethod
    def apply_cifar_stem(self, model: nn.Module) -> None:
        """Replace the ImageNet stem (in place) by the CIFAR literature's, keeping parameter names."""
        ...

    # ---- hook 1: blocks ---------------------------------------------------------------
    @abstractmethod
    def blocks(self, model: nn.Module) -> "OrderedDict[str, nn.Module]":
        """All removable-or-protected residual blocks, in forward order."""
        ...

    # ---- hook 2: stages ---------------------------------------------------------------
    @abstractmethod
    def stage_of(self, block_name: str) -> str:
        ...

    @abstractmethod
    def block_index(self, block_name: str) -> int:
        """Original index of the block inside its stage."""
        ...

    @abstractmethod
    def block_name(self, stage: str, index: int) -> str:
        ...

    # ---- hook 3: protection -------------------------------------------------------------
    @abstractmethod
    def is_protected(self, model: nn.Module, block_name: str) -> bool:
        ...

    # ---- hook 4: rebuild ----------------------------------------------------------------
    @abstractmethod
    def drop_blocks(self, model: nn.Module, keep_blocks: dict[str, list[int]]) -> None:
        """Remove from ``model`` (in place) every block not listed in keep_blocks."""
        ...

    @abstractmethod
    def channel_groups(self, model: nn.Module) -> "OrderedDict[str, tuple[str | None, str | None]]":
        """{module name: (out_group, in_group)} for every sliceable conv/bn/linear."""
        ...

    @abstractmethod
    def check_invariants(self, model: nn.Module) -> None:
        """Raise ValueError naming the block whose residual shapes disagree."""
        ...

    head_name: str  # the final Linear: its input is the penultimate feature vector phi

    # ---- derived, architecture-free ---------------------------------------------------
    def stages(self, model: nn.Module) -> list[str]:
        out: list[str] = []
        for name in self.blocks(model):
            s = self.stage_of(name)
            if s not in out:
                out.append(s)
        return out

    def blocks_by_stage(self, model: nn.Module) -> "OrderedDict[str, list[str]]":
        out: OrderedDict[str, list[str]] = OrderedDict()
        for name in self.blocks(model):
            out.setdefault(self.stage_of(name), []).append(name)
        return out

    def protected_blocks(self, model: nn.Module) -> list[str]:
        return [b for b in self.blocks(model) if self.is_protected(model, b)]

    def group_widths(self, model: nn.Module) -> dict[str, int]:
        """Current width of every channel group, read off the module shapes."""
        mods = dict(model.named_modules())
        widths: dict[str, int] = {}
        for name, (g_out, g_in) in self.channel_groups(model).items():
            m = mods[name]
            if isinstance(m, nn.Conv2d):
                dims = [(g_out, m.out_channels), (g_in, m.in_channels)]
            elif isinstance(m, nn.BatchNorm2d):
                dims = [(g_out, m.num_features)]
            else:
                dims = [(g_out, m.out_features), (g_in, m.in_features)]
            for g, w in dims:
                if g is None:
                    continue
                if widths.setdefault(g, w) != w:
                    raise ValueError(f"channel group {g} has inconsistent widths at {name}: {widths[g]} vs {w}")
        return widths

    def conv_group_size(self, model: nn.Module) -> dict[str, int]:
        """Channels per convolution group of every channel group a grouped (not depthwise) conv
        reads or writes (ResNeXt's mid groups): such a group is sliced in whole conv groups, so its
        width is a multiple of this size. Groups absent are sliced channel by channel."""
        mods = dict(model.named_modules())
        out: dict[str, int] = {}
        for name, (g_out, g_in) in self.channel_groups(model).items():
            m = mods[name]
            if isinstance(m, nn.Conv2d) and m.groups > 1 and not _depthwise(m):
                for g in (g_out, g_in):
                    if g is not None:
                        out[g] = m.in_channels // m.groups
        return out

    def linked_groups(self, model: nn.Module) -> list[tuple[str, str]]:
        """(input group, output group) of every grouped conv: both keep the same conv groups."""
        mods = dict(model.named_modules())
        return [(g_in, g_out) for name, (g_out, g_in) in self.channel_groups(model).items()
                if isinstance(mods[name], nn.Conv2d) and mods[name].groups > 1 and not _depthwise(mods[name])
                and g_in is not None and g_out is not None]

    def keep_cfg_of(self, model: nn.Module) -> dict:
        """The keep_cfg that describes ``model`` (blocks present, planes and mid widths)."""
        cfg = empty_keep_cfg()
        for stage, names in self.blocks_by_stage(model).items():
            cfg["blocks"][stage] = [self.block_index(n) for n in names]
        for g, w in self.group_widths(model).items():
            if g.kind in (GroupKind.PLANES, GroupKind.MID):
                cfg[g.keep_cfg_kind][g.owner] = w
        return cfg

    def validate_keep_cfg(self, keep_cfg: dict, num_classes: int) -> dict:
        """Normalise and check a keep_cfg against the full architecture; UserError if invalid."""
        cfg = normalize_keep_cfg(keep_cfg)
        if num_classes not in self._full:  # the full structure, built once: validation is then cheap
            full = self.base_model(num_classes)
            self._full[num_classes] = (full, self.blocks_by_stage(full), self.group_widths(full),
                                       self.conv_group_size(full))
        full, by_stage, widths, quantum = self._full[num_classes]
        for stage, idxs in cfg["blocks"].items():
            if stage not in by_stage:
                raise UserError(f"keep_cfg names stage {stage!r}, which {self.arch} does not have "
                                f"(stages: {', '.join(by_stage)})")
            valid = [self.block_index(n) for n in by_stage[stage]]
            bad = [i for i in idxs if i not in valid]
            if bad:
                raise UserError(f"keep_cfg names missing block(s) {[self.block_name(stage, i) for i in bad]} "
                                f"in {self.arch}; {stage} has indices {valid}")
            if not idxs:
                raise UserError(f"keep_cfg empties stage {stage!r}; every stage must keep at least one block")
            for n in by_stage[stage]:
                if self.is_protected(full, n) and self.block_index(n) not in idxs:
                    raise UserError(f"keep_cfg removes protected block {n}; protected blocks of {self.arch}: "
                                    f"{', '.join(self.protected_blocks(full))}")
        for kind in ("planes", "mid"):
            for owner, w in cfg[kind].items():
                g = Group(GroupKind(kind), owner)
                if g not in widths:
                    raise UserError(f"keep_cfg {kind} names {owner!r}, which is not a {kind} group of {self.arch}")
                if not 1 <= w <= widths[g]:
                    raise UserError(f"keep_cfg {kind}[{owner!r}]={w} must be in [1, {widths[g]}]")
                if w % quantum.get(g, 1):
                    raise UserError(f"keep_cfg {kind}[{owner!r}]={w} must be a multiple of {quantum[g]} (its grouped "
                                    f"conv has {quantum[g]} channels per group, sliced in whole groups)")
                if kind == "mid" and not self._block_kept(owner, cfg):
                    raise UserError(f"keep_cfg sets mid width of {owner}, which the keep_cfg removes")
        return cfg

    def _block_kept(self, block: str, cfg: dict) -> bool:
        stage = self.stage_of(block)
        return stage not in cfg["blocks"] or self.block_index(block) in cfg["blocks"][stage]

    def rebuild(self, keep_cfg: dict | None, num_classes: int) -> nn.Module:
        """A freshly initialised model with exactly the structure keep_cfg describes."""
        cfg = normalize_keep_cfg(keep_cfg)
        model = self.base_model(num_classes)
        if cfg["blocks"]:
            self.drop_blocks(model, cfg["blocks"])
        widths = dict(self.group_widths(model))
        for kind in ("planes", "mid"):
            for owner, w in cfg[kind].items():
                for g in ((planes_group(owner),) if kind == "planes" else mid_groups(owner)):
                    if g in widths:
                        widths[g] = w
        _resize(model, self.channel_groups(model), widths)
        return model

    def slice(self, model: nn.Module, keep_idx: dict[str, torch.Tensor], num_classes: int) -> nn.Module:
        """A new model keeping, for each group in keep_idx, the given channel indices.

        Weights are copied from ``model``; groups absent from keep_idx keep every channel.
        """
        groups = self.channel_groups(model)
        widths = self.group_widths(model)
        cfg = self.keep_cfg_of(model)
        typed = {g: g for g in widths}  # a name's typed group (keep_idx keys may be names built from a keep_cfg)
        for name, idx in keep_idx.items():
            g = typed.get(name)
            if g is None or g.keep_cfg_kind is None:
                raise ValueError(f"unknown or unsliceable channel group {name}")
            cfg[g.keep_cfg_kind][g.owner] = int(len(idx))
        new = self.rebuild(cfg, num_classes)
        idx = {g: torch.as_tensor(i, dtype=torch.long).sort().values for g, i in keep_idx.items()}
        new_sd = OrderedDict()
        for key, t in model.state_dict().items():
            mod, _, pname = key.rpartition(".")
            if mod in groups and t.dim() > 0:
                g_out, g_in = groups[mod]
                if g_out in idx:
                    t = t.index_select(0, idx[g_out].to(t.device))
                # depthwise weights are [C, 1, k, k]: dim 1 only carries the group when full width
                if t.dim() > 1 and g_in in idx and t.shape[1] == widths[g_in]:
                    t = t.index_select(1, idx[g_in].to(t.device))
            new_sd[key] = t.clone()
        new.load_state_dict(new_sd, strict=True)
        return new.to(next(model.parameters()).device)


def _depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _resize(model: nn.Module, groups: dict, widths: dict[str, int]) -> None:
    """Replace each grouped module by a freshly initialised one of the target widths."""
    for name, (g_out, g_in) in groups.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        m = getattr(parent, child)
        if isinstance(m, nn.Conv2d):
            out_c = widths[g_out] if g_out else m.out_channels
            depthwise = _depthwise(m)
            in_c = out_c if depthwise else (widths[g_in] if g_in else m.in_channels)
            per_group = m.in_channels // m.groups  # a grouped conv keeps its group size, not its group count
            if (out_c, in_c) == (m.out_channels, m.in_channels):
                continue
            new = nn.Conv2d(in_c, out_c, m.kernel_size, m.stride, m.padding, m.dilation,
                            groups=out_c if depthwise else (in_c // per_group if m.groups > 1 else 1),
                            bias=m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            w = widths[g_out]
            if w == m.num_features:
                continue
            new = nn.BatchNorm2d(w, eps=m.eps, momentum=m.momentum)
        elif isinstance(m, nn.Linear):
            in_f = widths[g_in] if g_in else m.in_features
            if in_f == m.in_features:
                continue
            new = nn.Linear(in_f, m.out_features, bias=m.bias is not None)
        else:  # pragma: no cover - adapters only tag these three types
            raise TypeError(f"cannot resize {type(m).__name__} at {name}")
        setattr(parent, child, new)
