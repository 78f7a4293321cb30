"""Precision and device arguments: checked on the CPU and the meta device; CUDA where there is one."""

import contextlib
import math
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples import gaussian as g

pytestmark = pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")


def gaussian64():
    z = ic.sample("z", Normal(torch.tensor(1.0, dtype=torch.float64), math.sqrt(5)))
    ic.observe("x1", Normal(z, math.sqrt(2)))
    ic.observe("x2", Normal(z, math.sqrt(2)))


DATA64 = {
    "x1": torch.tensor(8.0, dtype=torch.float64),
    "x2": torch.tensor(9.0, dtype=torch.float64),
}


def test_a_float64_model_gives_float64_particles():
    post = ic.importance(gaussian64, DATA64, num_particles=20_000, device="cpu")
    assert post.values("z").dtype == torch.float64
    error = float(post.std("z")) / math.sqrt(float(post.ess))
    assert abs(float(post.mean("z")) - 7.25) < 4 * error


def test_a_float64_automatic_network():
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian64, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in csis.network.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csis.train(300, 256, progress=False)
    post = csis.run(DATA64, num_particles=1000)
    assert post.values("z").dtype == torch.float64 and float(post.ess) > 500
    batch = csis.run_batch(
        {"x1": torch.zeros(3, dtype=torch.float64), "x2": torch.ones(3, dtype=torch.float64)}, 100
    )
    assert batch.log_evidence.shape == (3,)


# The meta device holds shapes, dtypes and devices but no values, so a run there cannot
# finish (checking data and weights reads values); it fails with one of these. What a
# test checks is what the program saw before that: the guide runs first and is handed
# the observations, which must already be on the requested device. On the CPU these
# tests fail if the device argument is ignored, which a CPU-to-CPU move never could.
META_FAILURES = (RuntimeError, NotImplementedError, ic.ModelError)


def recording_guide(seen):
    def guide(observations):
        seen.append({name: value.device.type for name, value in observations.items()})
        ic.sample("z", Normal(observations["x1"], 1.0))

    return guide


class RecordingGuide(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen
        self.loc = nn.Parameter(torch.zeros(()))

    def forward(self, observations):
        recording_guide(self.seen)(observations)


def test_importance_moves_the_data_to_the_requested_device():
    seen = []
    data = {"x1": 8.0, "x2": torch.tensor(9.0)}
    with contextlib.suppress(*META_FAILURES):
        ic.importance(g.gaussian, data, 4, guide=recording_guide(seen), device="meta")
    assert seen and all(devices == {"x1": "meta", "x2": "meta"} for devices in seen)
    seen.clear()
    ic.importance(g.gaussian, data, 4, guide=recording_guide(seen))
    assert seen and all(devices == {"x1": "cpu", "x2": "cpu"} for devices in seen)


def test_csis_runs_on_the_requested_device():
    seen = []
    csis = ic.CSIS(g.gaussian, RecordingGuide(seen), device="meta")
    with contextlib.suppress(*META_FAILURES):
        csis.run(g.DATA, 4)
    assert seen and all(devices == {"x1": "meta", "x2": "meta"} for devices in seen)


def test_the_automatic_network_is_built_on_the_requested_device_and_dtype():
    csis = ic.CSIS(g.gaussian, device="meta", dtype=torch.float64)
    parameters = list(csis.network.parameters())
    assert parameters
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in parameters)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_end_to_end():
    def gaussian_cuda():
        z = ic.sample("z", Normal(torch.tensor(1.0, device="cuda"), math.sqrt(5)))
        ic.observe("x1", Normal(z, math.sqrt(2)))
        ic.observe("x2", Normal(z, math.sqrt(2)))

    post = ic.importance(
        gaussian_cuda, {"x1": 8.0, "x2": 9.0}, num_particles=100_000, device="cuda"
    )
    assert post.values("z").device.type == "cuda"
    assert abs(float(post.mean("z")) - 7.25) < 0.1
    csis = ic.CSIS(gaussian_cuda, device="cuda")
    csis.train(200, 256, progress=False)
    assert float(csis.run({"x1": 8.0, "x2": 9.0}, 1000).ess) > 300
