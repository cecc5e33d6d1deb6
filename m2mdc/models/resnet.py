"""torchvision ResNets: BasicBlock (resnet18/34) and Bottleneck (resnet50/101/152, the wide ResNets,
and the ResNeXts, whose grouped 3x3 convs are sliced in whole conv groups)."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .base import Adapter, Group, GroupKind, mid_groups, planes_group
from .registry import Family, register_family

STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetAdapter(Adapter):
    family = "resnet"
    head_name = "fc"

    def apply_cifar_stem(self, model):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()

    def blocks(self, model):
        out = OrderedDict()
        for stage in STAGES:
            for idx, block in getattr(model, stage)._modules.items():
                out[f"{stage}.{idx}"] = block
        return out

    def stage_of(self, block_name):
        return block_name.split(".")[0]

    def block_index(self, block_name):
        return int(block_name.split(".")[1])

    def block_name(self, stage, index):
        return f"{stage}.{index}"

    def is_protected(self, model, block_name):
        # Transition blocks (stride / width change, hence a downsample branch) cannot be
        # skipped: the paper protects layer2.0, layer3.0, layer4.0 (and resnet50's layer1.0).
        return model.get_submodule(block_name).downsample is not None

    def drop_blocks(self, model, keep_blocks):
        for stage, idxs in keep_blocks.items():
            layer = getattr(model, stage)
            setattr(model, stage, nn.Sequential(OrderedDict((str(i), layer._modules[str(i)]) for i in idxs)))

    def channel_groups(self, model):
        g = OrderedDict()
        bottleneck = isinstance(next(iter(model.layer1.children())), Bottleneck)
        # A stage whose first block has no downsample adds its input to its output, so its
        # planes are the same channels as its input (resnet18/34 layer1 shares the stem's).
        first = next(iter(model.layer1.children()))
        in_group = planes_group("layer1") if first.downsample is None else Group(GroupKind.UNSLICED, "stem")
        g["conv1"] = (in_group, None)
        g["bn1"] = (in_group, in_group)
        for stage in STAGES:
            planes = planes_group(stage)
            for idx, block in getattr(model, stage)._modules.items():
                name = f"{stage}.{idx}"
                mid, mid2 = mid_groups(name)
                if bottleneck:
                    g[f"{name}.conv1"] = (mid, in_group)
                    g[f"{name}.bn1"] = (mid, mid)
                    g[f"{name}.conv2"] = (mid2, mid)
                    g[f"{name}.bn2"] = (mid2, mid2)
                    g[f"{name}.conv3"] = (planes, mid2)
                    g[f"{name}.bn3"] = (planes, planes)
                else:
                    g[f"{name}.conv1"] = (mid, in_group)
                    g[f"{name}.bn1"] = (mid, mid)
                    g[f"{name}.conv2"] = (planes, mid)
                    g[f"{name}.bn2"] = (planes, planes)
                if block.downsample is not None:
                    g[f"{name}.downsample.0"] = (planes, in_group)
                    g[f"{name}.downsample.1"] = (planes, planes)
                in_group = planes
        g["fc"] = (None, in_group)
        return g

    def check_invariants(self, model):
        for name, block in self.blocks(model).items():
            last = block.conv3 if isinstance(block, Bottleneck) else block.conv2
            if block.downsample is not None:
                ref, what = block.downsample[0].out_channels, "downsample_out_C"
            else:
                ref, what = block.conv1.in_channels, "conv1_in_C"
            if last.out_channels != ref:
                raise ValueError(f"residual invariant broken in {name}: conv_out_C={last.out_channels} != {what}={ref}")


# (block, blocks per stage, conv groups, width per group) -> torchvision's name
_STRUCTURES = {
    ("basic", (2, 2, 2, 2), 1, 64): "resnet18", ("basic", (3, 4, 6, 3), 1, 64): "resnet34",
    ("bottleneck", (3, 4, 6, 3), 1, 64): "resnet50", ("bottleneck", (3, 4, 23, 3), 1, 64): "resnet101",
    ("bottleneck", (3, 8, 36, 3), 1, 64): "resnet152", ("bottleneck", (3, 4, 6, 3), 1, 128): "wide_resnet50_2",
    ("bottleneck", (3, 4, 23, 3), 1, 128): "wide_resnet101_2", ("bottleneck", (3, 4, 6, 3), 32, 4): "resnext50_32x4d",
    ("bottleneck", (3, 4, 23, 3), 32, 8): "resnext101_32x8d", ("bottleneck", (3, 4, 23, 3), 64, 4): "resnext101_64x4d"}


def recognise(model: nn.Module) -> tuple[str, str] | None:
    """A torchvision ResNet / ResNeXt / wide ResNet instance (a subclass too) by its blocks and widths;
    its stem by the first conv (7x7/2 + max pool, or the CIFAR 3x3/1 without)."""
    if not isinstance(model, ResNet):
        return None
    first = model.layer1[0]
    block = "bottleneck" if isinstance(first, Bottleneck) else "basic" if isinstance(first, BasicBlock) else None
    groups = first.conv2.groups if block == "bottleneck" else 1
    width = first.conv1.out_channels // groups if block == "bottleneck" else 64
    arch = _STRUCTURES.get((block, tuple(len(getattr(model, s)) for s in STAGES), groups, width))
    conv = model.conv1
    if conv.kernel_size == (3, 3) and conv.stride == (1, 1) and isinstance(model.maxpool, nn.Identity):
        stem = "cifar"
    elif conv.kernel_size == (7, 7) and conv.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d):
        stem = "torchvision"
    else:
        stem = None
    return (arch, stem) if arch and stem else None


register_family(Family("resnet", ResNetAdapter, (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"), {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2", "resnet101": "ResNet101_Weights.IMAGENET1K_V2",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V2", "wide_resnet50_2": "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights.IMAGENET1K_V2",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights.IMAGENET1K_V2",
    "resnext101_64x4d": "ResNeXt101_64X4D_Weights.IMAGENET1K_V1"}, recognise))
