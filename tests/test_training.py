"""Training on a simulation budget (TraceDataset, epochs, early stopping), failing
simulations, fixed observations seen by the network, and resuming a run after load."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import Normal, Uniform

import infcomp as ic
from infcomp.distributions import concatenate_distributions, index_distribution
from infcomp.examples.gaussian import exact_posterior, gaussian
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.csis import ParameterAverage
from infcomp.inference.dataset import default_batch_size

# -- distributions taken apart and joined ------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        Normal(torch.arange(4.0), torch.arange(1.0, 5.0)),
        torch.distributions.Categorical(logits=torch.randn(4, 3)),
        torch.distributions.Independent(Normal(torch.randn(4, 2), 1.0), 1),
        torch.distributions.Binomial(torch.tensor([3.0, 4, 5, 6]), probs=torch.rand(4)),
        torch.distributions.MultivariateNormal(torch.randn(4, 2), torch.eye(2)),
    ],
)
def test_indexed_and_joined_distributions_score_as_the_rows_they_came_from(fn):
    value = fn.sample()
    index = torch.tensor([3, 0, 3])
    taken = index_distribution(fn, index)
    assert torch.allclose(taken.log_prob(value[index]), fn.log_prob(value)[index])
    joined = concatenate_distributions([taken, fn])
    assert torch.allclose(
        joined.log_prob(torch.cat([value[index], value])),
        torch.cat([fn.log_prob(value)[index], fn.log_prob(value)]),
    )


def test_an_unbatched_distribution_cannot_be_indexed():
    assert index_distribution(Normal(0.0, 1.0), torch.tensor([0])) is None


# -- the dataset ----------------------------------------------------------------------


def test_minibatches_cover_every_simulation_once_per_epoch_for_a_variable_structure():
    torch.manual_seed(0)
    csis = ic.CSIS(marsaglia, vectorize=False)
    dataset = csis.simulate(500)
    assert len(dataset) == 500 and len(dataset.traces) > 1  # one group per structure
    assert sum(dataset.sizes) == 500
    seen = []
    for batch in dataset.batches(64, torch.Generator().manual_seed(1)):
        assert batch.size <= 64
        for trace in batch.traces:
            seen.extend(trace["x1"].value.tolist())
            # Distributions stay with their rows: the prior scores what was drawn.
            assert torch.isfinite(trace.log_prob_sum()).all()
    expected = [v for trace in dataset.traces for v in trace["x1"].value.tolist()]
    assert sorted(seen) == sorted(expected)


def test_the_split_holds_out_the_stated_fraction_without_overlap():
    torch.manual_seed(0)
    dataset = ic.CSIS(gaussian).simulate(1000)
    training, validation = dataset.split(0.1, torch.Generator().manual_seed(0))
    assert (len(training), len(validation)) == (900, 100)
    values = torch.cat([training.traces[0]["z"].value, validation.traces[0]["z"].value])
    assert torch.equal(values.sort().values, dataset.traces[0]["z"].value.sort().values)
    with pytest.raises(ValueError, match=r"validation fraction must lie in \[0, 1\)"):
        dataset.split(1.0, torch.Generator())


def test_the_default_batch_size_follows_the_budget():
    assert [default_batch_size(n) for n in (100, 10_000, 10**6)] == [32, 200, 256]


# -- training on a budget ----------------------------------------------------------------


def test_budget_training_reaches_the_posterior_entropy_and_keeps_the_best_epoch():
    # The loss E[-log q(z | x)] is at least the posterior's entropy, reached by q = p(z | x):
    # for the Gaussian every posterior is Normal with variance 5/6.
    entropy = 0.5 * math.log(2 * math.pi * math.e * 5 / 6)
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian)
    dataset = csis.simulate(2000)
    training, validation = dataset.split(0.1, torch.Generator().manual_seed(3))
    csis.train(dataset=training, patience=5, progress=False)
    losses = [loss for _, loss in csis.validation_history]
    # Early stopping: it stopped 5 epochs after its best one, and restored that one.
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) == best + 6 or len(losses) == 500
    # On data it never saw, the trained proposal is close to the best possible one.
    held_out = csis.dataset_loss(validation)
    standard_error = 1.0 / math.sqrt(len(validation))  # the loss per simulation has sd < 1 here
    assert entropy - 3 * standard_error < held_out < entropy + 0.15
    # The prior's loss (its entropy) is far above: training did learn.
    assert held_out < 0.5 * math.log(2 * math.pi * math.e * 5) - 0.5


def test_budget_training_restores_the_parameters_of_the_lowest_validation_loss():
    torch.manual_seed(1)
    csis = ic.CSIS(gaussian)
    csis.train(num_simulations=600, patience=3, max_epochs=40, progress=False)
    # Re-evaluate on the same held-out split: the restored weights give the best loss.
    torch.manual_seed(1)
    twin = ic.CSIS(gaussian)
    dataset = twin.simulate(600)
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    _, validation = dataset.split(0.1, generator)
    best = min(loss for _, loss in csis.validation_history)
    assert csis.dataset_loss(validation, 64) == pytest.approx(best, rel=1e-5)


def test_parameter_average_is_the_exponential_moving_average_of_the_states():
    d = 0.9
    average = ParameterAverage({"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}, d)
    average.update({"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(4)})
    average.update({"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(5), "new": torch.ones(1)})
    first = d * torch.tensor([1.0, 2.0]) + (1 - d) * torch.tensor([3.0, 0.0])
    assert torch.allclose(average.state["w"], d * first + (1 - d) * torch.tensor([5.0, 1.0]))
    assert int(average.state["n"]) == 5  # integers are not averaged
    assert torch.equal(average.state["new"], torch.ones(1))  # entries first seen later


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_budget_training_keeps_the_average_of_the_steps_parameters(decay):
    # Without validation nothing is selected: the guide ends with the moving average of
    # every step's parameters (the last step's with decay 0).
    torch.manual_seed(2)
    csis = ic.CSIS(gaussian)
    states = [{k: v.clone() for k, v in csis.guide.state_dict().items()}]
    step = csis._gradient_step

    def recording(*args):
        loss = step(*args)
        states.append({k: v.clone() for k, v in csis.guide.state_dict().items()})
        return loss

    csis._gradient_step = recording
    csis.train(
        num_simulations=200,
        validation_fraction=0,
        max_epochs=2,
        average_decay=decay,
        progress=False,
    )
    assert len(states) > 3
    expected = ParameterAverage(states[0], decay)
    for state in states[1:]:
        expected.update(state)
    for name, value in csis.guide.state_dict().items():
        assert torch.allclose(value, expected.state[name]), name
    if decay == 0:
        assert all(torch.equal(v, states[-1][k]) for k, v in csis.guide.state_dict().items())
    with pytest.raises(ValueError, match=r"average_decay must be in \[0, 1\), got 1"):
        csis.train(num_simulations=100, average_decay=1)


def test_seeded_budget_training_repeats():
    states = []
    for _ in range(2):
        torch.manual_seed(5)
        csis = ic.CSIS(gaussian)
        csis.train(num_simulations=300, max_epochs=3, progress=False)
        states.append(csis.guide.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_train_needs_exactly_one_way_to_get_simulations():
    csis = ic.CSIS(gaussian)
    with pytest.raises(TypeError, match="one of num_steps=.*num_simulations=.*dataset="):
        csis.train()
    with pytest.raises(TypeError, match="one of num_steps="):
        csis.train(10, num_simulations=100)
    with pytest.raises(TypeError, match="dataset must be a TraceDataset"):
        csis.train(dataset=[1, 2, 3])
    with pytest.raises(ValueError, match="num_simulations must be a positive integer"):
        csis.train(num_simulations=0)


# -- failing simulators ------------------------------------------------------------------


def sometimes_nan(rate=0.01):
    """The Gaussian whose simulator returns NaN for a fraction ``rate`` of its runs (u < rate)."""
    z = ic.sample("z", Normal(1.0, 5**0.5))
    u = ic.sample("u", Uniform(0.0, 1.0))
    broken = torch.where(u < rate, torch.full_like(z, math.nan), z)
    ic.observe("x1", Normal(broken, 2**0.5, validate_args=False))
    ic.observe("x2", Normal(z, 2**0.5))


def test_nan_simulations_are_dropped_counted_by_site_and_warned_once():
    torch.manual_seed(0)
    csis = ic.CSIS(sometimes_nan)
    with pytest.warns(ic.SimulationWarning, match=r"NaN or infinite.*'x1'") as caught:
        dataset = csis.simulate(10_000)
        csis.train(num_steps=20, batch_size=256, progress=False)
    assert len([w for w in caught if issubclass(w.category, ic.SimulationWarning)]) == 1
    dropped = csis.invalid_simulations["x1"]
    assert set(csis.invalid_simulations) == {"x1"}
    assert len(dataset) == 10_000 - dataset.invalid["x1"]
    # 1 % of 10,000 + 20 × 256 simulations, binomially: within 5 standard deviations.
    total = 10_000 + 20 * 256
    assert csis.num_simulations == total
    assert abs(dropped - 0.01 * total) < 5 * math.sqrt(0.01 * 0.99 * total)
    # No NaN reached the parameters; the kept simulations are all finite.
    assert all(torch.isfinite(p).all() for p in csis.guide.parameters())
    assert all(torch.isfinite(t["x1"].value).all() for t in dataset.traces)
    assert csis.skipped_steps == 0


def test_training_on_a_simulator_that_mostly_fails_stops_with_the_site_and_fraction():
    csis = ic.CSIS(sometimes_nan, kwargs={"rate": 0.8})
    with pytest.raises(ic.ModelError, match=r"\(8\d%\).*'x1'"):
        csis.step(batch_size=500)
    with pytest.raises(ic.ModelError, match=r"\(8\d%\).*'x1'"):
        csis.simulate(500)


def sometimes_raises(rate=0.02):
    """The Gaussian as a one-trace-at-a-time simulator that raises for u < rate."""
    z = ic.sample("z", Normal(1.0, 5**0.5))
    u = ic.sample("u", Uniform(0.0, 1.0))
    if u < rate:
        raise RuntimeError("the solver diverged")
    ic.observe("x1", Normal(z, 2**0.5))
    ic.observe("x2", Normal(z, 2**0.5))


def test_simulations_that_raise_are_skipped_and_counted_when_asked():
    torch.manual_seed(0)
    csis = ic.CSIS(sometimes_raises, vectorize=False, on_error="skip")
    with pytest.warns(ic.SimulationWarning, match=r"raised in the model.*'u'"):
        dataset = csis.simulate(1000)
        csis.train(num_steps=3, batch_size=100, progress=False)
    # The failing runs got as far as 'u'; 2 % of 1,300, binomially, within 5 sd.
    assert set(csis.failed_simulations) == {"u"}
    failed = csis.failed_simulations["u"]
    assert csis.num_simulations == 1300
    assert abs(failed - 26) < 5 * math.sqrt(1300 * 0.02 * 0.98)
    assert len(dataset) == 1000 - dataset.failed["u"]
    with pytest.raises(ic.ModelError, match="raised"):
        ic.CSIS(sometimes_raises, vectorize=False).step(batch_size=500)


def test_training_stops_when_most_simulations_raise():
    csis = ic.CSIS(sometimes_raises, kwargs={"rate": 0.7}, vectorize=False, on_error="skip")
    with pytest.raises(ic.ModelError, match=r"\((6|7|8)\d%\) are unusable.*raised in the program"):
        csis.simulate(300)


class SqrtGuide(nn.Module):
    """A guide for the Gaussian with location sqrt(a): finite log density, and at a = 0
    an infinite gradient."""

    def __init__(self, a=0.0, scale=3.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.scale = scale

    def forward(self, observations=None):
        return ic.sample("z", Normal(torch.sqrt(self.a), self.scale))


class NaNLossOnce(ic.CSIS):
    """A CSIS whose loss is NaN at its second step (as from a broken custom guide)."""

    def loss(self, batch, args=None, kwargs=None):
        loss = super().loss(batch, args, kwargs)
        return loss * math.nan if self.num_steps == 1 else loss


def test_a_step_with_a_nan_loss_is_not_applied():
    torch.manual_seed(0)
    csis = NaNLossOnce(gaussian, clip_grad_norm=None)
    csis.step(batch_size=8)
    before = [p.detach().clone() for p in csis.guide.parameters()]
    with pytest.warns(ic.SimulationWarning, match="step 2 was not applied"):
        loss = csis.step(batch_size=8)
    assert math.isnan(loss) and csis.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(csis.guide.parameters(), before))
    csis.step(batch_size=8)
    assert not all(torch.equal(p, q) for p, q in zip(csis.guide.parameters(), before))


def test_a_step_with_infinite_gradients_is_not_applied():
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian, SqrtGuide(0.0), vectorize=True)
    with pytest.warns(ic.SimulationWarning, match=r"gradient norm \(inf\)"):
        loss = csis.step(batch_size=8)
    assert math.isfinite(loss) and csis.skipped_steps == 1
    assert float(csis.guide.a.detach()) == 0.0


def test_gradients_are_clipped_to_the_stated_norm():
    torch.manual_seed(0)
    guide = SqrtGuide(4.0, scale=0.1)
    csis = ic.CSIS(gaussian, guide, torch.optim.SGD(guide.parameters(), lr=1.0), clip_grad_norm=0.5)
    csis.step(batch_size=64)
    # The gradient at a = 4 is far above 0.5 (the simulated z, of prior sd 2.2, are far
    # from sqrt(4) = 2 in units of 0.1); one SGD step of learning rate 1, clipped to norm
    # 0.5, moves a by 0.5.
    assert abs(float(guide.a.detach()) - 4.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="clip_grad_norm must be positive"):
        ic.CSIS(gaussian, clip_grad_norm=0.0)


# -- observations fixed in the program ---------------------------------------------------


def fixed_second(prior_mean=1.0):
    z = ic.sample("z", Normal(prior_mean, 5**0.5))
    ic.observe("x1", Normal(z, 2**0.5))
    ic.observe("x2", Normal(z, 2**0.5), value=9.0)
    return z


def test_the_network_sees_observations_fixed_with_value_as_if_they_were_data():
    torch.manual_seed(0)
    network = ic.CSIS(gaussian).network  # untrained: any network shows it
    posteriors = []
    for model, data in ((gaussian, {"x1": 8.0, "x2": 9.0}), (fixed_second, {"x1": 8.0})):
        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.InferenceWarning)  # an untrained proposal
            posteriors.append(ic.importance(model, data, num_particles=500, guide=network))
    first, second = posteriors
    assert torch.equal(first.values("z"), second.values("z"))
    assert torch.allclose(first.log_weights, second.log_weights)


def test_a_network_for_a_program_with_only_fixed_observations_runs_without_data():
    torch.manual_seed(0)

    def all_fixed():
        z = ic.sample("z", Normal(1.0, 5**0.5))
        ic.observe("x1", Normal(z, 2**0.5), value=8.0)
        ic.observe("x2", Normal(z, 2**0.5), value=9.0)

    csis = ic.CSIS(all_fixed)
    csis.train(num_steps=5, batch_size=64, progress=False)
    posterior = csis.run({}, num_particles=20_000)
    exact = exact_posterior()
    assert abs(float(posterior.mean("z")) - float(exact.mean)) < 5 * float(
        exact.stddev
    ) / math.sqrt(float(posterior.ess))


# -- resuming -------------------------------------------------------------------------


def test_train_save_load_train_equals_one_run(tmp_path):
    torch.manual_seed(1)
    whole = ic.CSIS(gaussian, validation_size=32)
    whole.train(20, 32, validate_every=7, progress=False)
    torch.manual_seed(1)
    first = ic.CSIS(gaussian, validation_size=32)
    first.train(10, 32, validate_every=7, progress=False)
    first.save(tmp_path / "half.pt")
    torch.manual_seed(123)  # whatever happens in between
    resumed = ic.CSIS.load(
        tmp_path / "half.pt", gaussian, validation_size=32, restore_random_state=True
    )
    resumed.train(10, 32, validate_every=7, progress=False)
    assert resumed.loss_history == whole.loss_history
    state, expected = resumed.guide.state_dict(), whole.guide.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    # The validation batch is the same one: equal losses where both validated (step 14).
    assert dict(resumed.validation_history)[14] == dict(whole.validation_history)[14]


def test_load_restores_the_random_state_only_when_asked(tmp_path):
    csis = ic.CSIS(gaussian)
    torch.manual_seed(7)
    csis.save(tmp_path / "a.pt")
    expected = torch.rand(3)
    ic.CSIS.load(tmp_path / "a.pt", gaussian, restore_random_state=True)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(8)
    expected = torch.rand(3)
    torch.manual_seed(8)
    ic.CSIS.load(tmp_path / "a.pt", gaussian)
    assert torch.equal(torch.rand(3), expected)


# -- invalid parameters and batch-wide failures while simulating (review of issue 11) ----


def zero_scale_sometimes():
    """A scale of exactly zero in 1 % of the simulations (u < 0.01): invalid parameters."""
    s = ic.sample("s", torch.distributions.HalfNormal(1.0))
    u = ic.sample("u", Uniform(0.0, 1.0))
    ic.observe("x", Normal(0.0, torch.where(u < 0.01, torch.zeros_like(s), s)))


def test_simulations_with_invalid_parameters_are_dropped_counted_and_stay_vectorized():
    torch.manual_seed(0)
    with pytest.warns(ic.SimulationWarning, match="invalid parameters.*'x'"):
        csis = ic.CSIS(zero_scale_sometimes)
        dataset = csis.simulate(5000)
        csis.train(num_steps=3, batch_size=256, progress=False)
    assert csis.simulator.vectorize is not False  # never fell back
    assert set(csis.invalid_simulations) == {"x"} and not csis.failed_simulations
    total = 5000 + 3 * 256
    assert abs(csis.invalid_simulations["x"] - 0.01 * total) < 5 * math.sqrt(0.01 * total)
    assert len(dataset) == 5000 - dataset.invalid["x"]
    # Every kept simulation has a positive scale: none of the dropped ones is left.
    assert all(bool((t["x"].fn.scale > 0).all()) for t in dataset.traces)


def zero_scale_often():
    """A scale of exactly zero in 30 % of the simulations."""
    u = ic.sample("u", Uniform(0.0, 1.0))
    ic.observe("x", Normal(u, torch.where(u < 0.3, torch.zeros_like(u), torch.ones_like(u))))


def test_a_first_run_with_invalid_parameters_does_not_stop_the_network_from_being_built():
    # CSIS(model) probes the model with one unbatched run first: over 20 seeds, one of
    # those runs meets the zero scale with probability 1 - 0.7^20 > 0.999. It is a rare
    # draw, not the program's error: the simulations with it are dropped and counted.
    for seed in range(20):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.SimulationWarning)
            csis = ic.CSIS(zero_scale_often)
            dataset = csis.simulate(200)
        assert set(dataset.invalid) == {"x"}
        assert all(bool((t["u"].value >= 0.3).all()) for t in dataset.traces)


def raises_on_the_batch(threshold=2.88):
    """Vectorized, but raises when any particle of the run exceeds the threshold."""
    z = ic.sample("z", Normal(0.0, 1.0))
    if bool((z > threshold).any()):
        raise ValueError("the solver diverged")
    ic.observe("x", Normal(z, 1.0))


def test_a_batch_wide_failure_is_the_users_error_and_never_stops_vectorizing():
    torch.manual_seed(0)
    csis = ic.CSIS(raises_on_the_batch, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ic.VectorizationNotice)
        warnings.simplefilter("ignore", ic.SimulationWarning)
        csis.train(num_steps=40, batch_size=256, progress=False)
    assert csis.simulator.vectorize is not False  # never fell back
    assert sum(csis.failed_simulations.values()) > 0
    simulator = ic.JointSimulator(raises_on_the_batch)
    with pytest.raises(ic.ModelError, match="solver diverged"):
        for _ in range(50):  # P(z > 2.88 somewhere in 4096 draws) ≈ 1
            simulator(4096)
    assert simulator.vectorize is not False


def test_load_keeps_the_constructor_options_and_resumes_an_inflated_run(tmp_path):
    options = {"prior_inflation": 2.0, "training_batch_size": 32, "validation_size": 16}
    torch.manual_seed(2)
    whole = ic.CSIS(gaussian, **options)
    for _ in range(6):
        whole.step()
    torch.manual_seed(2)
    first = ic.CSIS(gaussian, **options)
    for _ in range(3):
        first.step()
    first.save(tmp_path / "a.pt")
    resumed = ic.CSIS.load(tmp_path / "a.pt", gaussian, restore_random_state=True)
    assert (resumed.simulator.prior_inflation, resumed.training_batch_size) == (2.0, 32)
    assert resumed.validation_size == 16
    for _ in range(3):
        resumed.step()
    state, expected = resumed.guide.state_dict(), whole.guide.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert ic.CSIS.load(tmp_path / "a.pt", gaussian, training_batch_size=8).training_batch_size == 8


def test_training_that_applies_almost_no_step_is_an_error():
    def heavy_tailed():
        z = ic.sample("z", torch.distributions.StudentT(0.1))
        ic.observe("x", Normal(z, 1.0))

    torch.manual_seed(0)
    csis = ic.CSIS(heavy_tailed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.SimulationWarning)
        with pytest.raises(ic.ModelError, match="training steps were not applied"):
            csis.train(num_steps=20, batch_size=64, progress=False)


def test_the_network_refuses_nan_data_naming_the_site():
    csis = ic.CSIS(gaussian)
    with pytest.raises(ic.ModelError, match="'x1'.*NaN or infinite"):
        csis.run({"x1": math.nan, "x2": 9.0}, num_particles=10)
    with pytest.raises(ic.ModelError, match="'x2'.*NaN or infinite"):
        csis.run_batch([{"x1": 8.0, "x2": 9.0}, {"x1": 8.0, "x2": math.inf}], num_particles=10)


def test_a_callable_that_returns_a_generator_is_refused():
    class Model:
        def __call__(self):
            yield ic.sample("z", Normal(0.0, 1.0))

    with pytest.raises(ic.ModelError, match="returned a generator"):
        ic.importance(Model(), {}, 10)


# -- review of budget training --------------------------------------------------------


def other_model():
    z = ic.sample("z", torch.distributions.Independent(Normal(torch.zeros(2), 1.0), 1))
    ic.observe("y", Normal(z.sum(-1), 0.1))


def test_a_dataset_of_another_model_is_refused_naming_the_differences():
    dataset = ic.CSIS(other_model).simulate(200)
    csis = ic.CSIS(gaussian)
    with pytest.raises(ic.ModelError, match=r"not of model 'gaussian'.*'y'") as raised:
        csis.train(dataset=dataset, progress=False)
    assert csis.num_steps == 0
    # Said of the dataset, not of an artifact or a compiled guide.
    message = str(raised.value)
    assert "latent site 'z': the dataset has Independent, shape (2,), the model" in message
    assert "observe site 'y' (Normal, shape ()) is in the dataset but the model" in message
    assert message.endswith(
        "observe site family 'x' (e.g. 'x1') (Normal, shape ()) is not in the dataset"
    )
    assert "artifact" not in message and "guide" not in message


def same_name_two_types():
    b = ic.sample("b", torch.distributions.Bernoulli(0.5))
    if b > 0.5:
        z = ic.sample("z", torch.distributions.Gamma(2.0, 1.0))
    else:
        z = ic.sample("z", Normal(0.0, 1.0))
    ic.observe("y", Normal(z, 0.3))


def test_one_name_with_two_distribution_types_makes_two_groups_not_one_per_trace():
    torch.manual_seed(0)
    dataset = ic.CSIS(same_name_two_types, vectorize=False).simulate(300, chunk_size=100)
    assert len(dataset.sizes) == 2 and len(dataset) == 300


def transformed():
    base = Normal(0.0, 1.0)
    affine = torch.distributions.AffineTransform(1.0, 2.0)
    z = ic.sample("z", torch.distributions.TransformedDistribution(base, [affine]))
    ic.observe("y", Normal(z, 0.5))


def test_a_site_that_cannot_be_minibatched_is_refused_before_the_budget_is_spent():
    csis = ic.CSIS(transformed)
    with pytest.raises(ic.ModelError, match="site 'z'.*TransformedDistribution"):
        csis.simulate(50_000, chunk_size=100)
    assert csis.num_simulations == 0


def test_budget_training_refuses_a_function_guide_before_training():
    weights = torch.zeros(2, requires_grad=True)

    def guide(prior_mean=1.0, observations=None):
        return ic.sample("z", Normal(weights[0], weights[1].exp()))

    csis = ic.CSIS(gaussian, guide, torch.optim.Adam([weights], lr=0.01))
    with pytest.raises(TypeError, match="must be an nn.Module.*train it online"):
        csis.train(num_simulations=300, progress=False)
    assert csis.num_simulations == 0 and torch.equal(weights, torch.zeros(2))


def test_the_dataset_trained_on_is_counted_kept_and_dropped(tmp_path, capsys):
    # num_simulations counts what this CSIS ran; dataset_simulations what the last training
    # on a budget used, wherever it was simulated (an artifact says it).
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.SimulationWarning)
        simulated = ic.CSIS(zero_scale_often).simulate(400)
    dropped = simulated.invalid["x"]
    assert len(simulated) + dropped == 400 and dropped > 0
    simulated.save(tmp_path / "shards", shard_size=150)
    for dataset in (simulated, ic.TraceDataset.load(tmp_path / "shards")):
        csis = ic.CSIS(zero_scale_often)
        csis.train(dataset=dataset, max_epochs=1, progress=False)
        assert (csis.num_simulations, csis.dataset_simulations) == (0, 400)
    csis.save(tmp_path / "a.pt")
    assert ic.CSIS.load(tmp_path / "a.pt", zero_scale_often).dataset_simulations == 400
    from infcomp import cli

    assert cli.main(["info", str(tmp_path / "a.pt")]) == 0
    assert "0 simulations run, on a dataset of 400 simulations" in capsys.readouterr().out
    csis = ic.CSIS(gaussian)
    csis.train(num_simulations=300, max_epochs=1, progress=False)
    assert (csis.num_simulations, csis.dataset_simulations) == (300, 300)


def nan_passed_on():
    """w's location is NaN for z < -1.5; x's location is w, so NaN there too."""
    z = ic.sample("z", Normal(0.0, 1.0))
    w = ic.sample("w", Normal(torch.log(z + 1.5), 1.0))
    ic.observe("x", Normal(w, 1.0))


def test_a_simulation_is_counted_once_at_the_site_where_it_first_went_wrong():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.SimulationWarning)
        csis = ic.CSIS(nan_passed_on)
        dataset = csis.simulate(600)
    assert dataset.invalid == {"w": 600 - len(dataset)}
    assert csis.invalid_simulations == {"w": 600 - len(dataset)}
    # Inference counts its zero-weight particles the same way.
    with pytest.warns(ic.InferenceWarning, match="invalid parameters"):
        post = ic.importance(nan_passed_on, {"x": 0.0}, 600)
    zero = int(torch.isneginf(post.log_weights).sum())
    assert post.invalid_sites == {"w": zero} and zero > 0
