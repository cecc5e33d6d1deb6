"""train: plain cross-entropy fine-tuning (Adam), e.g. PQD's repair after pruning or QAT without KD."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data import Loader
from ..distill import KDConfig
from ..settings import check_settings, setting
from ..train import EpochLog, evaluate, train_epoch_ce
from .registry import StepRun, StepSpec, register

_KD = KDConfig()  # the optimiser defaults are shared with KD


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = setting(1, "epochs", lo=1, hi=10 ** 6, integer=True)
    lr: float = setting(_KD.lr, "Adam learning rate", lo=0, lo_open=True, hi=10)
    clip: float | None = setting(_KD.clip, "max gradient norm (None or 0: no clipping)", lo=0, hi=math.inf,
                                 nullable=True)
    batch_size: int = setting(_KD.batch_size, "batch size", lo=1, integer=True)
    seed: int = setting(0, "seed of batch order and augmentation", integer=True)
    steps_per_epoch: int | None = setting(None, "batches per epoch (None: full passes)", lo=1, integer=True,
                                          nullable=True)

    def __post_init__(self):
        check_settings(self)


def run(r: StepRun, s: TrainSettings) -> None:
    ctx, state = r.ctx, r.state
    loader = Loader(ctx.ds.train, s.batch_size, ctx.device, shuffle=True, flip=True, resolution=ctx.ds.resolution,
                    seed=s.seed, drop_last=True, max_batches=s.steps_per_epoch)
    val_loader = Loader(ctx.ds.val, 512, ctx.device, resolution=ctx.ds.resolution)
    opt = torch.optim.Adam([p for p in state.model.parameters() if p.requires_grad], lr=s.lr)
    log = EpochLog(r.log_prefix, r.quiet)
    for epoch in range(1, s.epochs + 1):
        loader.set_epoch(epoch)
        row = {"epoch": epoch, **train_epoch_ce(state.model, loader, opt, clip=s.clip),
               "val_top1": evaluate(state.model, val_loader)}
        log(**row)
        if r.on_epoch is not None and r.on_epoch(row):
            break
    state.model.eval()


register(StepSpec("train", TrainSettings, run, "plain cross-entropy fine-tuning (Adam)", trains=True))
