import pytest
import torch
from torch.distributions import Bernoulli, Normal, Poisson

import infcomp as ic
from infcomp.examples.gaussian import gaussian


def model_with_fixed_observation():
    z = ic.sample("z", Normal(0.0, 1.0))
    ic.observe("x", Normal(z, 1.0))
    ic.observe("fixed", Normal(z, 1.0), value=5.0)
    return z


def test_trace_records_sites_in_program_order_and_the_return_value():
    trace = ic.trace(gaussian).get_trace()
    assert list(trace) == ["z", "x1", "x2"]
    assert [trace[n].kind for n in trace] == ["sample", "observe", "observe"]
    assert torch.equal(trace.return_value, trace["z"].value)


def test_trace_as_a_context_manager():
    with ic.trace() as tracer:
        gaussian()
    assert list(tracer.trace) == ["z", "x1", "x2"]


def test_condition_sets_observations_by_name_and_keeps_fixed_values():
    with ic.trace() as tracer, ic.condition(data={"x": 1.5}):
        model_with_fixed_observation()
    assert tracer.trace["x"].value == 1.5
    assert tracer.trace["fixed"].value == 5.0


def test_data_overrides_a_fixed_value():
    with ic.trace() as tracer, ic.condition(data={"x": 1.0, "fixed": 2.0}):
        model_with_fixed_observation()
    assert tracer.trace["fixed"].value == 2.0


def test_condition_fixes_a_latent_site_as_an_observation_like_pyro():
    data = {"z": 2.0, "x1": 8.0, "x2": 9.0}
    trace = ic.trace(ic.condition(gaussian, data=data)).get_trace()
    assert trace["z"].kind == "observe" and float(trace["z"].value) == 2.0
    assert trace.names("sample") == []
    expected = sum(
        torch.distributions.Normal(m, s).log_prob(torch.tensor(v))
        for m, s, v in [(1.0, 5**0.5, 2.0), (2.0, 2**0.5, 8.0), (2.0, 2**0.5, 9.0)]
    )
    assert torch.isclose(trace.log_prob_sum(), expected.double())
    # Importance sampling then weighs by p(z, x1, x2): every particle is the same.
    post = ic.importance(gaussian, data, num_particles=10)
    assert torch.allclose(post.log_weights, expected.double())


def test_inference_checks_data_and_names_the_site():
    with pytest.raises(ic.ModelError, match="observe site 'x2' has no observed value"):
        ic.importance(gaussian, {"x1": 1.0}, 10)
    with pytest.raises(ic.ModelError, match=r"'x1': the observed value has shape \(3,\)"):
        ic.importance(gaussian, {"x1": torch.zeros(3), "x2": 1.0}, 10)
    with pytest.raises(ic.ModelError, match=r"data names \['y'\]"):
        ic.importance(gaussian, {"x1": 1.0, "x2": 1.0, "y": 1.0}, 10)


def test_inference_checks_the_support():
    def counts():
        rate = ic.sample("rate", torch.distributions.Gamma(2.0, 1.0))
        ic.observe("k", Poisson(rate))

    with pytest.raises(ic.ModelError, match="observe site 'k'.*outside the support"):
        ic.importance(counts, {"k": 1.5}, 10)
    with pytest.raises(ic.ModelError, match="observe site 'k'.*outside the support"):
        ic.importance(counts, {"k": -1.0}, 10)
    ic.importance(counts, {"k": 3.0}, 10)


def test_boolean_data_become_floats():
    def flip():
        ic.observe("heads", Bernoulli(0.3))

    trace = ic.trace(ic.condition(flip, data={"heads": True})).get_trace()
    assert trace["heads"].value.dtype == torch.get_default_dtype()
    assert torch.isclose(trace.log_prob_sum(), torch.tensor(0.3).log().double())
    post = ic.importance(flip, {"heads": True}, 10)
    assert torch.allclose(post.log_weights, torch.tensor(0.3).log().double())


def test_inference_rejects_data_that_is_not_a_mapping():
    with pytest.raises(ic.ModelError, match="mapping"):
        ic.importance(gaussian, [1.0, 2.0], 10)  # type: ignore[arg-type]


def test_simulate_is_a_deprecated_alias_of_uncondition():
    with pytest.warns(DeprecationWarning, match="uncondition"):
        handler = ic.simulate(gaussian)
    assert isinstance(handler, ic.uncondition)
    trace = ic.trace(handler).get_trace()
    assert trace["x1"].kind == "observe"


def test_uncondition_samples_observations_including_fixed_ones():
    torch.manual_seed(1)
    values = torch.stack(
        [
            ic.trace(ic.uncondition(model_with_fixed_observation)).get_trace()["fixed"].value
            for _ in range(200)
        ]
    )
    # Under the joint, fixed ~ N(0, √2); the fixed value 5.0 is > 3.5 standard deviations out.
    assert (values != 5.0).all()
    assert abs(float(values.mean())) < 4 * (2**0.5) / 200**0.5


def test_replay_takes_latent_values_from_a_trace():
    source = ic.trace(gaussian).get_trace()
    with ic.trace() as tracer, ic.replay(trace=source):
        gaussian()
    assert torch.equal(tracer.trace["z"].value, source["z"].value)
    assert not torch.equal(tracer.trace["x1"].value, source["x1"].value)


def test_block_hides_sites_from_outer_handlers():
    with ic.trace() as tracer, ic.block(hide=["z"]):
        gaussian()
    assert list(tracer.trace) == ["x1", "x2"]
    with ic.trace() as tracer, ic.block(expose=["z"]):
        gaussian()
    assert list(tracer.trace) == ["z"]
    with ic.trace() as tracer, ic.block():
        gaussian()
    assert list(tracer.trace) == []
    with pytest.raises(ValueError, match="not both"):
        ic.block(hide=["z"], expose=["x1"])


def test_scale_multiplies_log_densities():
    data = {"x1": 8.0, "x2": 9.0}
    trace = ic.trace(ic.scale(ic.condition(gaussian, data=data), factor=3.0)).get_trace()
    plain = ic.trace(ic.replay(ic.condition(gaussian, data=data), trace=trace)).get_trace()
    assert torch.isclose(trace.log_prob_sum(), 3 * plain.log_prob_sum())
    with pytest.raises(ValueError, match="positive"):
        ic.scale(factor=0.0)


def test_particles_expands_every_site_to_the_particle_shape():
    probe = ic.trace(gaussian).get_trace()
    shapes = ic.particles.natural_shapes_of(probe)
    with ic.trace(batch_ndim=1) as tracer, ic.particles(batch_shape=(7,), natural_shapes=shapes):
        gaussian()
    assert all(tracer.trace[name].value.shape == (7,) for name in ["z", "x1", "x2"])


def test_particles_keeps_natural_dimensions_to_the_right():
    def vector_model():
        loc = ic.sample("loc", Normal(torch.zeros(3), 1.0))
        ic.factor("penalty", -loc.abs().sum(-1))
        ic.factor("constant", torch.tensor(-1.0))

    shapes = ic.particles.natural_shapes_of(ic.trace(vector_model).get_trace())
    with ic.trace(batch_ndim=2) as tracer, ic.particles(batch_shape=(5, 2), natural_shapes=shapes):
        vector_model()
    assert tracer.trace["loc"].value.shape == (5, 2, 3)
    assert tracer.trace["penalty"].value.shape == (5, 2)
    assert tracer.trace["constant"].value.shape == (5, 2)


def test_particles_rejects_sites_it_cannot_batch():
    shapes = {"z": torch.Size([])}
    with (
        pytest.raises(ic.VectorizationError, match="'x1' did not occur"),
        ic.particles(batch_shape=(4,), natural_shapes=shapes),
    ):
        gaussian()

    def wrong_order():
        z = ic.sample("z", Normal(0.0, 1.0))
        # Stacking along dim 0 puts the particle dimension second: (2, N), not (N, 2).
        ic.observe("x", Normal(torch.stack([z, z]), 1.0))

    shapes = ic.particles.natural_shapes_of(ic.trace(wrong_order).get_trace())
    with (
        pytest.raises(ic.VectorizationError, match="'x'.*particle dimensions must lead"),
        ic.particles(batch_shape=(4,), natural_shapes=shapes),
    ):
        wrong_order()
