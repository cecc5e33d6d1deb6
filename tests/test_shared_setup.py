"""The search's shared inputs through Ray's object store (search/trainable.py SharedSetup).

A trial must see exactly the driver's datasets, teacher outputs and teacher; the bulk tensors must
arrive without a copy (that is why SharedSetup exists: unpickling ~450 MB of CIFAR-100 tensors at
every trial start was a measured part of the search overhead), and a worker fetches them once.
"""
import pytest
import ray
import torch

from m2mdc.distill import TeacherOutputs
from m2mdc.models import get_adapter
from m2mdc.context import Context
from search.trainable import BULK_BYTES, SearchSetup, SharedSetup


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(digits):
    torch.manual_seed(0)
    teacher = get_adapter("resnet18").base_model(digits.num_classes).eval()
    n = len(digits.train)
    outputs = TeacherOutputs(torch.randn(2, n, digits.num_classes), torch.randn(2, n, 512), "fp")
    ctx = Context("resnet18", digits, teacher, torch.device("cpu"), teacher_outputs=outputs)
    return SearchSetup(ctx, 0.02, "fractions", {"epochs": 1, "steps_per_epoch": 2})


def bulk_tensors(s: SearchSetup) -> dict[str, torch.Tensor]:
    ds, to = s.ctx.ds, s.ctx.teacher_outputs
    return {"train.images": ds.train.images, "val.images": ds.val.images, "test.images": ds.test.images,
            "logits": to.logits, "features": to.features}


def test_a_trial_process_sees_the_drivers_setup_without_copies(local_ray, setup):
    every = bulk_tensors(setup)
    big = {k: t for k, t in every.items() if t.numel() * t.element_size() >= BULK_BYTES}
    assert {"train.images", "features"} <= big.keys(), "the fixture must exercise the bulk path"
    shared = SharedSetup(setup)

    @ray.remote
    def in_worker(shared: SharedSetup, bulk_tensors):  # helpers passed in: the worker cannot import tests/
        first, again = shared.get(), shared.get()
        raw_a, raw_b = ray.get(shared.ref), ray.get(shared.ref)  # two reads of the object itself
        return {"cached": first is again,
                "bulk": {k: v.clone() for k, v in bulk_tensors(first).items()},
                "small": {"labels": first.ctx.ds.train.labels.clone(),
                          "state": {k: v.clone() for k, v in first.ctx.teacher.state_dict().items()}},
                "same_memory": {k: bulk_tensors(raw_a)[k].data_ptr() == bulk_tensors(raw_b)[k].data_ptr()
                                for k in big}}

    got = ray.get(in_worker.remote(shared, bulk_tensors))
    assert got["cached"]
    for k, t in every.items():
        assert torch.equal(got["bulk"][k], t), k
    assert torch.equal(got["small"]["labels"], setup.ctx.ds.train.labels)
    want = setup.ctx.teacher.state_dict()
    assert got["small"]["state"].keys() == want.keys()
    assert all(torch.equal(got["small"]["state"][k], want[k]) for k in want)
    assert all(got["same_memory"].values()), got["same_memory"]  # mapped from the object store, not unpickled


def test_the_zero_copy_serializer_is_scoped_to_the_setup(local_ray, setup):
    SharedSetup(setup)
    t = torch.arange(BULK_BYTES, dtype=torch.uint8)  # bulk-sized, put after the setup
    ref = ray.put(t)
    a, b = ray.get(ref), ray.get(ref)
    assert torch.equal(a, t) and a.data_ptr() != b.data_ptr()  # torch's own pickling: private, writable copies
