"""Trials run where the hardware is: with CUDA reported, each trial asks Ray for a GPU by default
(CI has no GPU, so CUDA is reported by a patch here); without, none; driver and trials never disagree."""
from types import SimpleNamespace

import pytest
import torch

from m2mdc.errors import UserError
from search.driver import trial_resources
from search.frontier import gpus_per_trial


def resources(device, requested):
    args = SimpleNamespace(gpus_per_trial=gpus_per_trial(device, requested))
    return trial_resources(SimpleNamespace(cpus=2, args=args))


def test_a_gpu_per_trial_when_cuda_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resources("auto", None) == {"cpu": 2, "gpu": 1.0}
    assert resources("auto", 0.25) == {"cpu": 2, "gpu": 0.25}  # fractions: several trials share a GPU
    assert resources("cpu", None) == {"cpu": 2, "gpu": 0.0}  # the user chose the CPU for everything
    with pytest.raises(UserError, match="trials would train on the CPU"):
        gpus_per_trial("auto", 0)


def test_no_gpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resources("auto", None) == {"cpu": 2, "gpu": 0.0}
    with pytest.raises(UserError, match="the device is the CPU"):
        gpus_per_trial("auto", 1)
