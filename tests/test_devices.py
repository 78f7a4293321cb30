"""Precision and device arguments (checked on the CPU; a CUDA machine runs the same code)."""

import math
import warnings

import pytest
import torch
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
    post = ic.importance(gaussian64, DATA64, num_samples=20_000, device="cpu")
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
    post = csis.run(DATA64, num_samples=1000)
    assert post.values("z").dtype == torch.float64 and float(post.ess) > 500
    batch = csis.run_batch(
        {"x1": torch.zeros(3, dtype=torch.float64), "x2": torch.ones(3, dtype=torch.float64)}, 100
    )
    assert batch.log_evidence.shape == (3,)


def test_data_move_to_the_requested_device():
    from infcomp.handlers import as_data

    moved = as_data({"x": 1.0, "y": torch.zeros(2)}, device="cpu")
    assert all(v.device.type == "cpu" for v in moved.values())
    post = ic.importance(g.gaussian, g.DATA, num_samples=100, device=torch.device("cpu"))
    assert post.num_particles == 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_end_to_end():
    def gaussian_cuda():
        z = ic.sample("z", Normal(torch.tensor(1.0, device="cuda"), math.sqrt(5)))
        ic.observe("x1", Normal(z, math.sqrt(2)))
        ic.observe("x2", Normal(z, math.sqrt(2)))

    post = ic.importance(gaussian_cuda, {"x1": 8.0, "x2": 9.0}, num_samples=100_000, device="cuda")
    assert post.values("z").device.type == "cuda"
    assert abs(float(post.mean("z")) - 7.25) < 0.1
    csis = ic.CSIS(gaussian_cuda, device="cuda")
    csis.train(200, 256, progress=False)
    assert float(csis.run({"x1": 8.0, "x2": 9.0}, 1000).ess) > 300
