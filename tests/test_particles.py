"""The particle engine: probe, vectorized or sequential runs, remembered fallback."""

import math
import warnings

import pytest
import torch
from torch.distributions import Bernoulli, Beta, Binomial, Categorical, Gamma, Independent, Normal

import infcomp as ic
from infcomp.examples.gaussian import DATA, exact_log_evidence, gaussian
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference import Job, ParticleEngine, PriorProposal, engine_for
from infcomp.inference.particles import as_data, inflated


def test_the_vectorized_run_weighs_by_the_likelihood():
    engine = ParticleEngine(Job(gaussian, PriorProposal()))
    run = engine.run(as_data(DATA), 5000)
    assert run.vectorized and run.sizes == [5000] and run.log_weights.shape == (5000,)
    z = run.traces[0]["z"].value
    expected = Normal(z, 2**0.5).log_prob(DATA["x1"]) + Normal(z, 2**0.5).log_prob(DATA["x2"])
    assert torch.allclose(run.log_weights, expected.double(), atol=1e-5)
    assert run.log_proposal is None


def test_a_fallback_is_announced_once_and_remembered():
    engine = engine_for(marsaglia)
    data = as_data(DATA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = engine.run(data, 20)
        second = engine.run(data, 20)
    notices = [w for w in caught if issubclass(w.category, ic.VectorizationNotice)]
    assert len(notices) == 1 and "marsaglia" in str(notices[0].message)
    assert engine.vectorize is False and not first.vectorized and not second.vectorized
    assert notices[0].filename == __file__  # attributed to the user's line


def test_forcing_vectorization_of_a_model_that_cannot_is_an_error():
    with pytest.raises(ic.VectorizationError, match="marsaglia"):
        engine_for(marsaglia, vectorize=True).run(as_data(DATA), 10)


def test_the_probe_leaves_the_random_state_alone():
    engine = engine_for(gaussian)
    torch.manual_seed(3)
    probed = engine.run(as_data(DATA), 100).log_weights
    torch.manual_seed(3)
    again = engine.run(as_data(DATA), 100).log_weights  # the probe is cached now
    assert torch.equal(probed, again)


def test_joint_simulation_and_inflation():
    engine = engine_for(gaussian)
    torch.manual_seed(0)
    batch = engine.simulate(20_000)
    z = batch.traces[0]["z"].value
    assert batch.vectorized and z.shape == (20_000,)
    # z ~ N(1, √5): the mean within 4 standard errors, the variance within 4 of its own.
    assert abs(float(z.mean()) - 1.0) < 4 * (5 / 20_000) ** 0.5
    assert abs(float(z.var()) - 5.0) < 4 * 5 * (2 / 20_000) ** 0.5
    wide = engine.simulate(20_000, prior_inflation=2.0).traces[0]["z"].value
    assert abs(float(wide.var()) - 20.0) < 4 * 20 * (2 / 20_000) ** 0.5
    assert inflated(Normal(0.0, 1.0), 3.0).scale == 3.0


def test_other_arguments_keep_what_was_learned_about_vectorizing():
    engine = engine_for(marsaglia, vectorize=False)
    other = engine.with_arguments((2.0,), {})
    assert other is not engine and other.vectorize is False and other.job.args == (2.0,)
    assert engine.with_arguments((), {}) is engine


def test_batched_data_give_particles_by_data_set_with_exact_evidences():
    engine = engine_for(gaussian)
    data = {"x1": torch.tensor([8.0, 0.0]), "x2": torch.tensor([9.0, 1.0])}
    run = engine.run(data, 200_000, batched_data=True)
    assert run.log_weights.shape == (200_000, 2)
    log_evidence = torch.logsumexp(run.log_weights, 0) - torch.log(torch.tensor(200_000.0))
    for b, (x1, x2) in enumerate([(8.0, 9.0), (0.0, 1.0)]):
        weights = run.log_weights[:, b]
        ess = float(torch.exp(2 * torch.logsumexp(weights, 0) - torch.logsumexp(2 * weights, 0)))
        assert abs(float(log_evidence[b]) - exact_log_evidence(x1, x2)) < 4 / ess**0.5


def test_errors_about_the_data_name_the_site_and_the_likely_cause():
    with pytest.raises(ic.ModelError, match=r"'x2' has no observed value.*\['X2'\]"):
        ic.importance(gaussian, {"x1": 8.0, "X2": 9.0}, 10)
    with pytest.raises(ic.ModelError, match="data for site 'x1' must be a number"):
        ic.importance(gaussian, {"x1": "8", "x2": 9.0}, 10)

    def vector():
        z = ic.sample("z", Independent(Normal(torch.zeros(3), 1.0), 1))
        ic.observe("y", Independent(Normal(z, 1.0), 1))

    with pytest.raises(ic.ModelError, match=r"expand\(\[2\]\)"):
        ic.importance(vector, {"y": torch.zeros(2, 3)}, 10)
    with pytest.raises(ic.ModelError, match=r"has shape \(3,\) \(batch_shape \+ event_shape\)$"):
        ic.importance(vector, {"y": torch.zeros(4)}, 10)


def test_a_guide_partly_outside_the_support_is_counted_not_printed():
    def positive():
        rate = ic.sample("rate", Gamma(2.0, 1.0))
        ic.observe("y", Normal(rate, 1.0))

    def guide(observations=None):
        ic.sample("rate", Normal(1.0, 1.0))  # negative with probability 0.16

    torch.manual_seed(1)  # the probe's single draw is positive
    with pytest.raises(ic.GuideError, match=r"'rate': \d+ of 1000 values lie outside the support"):
        ic.importance(positive, {"y": 1.0}, 1000, guide=guide)


def test_a_guide_with_a_misspelt_site_is_told_both_names():
    def guide(observations=None):
        ic.sample("Z", Normal(0.0, 1.0))

    with pytest.raises(ic.GuideError, match=r"did not sample latent site 'z'.*\['Z'\]"):
        ic.importance(gaussian, DATA, 10, guide=guide)


def test_deprecated_argument_names_warn_at_the_callers_line():
    for call in (
        lambda: ic.importance(gaussian, DATA, num_samples=10),
        lambda: ic.importance_batch(gaussian, [DATA], num_samples=10),
        lambda: ic.importance_stream(gaussian, DATA, num_samples=10, chunk_size=5),
    ):
        with pytest.warns(DeprecationWarning, match="num_particles=") as record:
            call()
        assert record[0].filename == __file__


def test_a_categorical_observed_outside_its_classes_has_weight_zero():
    def model():
        ic.observe("y", Categorical(torch.tensor([0.2, 0.3, 0.5])))

    with pytest.warns(ic.InferenceWarning, match="all 10 weights are zero"):
        post = ic.importance(model, {"y": 5}, 10)
    assert torch.isneginf(post.log_weights).all()


def test_a_wrapped_observation_whose_support_depends_on_a_latent_matches_enumeration():
    def model():
        n = ic.sample("n", Categorical(torch.ones(6) / 6))
        ic.observe("y", Independent(Binomial(n.float().unsqueeze(-1) * torch.ones(2), 0.5), 1))

    y = (3, 1)
    # p(n | y) ∝ Π_i C(n, y_i) / 2^n for n = 0..5 (zero below n = 3), uniform prior 1/6.
    like = torch.tensor(
        [math.comb(n, y[0]) * math.comb(n, y[1]) / 4.0**n for n in range(6)], dtype=torch.float64
    )
    n = torch.arange(6, dtype=torch.float64)
    mean = float((like * n).sum() / like.sum())
    sd = float(((like * n**2).sum() / like.sum() - mean**2) ** 0.5)
    torch.manual_seed(0)
    post = ic.importance(model, {"y": torch.tensor([3.0, 1.0])}, 20_000)
    assert abs(float(post.mean("n")) - mean) < 4 * sd / float(post.ess) ** 0.5
    log_evidence = math.log(float(like.sum()) / 6)
    assert abs(float(post.log_evidence) - log_evidence) < 4 * float(post.log_evidence_stderr)


def test_integer_data_score_as_floats_do():
    def coin():
        f = ic.sample("f", Beta(2.0, 2.0))
        ic.observe("x", Independent(Bernoulli(f.unsqueeze(-1) * torch.ones(4)), 1))

    torch.manual_seed(0)
    as_integers = ic.importance(coin, {"x": torch.tensor([1, 0, 1, 1])}, 100).log_weights
    torch.manual_seed(0)
    as_floats = ic.importance(coin, {"x": torch.tensor([1.0, 0, 1, 1])}, 100).log_weights
    assert torch.equal(as_integers, as_floats)


# -- failures: the user's program, invalid parameters, memory (issue 11) -------------------


def _flaky(fail_on_call: int):
    """A broadcasting model whose simulator raises on one call (counted from 1)."""
    calls = []

    def model():
        calls.append(1)
        z = ic.sample("z", Normal(0.0, 1.0))
        if len(calls) == fail_on_call:
            raise RuntimeError("the simulator diverged")
        ic.observe("x", Normal(z, 1.0))

    return model, calls


def test_a_model_that_raises_once_is_the_users_error_not_a_vectorization_failure():
    model, calls = _flaky(fail_on_call=2)  # the probe passes, the batched run raises
    engine = engine_for(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ic.VectorizationNotice)
        with pytest.raises(ic.ModelError, match="RuntimeError: the simulator diverged") as info:
            engine.run(as_data({"x": 1.0}), 1000)
    assert "the last site it reached was 'z'" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # the model's traceback is kept
    assert len(calls) == 3  # probe, the failed batch, one retry (which succeeded)
    assert engine.vectorize is not False and engine.run(as_data({"x": 1.0}), 1000).vectorized


def test_a_model_that_always_raises_is_the_users_error_on_either_path():
    def broken():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.observe("x", Normal(z, 1.0))
        raise KeyError("missing table")

    for vectorize in (None, True, False):
        with pytest.raises(ic.ModelError, match="KeyError.*last site it reached was 'x'"):
            engine_for(broken, vectorize=vectorize).run(as_data({"x": 1.0}), 10)


def test_a_model_that_raises_in_some_particles_is_reported_from_the_one_at_a_time_run():
    def flaky():
        z = ic.sample("z", Normal(0.0, 1.0))
        if bool((z > 2.5).any()):  # about 0.6 % of particles
            raise ArithmeticError("overflow in the simulator")
        ic.observe("x", Normal(z, 1.0))

    engine = engine_for(flaky)
    with pytest.raises(ic.ModelError, match="ArithmeticError: overflow.*'z'"):
        engine.run(as_data({"x": 1.0}), 2000)
    assert engine.vectorize is not False


def _zero_scale_where(z):
    return torch.where(z > 1.0, torch.zeros_like(z), torch.ones_like(z))


@pytest.mark.parametrize("vectorize", [None, False])
def test_particles_with_invalid_parameters_get_weight_zero_and_are_attributed(vectorize):
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.observe("x", Normal(z, _zero_scale_where(z)))  # scale 0 where z > 1

    engine = engine_for(model, vectorize=vectorize)
    with pytest.warns(ic.InferenceWarning, match=r"invalid parameters.*'x' \(\d+\)"):
        run = engine.run(as_data({"x": 0.5}), 300 if vectorize is False else 10_000)
    z = torch.cat([trace["z"].value for trace in run.traces])
    invalid = z > 1.0
    assert run.vectorized == (vectorize is None) and engine.vectorize is vectorize
    assert torch.equal(torch.isneginf(run.log_weights), invalid) and invalid.any()
    expected = Normal(z[~invalid], 1.0).log_prob(torch.tensor(0.5)).double()
    assert torch.allclose(run.log_weights[~invalid], expected)
    assert run.invalid_sites == {"x": int(invalid.sum())}
    assert torch.distributions.Distribution._validate_args  # switched back on


def test_a_latent_that_is_sometimes_zero_as_a_scale_matches_enumeration():
    # k ~ Poisson(1); x ~ N(0, k): k = 0 is an invalid scale (weight zero), so the
    # estimate is of p(x, k > 0) = Σ_{k≥1} Poisson(k; 1) N(x; 0, k).
    from torch.distributions import Poisson

    def model():
        k = ic.sample("k", Poisson(1.0))
        ic.observe("x", Normal(0.0, k))

    with pytest.warns(ic.InferenceWarning, match="'x'"):
        post = ic.importance(model, {"x": 0.7}, 20_000)
    ks = torch.arange(1, 60, dtype=torch.float64)
    exact = torch.logsumexp(
        Poisson(1.0).log_prob(ks) + Normal(0.0, ks).log_prob(ks.new_tensor(0.7)), 0
    )
    assert abs(float(post.log_evidence) - float(exact)) < 4 * float(post.log_evidence_stderr)
    assert post.num_zero_weights == pytest.approx(20_000 * math.exp(-1), rel=0.05)


def test_a_guide_with_invalid_parameters_in_some_particles_is_attributed_to_the_guide():
    def guide(observations=None):
        ic.sample("z", Normal(0.0, 1.0 - 2.0 * (torch.rand(()) < 0.1).float()))

    with pytest.warns(ic.InferenceWarning, match="'guide z'"):
        run = engine_for(gaussian, guide, vectorize=False).run(as_data(DATA), 200)
    assert int(torch.isneginf(run.log_weights).sum()) == run.invalid_sites["guide z"] > 0


def test_a_particle_is_counted_once_where_it_first_went_wrong_guide_or_model():
    # In the order the run meets them. The guide's scale at z is NaN in a fifth of the
    # particles: they count at 'guide z', whatever comes after. The model's scale at w is
    # NaN where u < 0.3: those of the other particles count at w (0.3 * 0.8 = 24 %), and
    # x, which reads w, is not counted again. (Model sites before guide sites would move
    # 6 % from 'guide z' to 'w'.)
    def model():
        u = ic.sample("u", torch.distributions.Uniform(0.0, 1.0))
        z = ic.sample("z", Normal(0.0, 1.0))
        w = ic.sample("w", Normal(0.0, torch.where(u < 0.3, torch.nan, 1.0)))
        ic.observe("x", Normal(z + w, 1.0))

    def guide(observations=None):
        ic.sample("u", torch.distributions.Uniform(0.0, 1.0))
        scale = torch.tensor(torch.nan) if bool(torch.rand(()) < 0.2) else torch.tensor(1.0)
        ic.sample("z", Normal(0.0, scale))
        ic.sample("w", Normal(0.0, 1.0))

    torch.manual_seed(0)
    num = 2000
    with pytest.warns(ic.InferenceWarning, match="'guide z'"):
        run = engine_for(model, guide, vectorize=False).run(as_data({"x": 0.5}), num)
    assert set(run.invalid_sites) == {"guide z", "w"}
    for site, p in (("guide z", 0.2), ("w", 0.24)):
        assert abs(run.invalid_sites[site] - num * p) < 4 * math.sqrt(num * p * (1 - p)), site
    assert int(torch.isneginf(run.log_weights).sum()) == sum(run.invalid_sites.values())


def test_a_latent_drawn_from_invalid_parameters_in_some_particles_stays_vectorized():
    def model():
        s = ic.sample("s", Normal(0.0, 1.0))
        z = ic.sample("z", Normal(0.0, s))  # torch cannot even draw where s < 0
        ic.observe("x", Normal(z, 1.0))

    engine = engine_for(model)
    with pytest.warns(ic.InferenceWarning, match=r"'z' \(\d+\)"):
        run = engine.run(as_data({"x": 0.5}), 1000)
    s, z = run.traces[0]["s"].value, run.traces[0]["z"].value
    assert run.vectorized and torch.equal(torch.isneginf(run.log_weights), s < 0)
    expected = Normal(z[s > 0], 1.0).log_prob(torch.tensor(0.5)).double()
    assert torch.allclose(run.log_weights[s > 0], expected)
    assert run.invalid_sites == {"z": int((s < 0).sum())}


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 17.00 GiB"),
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        ),
    ],
)
def test_running_out_of_memory_fails_at_once_and_points_to_streaming(error):
    calls = []

    def hungry():
        calls.append(1)
        z = ic.sample("z", Normal(0.0, 1.0))
        if z.numel() > 100:
            raise error
        ic.observe("x", Normal(z, 1.0))

    expected = torch.OutOfMemoryError if isinstance(error, torch.OutOfMemoryError) else MemoryError
    with pytest.raises(expected, match="importance_stream"):
        ic.importance(hungry, {"x": 1.0}, 1000)
    assert len(calls) == 2  # the probe and the batch: never particle by particle
    with pytest.raises(expected, match="batch_size"):
        ic.JointSimulator(hungry)(1000)


# -- how often the model runs (issue 11, item 13; the README's table) ---------------------


def _counting(vectorizes: bool = True):
    calls = []

    def model():
        calls.append(1)
        z = ic.sample("z", Normal(0.0, 1.0))
        if not vectorizes and z > 0:  # control flow on a sampled value
            pass
        ic.observe("x", Normal(z, 1.0))

    return model, calls


def test_the_model_runs_as_often_as_the_readme_says():
    data = {"x": 1.0}
    model, calls = _counting()
    ic.importance(model, data, 100)
    assert len(calls) == 2  # the probe and one batched run
    calls.clear()
    ic.importance_batch(model, {"x": torch.zeros(3)}, 10)
    assert len(calls) == 2
    calls.clear()
    ic.importance_stream(model, data, 50, chunk_size=10)
    assert len(calls) == 1 + 5  # one probe, one run per chunk
    calls.clear()
    simulator = ic.JointSimulator(model)
    simulator(10)
    simulator(10)
    assert len(calls) == 2 + 1  # the probe is cached
    calls.clear()
    ic.CSIS(model)
    assert len(calls) == 2  # the probe and one batch, to build the network

    sequential, calls = _counting(vectorizes=False)
    with pytest.warns(ic.VectorizationNotice):
        ic.importance(sequential, data, 10)
    assert len(calls) == 1 + 1 + 10  # probe, the batch that fails, then N (no new probe)
    calls.clear()
    ic.importance(sequential, data, 10, vectorize=False)
    assert len(calls) == 1 + 10


def test_runs_with_invalid_parameters_in_several_threads_leave_validation_on():
    from concurrent.futures import ThreadPoolExecutor

    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.observe("x", Normal(z, _zero_scale_where(z)))

    def infer(_: int) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.InferenceWarning)
            run = engine_for(model).run(as_data({"x": 0.5}), 2000)
        z = run.traces[0]["z"].value
        assert torch.equal(torch.isneginf(run.log_weights), z > 1.0)
        return run.invalid_sites["x"]

    with ThreadPoolExecutor(4) as pool:
        assert all(count > 0 for count in pool.map(infer, range(8)))
    assert torch.distributions.Distribution._validate_args
    with pytest.raises(ValueError, match="Expected parameter scale"):
        Normal(0.0, 0.0)  # torch validates again
