"""torchvision MobileNetV2: blocks are the InvertedResidual modules ``features.1..17``."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2

from .base import Adapter, Group, GroupKind, mid_groups, planes_group
from .registry import Family, register_family

# torchvision's inverted_residual_setting repeat counts n = 1, 2, 3, 4, 3, 3, 1: each repeat
# group is one stage (same output width); block i of a stage is features[start + i].
STAGE_STARTS = OrderedDict([("stage1", 1), ("stage2", 2), ("stage3", 4), ("stage4", 7),
                            ("stage5", 11), ("stage6", 14), ("stage7", 17)])
TAIL = 18


def _stage_of_feature(k: int) -> str:
    stage = None
    for s, start in STAGE_STARTS.items():
        if k >= start:
            stage = s
    return stage


class MobileNetV2Adapter(Adapter):
    family = "mobilenet_v2"
    head_name = "classifier.1"

    def apply_cifar_stem(self, model):
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(3, first.out_channels, kernel_size=3, stride=1, padding=1, bias=False)

    def blocks(self, model):
        return OrderedDict((f"features.{k}", m) for k, m in model.features._modules.items()
                           if 0 < int(k) < TAIL)

    def stage_of(self, block_name):
        return _stage_of_feature(int(block_name.split(".")[1]))

    def block_index(self, block_name):
        k = int(block_name.split(".")[1])
        return k - STAGE_STARTS[_stage_of_feature(k)]

    def block_name(self, stage, index):
        return f"features.{STAGE_STARTS[stage] + index}"

    def is_protected(self, model, block_name):
        # stride != 1 or in != out: no identity shortcut, so the block cannot be skipped.
        return not model.get_submodule(block_name).use_res_connect

    def drop_blocks(self, model, keep_blocks):
        keep = set()
        for k in model.features._modules:
            k = int(k)
            if k == 0 or k == TAIL:
                keep.add(k)
                continue
            stage = _stage_of_feature(k)
            if stage not in keep_blocks or k - STAGE_STARTS[stage] in keep_blocks[stage]:
                keep.add(k)
        model.features = nn.Sequential(OrderedDict((str(k), model.features._modules[str(k)])
                                                   for k in sorted(keep)))

    def channel_groups(self, model):
        g = OrderedDict()
        stem, tail = Group(GroupKind.UNSLICED, "stem"), Group(GroupKind.UNSLICED, "tail")
        g["features.0.0"] = (stem, None)
        g["features.0.1"] = (stem, stem)
        in_group = stem
        for name, block in self.blocks(model).items():
            planes = planes_group(self.stage_of(name))
            layers = list(block.conv._modules.keys())
            if len(layers) == 4:  # expand (1x1) -> depthwise -> project
                mid = mid_groups(name)[0]
                g[f"{name}.conv.0.0"] = (mid, in_group)
                g[f"{name}.conv.0.1"] = (mid, mid)
                g[f"{name}.conv.1.0"] = (mid, mid)
                g[f"{name}.conv.1.1"] = (mid, mid)
                g[f"{name}.conv.2"] = (planes, mid)
                g[f"{name}.conv.3"] = (planes, planes)
            else:  # expand ratio 1: the depthwise conv works on the block input directly
                g[f"{name}.conv.0.0"] = (in_group, in_group)
                g[f"{name}.conv.0.1"] = (in_group, in_group)
                g[f"{name}.conv.1"] = (planes, in_group)
                g[f"{name}.conv.2"] = (planes, planes)
            in_group = planes
        g[f"features.{TAIL}.0"] = (tail, in_group)
        g[f"features.{TAIL}.1"] = (tail, tail)
        g["classifier.1"] = (None, tail)
        return g

    def check_invariants(self, model):
        for name, block in self.blocks(model).items():
            convs = [m for m in block.conv.modules() if isinstance(m, nn.Conv2d)]
            if block.use_res_connect and convs[-1].out_channels != convs[0].in_channels:
                raise ValueError(f"residual invariant broken in {name}: project_out_C={convs[-1].out_channels}"
                                 f" != block_in_C={convs[0].in_channels}")


def recognise(model: nn.Module) -> tuple[str, str] | None:
    """A torchvision MobileNetV2 instance (a subclass too); its stem by the first conv's stride."""
    if not isinstance(model, MobileNetV2) or len(model.features) != TAIL + 1:
        return None
    stride = model.features[0][0].stride
    stem = {(2, 2): "torchvision", (1, 1): "cifar"}.get(stride)
    return ("mobilenet_v2", stem) if stem else None


register_family(Family("mobilenet_v2", MobileNetV2Adapter, ("mobilenet_v2",),
                       {"mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V2"}, recognise))
