import math
import warnings

import pytest
import torch
from torch.distributions import Independent, Normal

import infcomp as ic
from infcomp.nn import Conv1dEmbedding, ConvEmbedding, MLPEmbedding


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (MLPEmbedding, ()),
        (MLPEmbedding, (3, 4)),
        (ConvEmbedding, (12, 10)),
        (ConvEmbedding, (3, 16, 16)),
        (Conv1dEmbedding, (20,)),
        (Conv1dEmbedding, (2, 30)),
    ],
)
def test_embeddings_map_a_batch_to_features_and_pass_gradients(module, shape):
    embedding = module(shape, 24)
    values = torch.randn((5, *shape))
    features = embedding(values)
    assert features.shape == (5, 24)
    features.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in embedding.parameters())


def test_convolutional_embeddings_reject_other_shapes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ConvEmbedding((5,), 8)
    with pytest.raises(ValueError, match=r"\(T,\)"):
        Conv1dEmbedding((2, 3, 4), 8)


PATTERN = torch.linspace(-1, 1, 64).reshape(8, 8)


def brightness():
    z = ic.sample("z", Normal(0.0, 1.0))
    ic.observe("image", Independent(Normal(z[..., None, None] * PATTERN, 0.5), 2))


def test_a_user_supplied_cnn_embeds_image_observations():
    torch.manual_seed(0)
    csis = ic.CSIS(
        brightness, observation_embeddings={"image": ConvEmbedding((8, 8), 32)}, learning_rate=3e-3
    )
    assert isinstance(csis.network.observation_embeddings["o0"], ConvEmbedding)
    csis.train(300, batch_size=64, progress=False)
    truth = torch.tensor(1.3)
    data = {"image": truth * PATTERN + 0.5 * torch.randn(8, 8)}
    post = csis.run(data, num_particles=2000)
    prior = ic.importance(brightness, data, num_particles=2000)
    # The 64 pixels pin z to about ±0.5 / √(Σ pattern²) ≈ 0.08: the prior wastes most draws.
    assert float(post.ess) > 4 * float(prior.ess)
    # Exact posterior: precision 1 + Σ p² / 0.25, mean (Σ p y / 0.25) / precision.
    precision = 1 + float((PATTERN**2).sum()) / 0.25
    exact_mean = float((PATTERN * data["image"]).sum()) / 0.25 / precision
    error = 1 / math.sqrt(precision) / math.sqrt(float(post.ess))
    assert abs(float(post.mean("z")) - exact_mean) < 4 * error


def test_observe_sites_unknown_to_the_network_are_ignored_at_inference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csis = ic.CSIS(brightness)
    with pytest.raises(ic.ModelError, match="none of the observations"):
        csis.network.context({"other": torch.zeros(3)}, 0)


def test_mlp_embedding_standardizes_with_fitted_moments():
    torch.manual_seed(0)
    embedding = MLPEmbedding((2,), 8)
    values = torch.stack([10 + 3 * torch.randn(500), torch.full((500,), 4.0)], -1)
    embedding.fit(values)
    assert torch.allclose(embedding.loc, values.mean(0))
    # A constant element keeps scale 1 (no division by zero).
    assert torch.allclose(embedding.scale, torch.stack([values[:, 0].std(), torch.tensor(1.0)]))
    # The embedding of y equals that of the unfitted module on the z-scores within 5 sd.
    fresh = MLPEmbedding((2,), 8)
    fresh.load_state_dict({**embedding.state_dict(), "loc": torch.zeros(2), "scale": torch.ones(2)})
    inside = values[:5]
    z = (inside - embedding.loc) / embedding.scale
    assert bool((z.abs() < 5).all())
    assert torch.allclose(embedding(inside), fresh(z), atol=1e-6)


def test_the_standardization_ignores_failed_simulations():
    embed = ic.nn.MLPEmbedding((2,))
    values = torch.tensor([[1.0, 2.0], [3.0, 6.0], [float("nan"), 0.0], [5.0, float("inf")]])
    embed.fit(values)
    assert torch.equal(embed.loc, torch.tensor([2.0, 4.0]))
    assert torch.allclose(embed.scale, torch.tensor([2.0, 8.0]).sqrt())


@pytest.mark.parametrize(
    ("method", "image", "match"),
    [
        (
            "run",
            torch.zeros(8, 7),
            r"^observe site 'image': .* \(8, 7\), but .* compiled on .* \(8, 8\)",
        ),
        ("run", torch.zeros(2, 8, 8), r"^observe site 'image': .* \(2, 8, 8\), but .* \(8, 8\)"),
        (
            "run_batch",
            torch.zeros(3, 8, 7),
            r"^data set 0: observe site 'image': .* \(8, 7\), but .* \(8, 8\)",
        ),
        ("smc", torch.zeros(64), r"^observe site 'image': .* \(64,\), but .* \(8, 8\)"),
    ],
)
def test_observations_of_another_shape_than_compiled_name_the_site(method, image, match):
    # Not an error "in the program": a reshape inside the network used to raise one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csis = ic.CSIS(brightness)
    runs = {
        "run": lambda data: csis.run(data, num_particles=10),
        "run_batch": lambda data: csis.run_batch(data, num_particles=10),
        "smc": lambda data: ic.smc(brightness, data, num_particles=10, guide=csis.guide),
    }
    with pytest.raises(ic.ModelError, match=match):
        runs[method]({"image": image})
