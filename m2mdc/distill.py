"""Staged knowledge-distillation repair of a compressed student (M2M-DC).

    L = CE(f_s, y) + alpha_t (1 - cos(f_s, f_t)) + beta_t (1 - cos(phi_s, phi_t))
        [+ kl_weight * tau^2 * KL(softmax(f_t / tau) || softmax(f_s / tau))]

f are logits, phi the penultimate pooled features (the input of the adapter's head Linear).
alpha_t and beta_t ramp linearly from 0 in epoch 1 (pure CE: repair the surgery first) to
their targets in epoch T, so the alignment terms only pull once the student is stable again.

The KD augmentation is horizontal flip only, so the frozen teacher's outputs take exactly two
values per training image: ``TeacherOutputs`` computes them once and every step looks them up,
so a KD epoch costs about what a plain CE epoch of the student costs (no teacher forward pass).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import IMAGENET_MEAN, IMAGENET_STD, Batch, Loader, Split
from .errors import UserError
from .io import save_tensors
from .settings import check_settings, setting
from .models.base import Adapter
from .train import EpochLog, evaluate, require_finite

ROW_KEYS = ("epoch", "alpha", "beta", "ce", "logit_align", "feature_align", "kl", "loss", "val_top1", "seconds")
EPS = 1e-8  # as F.cosine_similarity


@dataclass(frozen=True)
class KDConfig:
    """Everything about the repair that changes the resulting student: the kd step's settings and
    the only place KD defaults are written (the paper's: T=5, alpha*=beta*=0.1, Adam 1e-4, clip 1.0)."""

    epochs: int = setting(5, "epochs T of the repair", lo=1, integer=True)
    alpha: float = setting(0.1, "target weight alpha* of the logit alignment 1 - cos(f_s, f_t)", lo=0, hi_open=True,
                           hi=math.inf)
    beta: float = setting(0.1, "target weight beta* of the feature alignment 1 - cos(phi_s, phi_t)", lo=0,
                          hi=math.inf, hi_open=True)
    lr: float = setting(1e-4, "Adam learning rate", lo=0, lo_open=True, hi=math.inf, hi_open=True)
    clip: float | None = setting(1.0, "max gradient norm (None or 0: no clipping)", lo=0, hi=math.inf, nullable=True)
    batch_size: int = setting(128, "batch size", lo=1, integer=True)
    kl_weight: float = setting(0.0, "weight of Hinton's KL term (0: the paper's loss)", lo=0, hi=math.inf,
                               hi_open=True)
    temperature: float = setting(4.0, "temperature of the KL term", lo=0, lo_open=True, hi=math.inf, hi_open=True)
    crop: bool = setting(False, "random crop on top of flip (forces the teacher to run live)", choices=(False, True))
    seed: int = setting(0, "seed of batch order and augmentation", integer=True)
    steps_per_epoch: int | None = setting(None, "batches per epoch (None: full passes; N: N random batches, quick "
                                          "searches)", lo=1, integer=True, nullable=True)

    def __post_init__(self) -> None:
        check_settings(self)

    def ramp(self, epoch: int) -> tuple[float, float]:
        """(alpha_t, beta_t) for 1-based ``epoch``: 0 in epoch 1, the targets in epoch T."""
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f"epoch {epoch} is outside 1..{self.epochs}")
        frac = 0.0 if self.epochs == 1 else (epoch - 1) / (self.epochs - 1)
        return self.alpha * frac, self.beta * frac


class FeatureTap:
    """Keeps the latest input of the head Linear (phi) without architecture-specific code.

    Where the head follows a Dropout (MobileNetV2), a student in train mode is tapped after
    it: the features its head actually sees.
    """

    def __init__(self, model: nn.Module, head_name: str):
        self.value: torch.Tensor | None = None
        self._handle = model.get_submodule(head_name).register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def close(self) -> None:
        self._handle.remove()
        self.value = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def head_width(model: nn.Module, adapter: Adapter) -> int:
    """Width of phi, read off the head Linear."""
    return model.get_submodule(adapter.head_name).in_features


def split_fingerprint(split: Split, resolution: int) -> str:
    """Identifies the images a cache was computed on, so a stale cache file is never reused."""
    norm = "" if (split.mean, split.std) == (IMAGENET_MEAN, IMAGENET_STD) else f"{split.mean}|{split.std}|"
    h = hashlib.sha256(f"{tuple(split.images.shape)}|{resolution}|{norm}".encode())
    h.update(split.labels.contiguous().numpy().tobytes())
    h.update(split.images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TeacherOutputs:
    """The frozen teacher's logits and phi for every training image, unflipped and flipped.

    ``logits[f, i]`` / ``features[f, i]`` hold the outputs for image ``i`` of the split with
    flip state ``f`` (0 or 1), so a batch's targets are one gather by (index, flipped).
    """

    def __init__(self, logits: torch.Tensor, features: torch.Tensor, fingerprint: str):
        if logits.dim() != 3 or features.dim() != 3 or logits.shape[:2] != features.shape[:2] or logits.shape[0] != 2:
            raise ValueError(f"teacher outputs must be [2, N, C] and [2, N, D]; got {tuple(logits.shape)} "
                             f"and {tuple(features.shape)}")
        self.logits, self.features, self.fingerprint = logits, features, fingerprint

    def __len__(self) -> int:
        return self.logits.shape[1]

    @classmethod
    @torch.no_grad()
    def compute(cls, teacher: nn.Module, adapter: Adapter, split: Split, device: torch.device,
                resolution: int = 32, batch_size: int = 256) -> "TeacherOutputs":
        """Run ``teacher`` (eval mode) once over ``split`` in both flip states."""
        was = teacher.training
        teacher.eval()
        loader = Loader(split, batch_size, device, resolution=resolution)
        logits, feats = [], []
        with FeatureTap(teacher, adapter.head_name) as tap:
            for b in loader:
                # Normalisation is per channel, so mirroring the loader's output equals what
                # the loader yields for a flipped sample.
                out = teacher(torch.cat([b.x, b.x.flip(3)]))
                logits.append(out.float().view(2, len(b.y), -1))
                feats.append(tap.value.float().flatten(1).view(2, len(b.y), -1))
        teacher.train(was)
        return cls(torch.cat(logits, 1), torch.cat(feats, 1), split_fingerprint(split, resolution))

    def lookup(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher logits, teacher phi) for ``batch``: what running the teacher on it would give."""
        rows = torch.add(batch.index, batch.flipped, alpha=len(self))
        return (self.logits.flatten(0, 1).index_select(0, rows),
                self.features.flatten(0, 1).index_select(0, rows))

    def to(self, device: torch.device) -> "TeacherOutputs":
        return TeacherOutputs(self.logits.to(device), self.features.to(device), self.fingerprint)

    def check_matches(self, split: Split, resolution: int) -> None:
        fp = split_fingerprint(split, resolution)
        if fp != self.fingerprint:
            raise UserError(f"cached teacher outputs (fingerprint {self.fingerprint}) were computed on different "
                            f"training images or resolution than this run (fingerprint {fp}); recompute them")

    def save(self, path: str | os.PathLike) -> None:
        """Written atomically: parallel trials may load the same file while it is written."""
        save_tensors({"logits": self.logits.cpu(), "features": self.features.cpu(), "fingerprint": self.fingerprint},
                     Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device) -> "TeacherOutputs":
        try:
            d = torch.load(path, map_location=device, weights_only=True)
            return cls(d["logits"], d["features"], d["fingerprint"])
        except FileNotFoundError:
            raise UserError(f"teacher outputs file {path} does not exist") from None
        except Exception as e:
            raise UserError(f"teacher outputs file {path} is corrupt or not a TeacherOutputs file "
                            f"({type(e).__name__}); delete it to recompute") from None


def teacher_rows(t_logits: torch.Tensor, t_phi: torch.Tensor, temperature: float) -> torch.Tensor:
    """Everything a KD step needs from the teacher, one row per sample:
    [f_t / |f_t|, log softmax(f_t / tau), phi_t / |phi_t|].

    Derived once per run from the cache, so a step does one gather and no teacher-side maths.
    """
    return torch.cat([F.normalize(t_logits, dim=1, eps=EPS), F.log_softmax(t_logits / temperature, 1),
                      F.normalize(t_phi.flatten(1), dim=1, eps=EPS)], 1)


class _KDLoss(torch.autograd.Function):
    """The KD loss with a hand-derived backward, in a few dozen whole-batch ops.

    A small CNN's step on a GPU is bound by kernel launches, so the many tiny ops of autograd
    through the textbook formula showed: on an H100 they added ~30% to a 6 ms resnet18-student
    step, this ~10%. tests/test_distill.py checks values and gradients against the formula.
    """

    @staticmethod
    def forward(ctx, logits, phi, y, rows, alpha, beta, kl_weight, temperature):
        n_cls = logits.shape[1]
        t_hat, t_logprob, phi_t_hat = rows[:, :n_cls], rows[:, n_cls:2 * n_cls], rows[:, 2 * n_cls:]
        logp = F.log_softmax(logits, 1)
        ce = F.nll_loss(logp, y)
        s_norm = torch.linalg.vector_norm(logits, dim=1, keepdim=True).clamp_min_(EPS)
        s_hat = logits / s_norm
        p_norm = torch.linalg.vector_norm(phi, dim=1, keepdim=True).clamp_min_(EPS)
        p_hat = phi / p_norm
        cos_s = torch.linalg.vecdot(s_hat, t_hat).unsqueeze_(1)
        cos_p = torch.linalg.vecdot(p_hat, phi_t_hat).unsqueeze_(1)
        logq = F.log_softmax(logits / temperature, 1)
        t_prob = t_logprob.exp()
        kl_rows = torch.linalg.vecdot(t_prob, t_logprob - logq).unsqueeze_(1)
        means = torch.cat([cos_s, cos_p, kl_rows], 1).mean(0)
        terms = torch.cat([ce.view(1), 1 - means[:2], means[2:]])
        loss = (ce.add(terms[1], alpha=alpha).add_(terms[2], alpha=beta)
                .add_(terms[3], alpha=kl_weight * temperature ** 2))
        ctx.save_for_backward(logp, y, s_hat, s_norm, cos_s, t_hat, p_hat, p_norm, cos_p, phi_t_hat, logq, t_prob)
        ctx.weights = (alpha, beta, kl_weight, temperature)
        ctx.mark_non_differentiable(terms)
        return loss, terms

    @staticmethod
    def backward(ctx, grad_loss, _):
        logp, y, s_hat, s_norm, cos_s, t_hat, p_hat, p_norm, cos_p, phi_t_hat, logq, t_prob = ctx.saved_tensors
        alpha, beta, kl_weight, temperature = ctx.weights
        scale = grad_loss / len(y)
        # CE: softmax - onehot; 1 - cos(x, t): (cos * x_hat - t_hat) / |x|; tau^2 KL: tau (q - p_t)
        g_logits = logp.exp().scatter_add_(1, y.unsqueeze(1), logp.new_full((1, 1), -1.0).expand(len(y), 1))
        g_logits.addcmul_(torch.addcmul(t_hat, cos_s, s_hat, value=-1), alpha / s_norm, value=-1)
        if kl_weight:
            g_logits.add_(logq.exp().sub_(t_prob), alpha=kl_weight * temperature)
        g_phi = torch.addcmul(phi_t_hat, cos_p, p_hat, value=-1).mul_(-beta / p_norm)
        return g_logits.mul_(scale), g_phi.mul_(scale), None, None, None, None, None, None


def kd_loss(logits: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor,
            t_phi: torch.Tensor, alpha: float, beta: float, kl_weight: float = 0.0,
            temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, detached [ce, logit_align, feature_align, kl]) for one batch; the module docstring's L.

    The terms come back as one tensor so an epoch can sum them on the device and sync once.
    """
    return _KDLoss.apply(logits, phi.flatten(1), y, teacher_rows(t_logits, t_phi, temperature),
                         alpha, beta, kl_weight, temperature)


def train_epoch_kd(student: nn.Module, tap: FeatureTap, loader: Loader, opt: torch.optim.Optimizer,
                   targets: Callable[[Batch], torch.Tensor], alpha: float, beta: float, cfg: KDConfig) -> dict:
    """One KD epoch: batch means of each loss term and wall time, with one host sync at the end.

    ``targets(batch)`` gives the batch's ``teacher_rows``.
    """
    student.train()
    t0 = time.perf_counter()
    sums = torch.zeros(4, device=loader.device)
    steps = 0
    for b in loader:
        logits = student(b.x)
        loss, terms = _KDLoss.apply(logits, tap.value.flatten(1), b.y, targets(b), alpha, beta, cfg.kl_weight,
                                    cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            nn.utils.clip_grad_norm_(student.parameters(), cfg.clip)
        opt.step()
        sums += terms
        steps += 1
    ce, logit_align, feature_align, kl = (sums / max(steps, 1)).tolist()
    # The weights are fixed within an epoch, so the mean loss follows from the mean terms.
    row = {"ce": ce, "logit_align": logit_align, "feature_align": feature_align, "kl": kl,
           "loss": ce + alpha * logit_align + beta * feature_align + cfg.kl_weight * cfg.temperature ** 2 * kl}
    require_finite(row, "KD loss")
    row["seconds"] = time.perf_counter() - t0
    return row


def cached_targets(outputs: TeacherOutputs, temperature: float,
                   feature_index: torch.Tensor | None = None) -> Callable[[Batch], torch.Tensor]:
    """``teacher_rows`` for every (image, flip state), derived once; a step costs one gather."""
    feats = outputs.features if feature_index is None else outputs.features.index_select(2, feature_index)
    table = teacher_rows(outputs.logits.flatten(0, 1), feats.flatten(0, 1), temperature)
    n = len(outputs)
    return lambda b: table.index_select(0, torch.add(b.index, b.flipped, alpha=n))


def live_targets(teacher: nn.Module, tap: FeatureTap, temperature: float,
                 feature_index: torch.Tensor | None = None) -> Callable[[Batch], torch.Tensor]:
    """The teacher run on every batch: needed when random crops make its outputs uncacheable."""

    @torch.no_grad()
    def targets(b: Batch) -> torch.Tensor:
        logits = teacher(b.x)
        phi = tap.value.flatten(1)
        return teacher_rows(logits, phi if feature_index is None else phi.index_select(1, feature_index), temperature)

    return targets


def distill(student: nn.Module, teacher: nn.Module, adapter: Adapter, train_split: Split, val_split: Split,
            cfg: KDConfig, device: torch.device, teacher_outputs: TeacherOutputs | None = None,
            feature_index: torch.Tensor | None = None, on_epoch: Callable[[dict], bool | None] | None = None,
            log_prefix: str = "kd", quiet: bool = False, resolution: int = 32) -> list[dict]:
    """Repair ``student`` (in place, left in eval mode) by staged KD from the frozen ``teacher``.

    ``feature_index``: the teacher phi channels the student's phi corresponds to (after the last
    stage was sliced); default all. ``teacher_outputs``: a precomputed cache for ``train_split``;
    computed here when absent, ignored when ``cfg.crop`` forces the teacher to run live.
    ``on_epoch(row)`` is called after every epoch; returning True stops the run.
    Returns one row per epoch with the keys in ``ROW_KEYS``.
    """
    t_width, s_width = head_width(teacher, adapter), head_width(student, adapter)
    if feature_index is None:
        if s_width != t_width:
            raise ValueError(f"student phi has {s_width} channels but the teacher's has {t_width}; pass "
                             f"feature_index with the teacher channels the student kept")
    else:
        feature_index = torch.as_tensor(feature_index, dtype=torch.long).to(device)
        if feature_index.dim() != 1 or len(feature_index) != s_width:
            raise ValueError(f"feature_index must list {s_width} teacher channels (the student's phi width); "
                             f"got shape {tuple(feature_index.shape)}")
        if len(feature_index) and not 0 <= int(feature_index.min()) <= int(feature_index.max()) < t_width:
            raise ValueError(f"feature_index must lie in [0, {t_width}) (the teacher's phi width)")

    torch.manual_seed(cfg.seed)
    loader = Loader(train_split, cfg.batch_size, device, shuffle=True, flip=True, crop=cfg.crop,
                    resolution=resolution, seed=cfg.seed, drop_last=True, max_batches=cfg.steps_per_epoch)
    if len(loader) == 0:
        raise UserError(f"the training split has {len(train_split)} images, fewer than one batch of {cfg.batch_size}")
    val_loader = Loader(val_split, 512, device, resolution=resolution)
    teacher.eval()
    teacher_tap = None
    if cfg.crop:
        teacher_tap = FeatureTap(teacher, adapter.head_name)
        targets = live_targets(teacher, teacher_tap, cfg.temperature, feature_index)
    else:
        if teacher_outputs is None:
            teacher_outputs = TeacherOutputs.compute(teacher, adapter, train_split, device, resolution)
        else:
            teacher_outputs.check_matches(train_split, resolution)
            teacher_outputs = teacher_outputs.to(device)
        targets = cached_targets(teacher_outputs, cfg.temperature, feature_index)

    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    log = EpochLog(log_prefix, quiet)
    try:
        with FeatureTap(student, adapter.head_name) as tap:
            for epoch in range(1, cfg.epochs + 1):
                alpha, beta = cfg.ramp(epoch)
                loader.set_epoch(epoch)
                stats = train_epoch_kd(student, tap, loader, opt, targets, alpha, beta, cfg)
                row = {"epoch": epoch, "alpha": alpha, "beta": beta, **stats,
                       "val_top1": evaluate(student, val_loader)}
                row = {k: row[k] for k in ROW_KEYS}
                log(**row)
                if on_epoch is not None and on_epoch(row):
                    break
    finally:
        if teacher_tap is not None:
            teacher_tap.close()
        student.eval()
    return log.rows
