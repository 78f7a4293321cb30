"""Tests for infcomp.smc: sequential Monte Carlo against exact answers.

Exact answers: the forward algorithm and forward-backward (the 3-state HMM), the Kalman
filter (a linear-Gaussian state-space model), enumeration (a program with a random number
of sub-steps between observations). Tolerances come from the Monte Carlo error of the
quantity tested, estimated from independent repeats: a mean over R repeats is within
``3 sd / sqrt(R)`` of its expectation (a 0.3 % two-sided chance of failing for a normal
mean, with the seeds fixed so that each test is deterministic). Where the estimate is a
ratio (a posterior probability) SMC's O(1/N) bias is allowed for on top (``2 / N``).
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import pytest
import torch
from torch.distributions import Categorical, MultivariateNormal, Normal, Poisson

import infcomp as ic
from infcomp.examples import hmm as hmm_example
from infcomp.examples import state_space as ssm
from infcomp.examples.hmm import hmm
from infcomp.examples.state_space import state_space
from infcomp.inference.smc import (
    NOT_ESTIMABLE,
    _History,
    first_ancestors,
    genealogy_mcse,
    genealogy_stderr,
)


def repeats(model, data, num_particles, num_repeats, **options):
    posteriors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        for _ in range(num_repeats):
            posteriors.append(ic.smc(model, data, num_particles, **options))
    return posteriors


def assert_unbiased(log_evidences, exact, what):
    """Ẑ/Z averages 1 within 3 standard errors over the repeats."""
    ratios = torch.stack(log_evidences).sub(exact).exp()
    standard_error = float(ratios.std()) / math.sqrt(len(ratios))
    assert abs(float(ratios.mean()) - 1) < 3 * standard_error + 1e-12, (
        f"{what}: mean Ẑ/Z = {float(ratios.mean()):.4f} ± {standard_error:.4f}"
    )


def assert_log_evidence_consistent(log_evidences, exact, what):
    """For a long series, where Ẑ/Z is too heavy-tailed for its mean over a few repeats
    (sd of log Ẑ near 1): Ẑ unbiased and about log-normal gives
    E[log Ẑ] = log Z − Var(log Ẑ)/2 ≤ log Z; the mean of log Ẑ lies within 3 standard
    errors of [log Z − s²/2, log Z], s the repeats' sd (unbiasedness of Ẑ itself is the
    slow 200-repeat test)."""
    values = torch.stack(log_evidences).double()
    spread = float(values.std())
    margin = 3 * spread / math.sqrt(len(values))
    gap = float(values.mean()) - exact
    assert -(spread**2) / 2 - margin < gap < margin, (
        f"{what}: mean log Ẑ − log Z = {gap:.3f}, sd {spread:.3f}"
    )


def assert_mean_close(estimates, exact, num_particles, what):
    values = torch.stack([torch.as_tensor(e, dtype=torch.float64) for e in estimates])
    standard_error = values.std(0) / math.sqrt(len(values))
    error = (values.mean(0) - exact).abs()
    assert bool((error < 3 * standard_error + 2 / num_particles).all()), (
        f"{what}: {values.mean(0)} vs exact {exact} (se {standard_error})"
    )


# -- the hidden Markov model -------------------------------------------------------------


def test_hmm_16_steps_evidence_is_unbiased_and_final_marginals_match_forward_backward():
    steps, num_particles = 16, 500
    data = hmm_example.simulate_data(steps)
    exact = hmm_example.forward_log_evidence(data, steps)
    posteriors = repeats(hmm, data, num_particles, 40, args=(steps,))
    assert_unbiased([p.log_evidence for p in posteriors], exact, "HMM, 16 steps")
    marginals = hmm_example.posterior_marginals(data, steps)
    for site in (steps - 1, steps - 2):  # the last steps: the genealogy is not degenerate
        estimates = [
            torch.stack(
                [
                    p.mean(lambda tr, k=k, s=site: (tr[f"x_{s}"].value == k).double())
                    for k in range(3)
                ]
            )
            for p in posteriors
        ]
        assert_mean_close(estimates, marginals[site], num_particles, f"p(x_{site} | y)")


def test_bootstrap_smc_beats_importance_sampling_on_the_evidence():
    steps = 16
    data = hmm_example.simulate_data(steps)
    exact = hmm_example.forward_log_evidence(data, steps)
    smc = torch.stack([p.log_evidence for p in repeats(hmm, data, 300, 20, args=(steps,))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        prior = torch.stack(
            [ic.importance(hmm, data, 300, args=(steps,)).log_evidence for _ in range(20)]
        )
    assert float((smc - exact).abs().mean()) < float((prior - exact).abs().mean()) / 3


def test_no_resampling_is_importance_sampling_and_always_resampling_resamples_every_step():
    steps = 8
    data = hmm_example.simulate_data(steps)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        smc = ic.smc(hmm, data, 200, args=(steps,), ess_threshold=0.0)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        importance = ic.importance(hmm, data, 200, args=(steps,))
    assert torch.allclose(smc.log_weights, importance.log_weights)
    assert smc.num_resampling_steps == 0
    # Without resampling the genealogy estimate is the unbiased IS variance estimate.
    weights = smc.weights
    relative = (200 * (weights**2).sum() - 1) / 199
    assert torch.allclose(smc.log_evidence_stderr, relative.sqrt())
    every = ic.smc(hmm, data, 200, args=(steps,), ess_threshold=1.0)
    assert every.resampled.all() and every.num_resampling_steps == steps
    assert every.steps == [f"y_{t}" for t in range(steps)]
    assert every.ess_trace.shape == (steps,)
    assert bool((every.ess_trace <= 200 + 1e-9).all() and (every.ess_trace >= 1 - 1e-9).all())
    assert every.ancestors.shape == (200,)


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "stratified", "residual"])
def test_every_resampling_scheme_gives_the_evidence(scheme):
    steps, num_particles = 10, 300
    data = hmm_example.simulate_data(steps)
    exact = hmm_example.forward_log_evidence(data, steps)
    posteriors = repeats(hmm, data, num_particles, 15, args=(steps,), resample=scheme)
    assert_unbiased([p.log_evidence for p in posteriors], exact, scheme)


def test_bad_options_are_refused():
    data = hmm_example.simulate_data(2)
    with pytest.raises(ValueError, match="resample must be one of"):
        ic.smc(hmm, data, 10, args=(2,), resample="bogus")
    for bad in (1.5, -0.5, math.nan, "0.5", True):
        with pytest.raises(ValueError, match=r"ess_threshold must be a number in \[0, 1\]"):
            ic.smc(hmm, data, 10, args=(2,), ess_threshold=bad)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ic.smc(hmm, data, 10, args=(2,), chunk_size=3)
    with pytest.raises(ic.ModelError, match="no such site"):
        ic.smc(hmm, {**data, "y_9": 0.0}, 10, args=(2,))


@pytest.mark.slow
@pytest.mark.parametrize("steps", [16, 100])
def test_hmm_evidence_is_unbiased_over_200_repeats(steps):
    data = hmm_example.simulate_data(steps)
    exact = hmm_example.forward_log_evidence(data, steps)
    posteriors = repeats(hmm, data, 1000, 200, args=(steps,))
    assert_unbiased([p.log_evidence for p in posteriors], exact, f"HMM, {steps} steps")
    marginals = hmm_example.posterior_marginals(data, steps)
    estimates = [
        torch.stack(
            [p.mean(lambda tr, k=k: (tr[f"x_{steps - 1}"].value == k).double()) for k in range(3)]
        )
        for p in posteriors
    ]
    assert_mean_close(estimates, marginals[steps - 1], 1000, "final marginal")


# -- the linear-Gaussian state-space model -----------------------------------------------


def test_state_space_evidence_and_filtered_mean_match_the_kalman_filter():
    steps, num_particles = 50, 300
    data = ssm.simulate_data(steps)
    log_evidence, filtered, _, smoothed = ssm.kalman(data, steps)
    posteriors = repeats(state_space, data, num_particles, 60, args=(steps,))
    assert_log_evidence_consistent(
        [p.log_evidence for p in posteriors], log_evidence, "Kalman, bootstrap"
    )
    final = [p.mean(f"x_{steps - 1}") for p in posteriors]
    assert_mean_close(final, filtered[-1], num_particles, "filtered mean at T")
    # The genealogy gives smoothed means of the last steps (earlier ones have collapsed).
    before = [p.mean(f"x_{steps - 2}") for p in posteriors]
    assert_mean_close(before, smoothed[-2], num_particles, "smoothed mean at T - 1")


def test_a_guide_proposes_and_a_better_guide_gives_a_better_evidence():
    steps, num_particles = 30, 200
    data = ssm.simulate_data(steps)
    log_evidence, filtered, _, _ = ssm.kalman(data, steps)
    guided = repeats(state_space, data, num_particles, 12, args=(steps,), guide=ssm.optimal_guide)
    assert_unbiased([p.log_evidence for p in guided], log_evidence, "Kalman, optimal guide")
    assert_mean_close(
        [p.mean(f"x_{steps - 1}") for p in guided], filtered[-1], num_particles, "guided mean"
    )
    bootstrap = repeats(state_space, data, num_particles, 12, args=(steps,))
    spread = lambda posts: float(torch.stack([p.log_evidence for p in posts]).std())
    assert spread(guided) < spread(bootstrap) / 2


@pytest.mark.parametrize("threshold", [1.0, 0.0])  # refused whether or not it resamples
def test_a_guide_that_samples_out_of_the_models_order_is_refused(threshold):
    def backwards(num_steps, observations):
        for t in reversed(range(num_steps)):
            ic.sample(f"x_{t}", Normal(0.0, 2.0))

    data = ssm.simulate_data(3)
    with pytest.raises(ic.GuideError, match="samples 'x_2' before 'x_0'.*model's order"):
        ic.smc(state_space, data, 50, args=(3,), guide=backwards, ess_threshold=threshold)


def test_a_guide_may_sample_in_any_order_between_two_observe_statements():
    def swapped(observations):  # between two observe statements the order is free
        ic.sample("b", Normal(0.0, 1.0))
        ic.sample("a", Normal(0.0, 1.0))

    def model():
        a = ic.sample("a", Normal(0.0, 1.0))
        b = ic.sample("b", Normal(0.0, 1.0))
        ic.observe("y_0", Normal(a + b, 1.0))
        ic.observe("y_1", Normal(a - b, 1.0))

    data = {"y_0": torch.tensor(0.5), "y_1": torch.tensor(-0.5)}
    posterior = ic.smc(model, data, 50, guide=swapped, ess_threshold=1.0)
    assert posterior.num_resampling_steps == 2


@pytest.mark.slow
def test_state_space_evidence_is_unbiased_over_200_repeats():
    steps = 50
    data = ssm.simulate_data(steps)
    log_evidence, *_ = ssm.kalman(data, steps)
    posteriors = repeats(state_space, data, 1000, 200, args=(steps,))
    assert_unbiased([p.log_evidence for p in posteriors], log_evidence, "Kalman, 200 repeats")


# -- derived state crossing an observe statement -----------------------------------------


def derived(num_steps):
    x = ic.sample("x_0", Normal(0.0, 1.0))
    for t in range(num_steps):
        mean = ssm.A * x  # derived before the observe, used after it: stale after resampling
        ic.observe(f"y_{t}", Normal(x, ssm.R))
        x = ic.sample(f"x_{t + 1}", Normal(mean, ssm.Q))
    return x


def test_a_derived_value_crossing_an_observe_is_detected_and_runs_exactly_one_by_one():
    steps = 4
    data = {f"y_{t}": torch.tensor(float(t % 3)) for t in range(steps)}
    with pytest.raises(ic.ModelError, match="sample site 'x_\\d+'.*must be a sampled value"):
        ic.smc(derived, data, 200, args=(steps,), ess_threshold=1.0)
    # Particle by particle the program reruns on each particle's past: exact.
    model_data = {f"y_{t}": data[f"y_{t}"] for t in range(steps)}
    exact, *_ = ssm.kalman(model_data, steps)  # derived() is state_space() shifted by one
    posteriors = repeats(derived, data, 60, 6, args=(steps,), vectorize=False)
    assert_unbiased([p.log_evidence for p in posteriors], exact, "one by one")


def running_total(num_steps, at_the_end=False):
    total = 0.0
    values = []
    for t in range(num_steps):
        x = ic.sample(f"x_{t}", Normal(0.0, 1.0))
        values.append(x)
        total = total + x  # derived before the observe, returned after it: stale
        ic.observe(f"y_{t}", Normal(x, 0.5))
    if at_the_end:  # sum per particle, and a mean over all particles (not compared)
        return sum(values), torch.stack(values).mean()
    return {"total": total, "last": x}  # the tensors in a dict, list or tuple are compared


def test_a_derived_return_value_is_detected_and_one_computed_at_the_end_is_exact():
    steps, num_particles = 10, 1000
    data = {f"y_{t}": 1.0 + 0.2 * t for t in range(steps)}
    with pytest.raises(ic.ModelError, match="return value.*must be a sampled value"):
        ic.smc(running_total, data, num_particles, args=(steps,))
    # x_t | y_t ~ Normal(0.8 y_t, 0.2) independently: E[Σ x_t | y] = 0.8 Σ y_t = 15.2.
    posteriors = repeats(
        running_total, data, num_particles, 10, args=(steps, True), resample="systematic"
    )
    means = [p.mean(lambda tr: tr.return_value[0]) for p in posteriors]
    assert_mean_close(means, 15.2, num_particles, "E[Σ x | y]")


def test_the_replay_check_of_a_batch_counts_the_particles_it_checked():
    steps, num_particles, num_datasets = 4, 4, 3
    datasets = [{f"y_{t}": torch.tensor(float(t % 3 + b)) for t in range(steps)} for b in range(3)]
    with pytest.raises(ic.ModelError) as raised:
        ic.smc_batch(derived, datasets, num_particles, args=(steps,), ess_threshold=1.0)
    message = str(raised.value)
    assert "particles checked (4 in each of 3 data sets)" in message, message
    count = int(message.split(" of 12 particles checked")[0].rsplit(" ", 1)[1])
    assert 1 <= count <= num_particles * num_datasets


# -- stochastic control flow ---------------------------------------------------------------

SUBSTEP_PROBS = torch.tensor([0.3, 0.4, 0.3])
SUBSTEP_NOISE = 0.7


def substeps(num_observations):
    """A random number (0, 1 or 2) of random-walk sub-steps before each observation."""
    x = torch.tensor(0.0)
    for t in range(num_observations):
        count = ic.sample(f"m_{t}", Categorical(SUBSTEP_PROBS))
        for i in range(int(count)):  # control flow on a sampled value
            x = ic.sample(f"x_{t}_{i}", Normal(x, 1.0))
        ic.observe(f"y_{t}", Normal(x, SUBSTEP_NOISE))
    return x


def substeps_exact(y):
    """log p(y) and p(m_0 = k | y) by enumerating the sub-step counts."""
    size = len(y)
    log_joint = {}
    for counts in torch.cartesian_prod(*[torch.arange(3)] * size).reshape(-1, size).tolist():
        cumulative = torch.tensor(counts, dtype=torch.float64).cumsum(0)
        covariance = torch.minimum(cumulative[:, None], cumulative[None, :])
        covariance = covariance + SUBSTEP_NOISE**2 * torch.eye(size, dtype=torch.float64)
        log_prior = sum(math.log(float(SUBSTEP_PROBS[c])) for c in counts)
        normal = MultivariateNormal(torch.zeros(size, dtype=torch.float64), covariance)
        log_joint[tuple(counts)] = log_prior + float(normal.log_prob(y))
    values = torch.tensor(list(log_joint.values()), dtype=torch.float64)
    log_evidence = float(values.logsumexp(0))
    first = torch.zeros(3, dtype=torch.float64)
    for counts, value in log_joint.items():
        first[counts[0]] += math.exp(value - log_evidence)
    return log_evidence, first


def test_stochastic_control_flow_runs_one_by_one_against_enumeration():
    y = torch.tensor([0.4, 1.9, -0.3], dtype=torch.float64)
    data = {f"y_{t}": y[t].float() for t in range(3)}
    exact, first = substeps_exact(y)
    with pytest.warns(ic.VectorizationNotice):
        ic.smc(substeps, data, 2, args=(3,))
    posteriors = repeats(substeps, data, 100, 8, args=(3,), vectorize=False)
    assert_unbiased([p.log_evidence for p in posteriors], exact, "sub-steps")
    estimates = [
        torch.stack([p.mean(lambda tr, k=k: (tr["m_0"].value == k).double()) for k in range(3)])
        for p in posteriors
    ]
    assert_mean_close(estimates, first, 100, "p(m_0 | y)")
    assert posteriors[0].steps == ["observe 1", "observe 2", "observe 3"]


def random_observations():
    """A random number, min(n, 3) with n ~ Poisson(2), of observe statements."""
    n = ic.sample("n", Poisson(2.0))
    z = ic.sample("z", Normal(0.0, 1.0))
    for i in range(min(int(n), 3)):
        ic.observe(f"y_{i}", Normal(z, 1.0))
    return z


def test_data_for_an_observe_site_that_few_runs_reach_is_refused_no_more_than_by_importance():
    data = {f"y_{i}": torch.tensor(1.0) for i in range(3)}
    num_particles, num_runs = 8, 100
    # Importance sampling refuses y_2 when none of its N runs reaches it: n < 3 in all.
    p_none = float(Poisson(2.0).log_prob(torch.arange(3.0)).exp().sum()) ** num_particles
    refused = 0
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        for _ in range(num_runs):
            try:
                ic.smc(random_observations, data, num_particles, vectorize=False)
            except ic.ModelError as error:
                assert "no such site" in str(error)
                refused += 1
    expected = num_runs * p_none  # 4.4: the bound, were SMC's runs as many as importance's
    assert refused <= expected + 3 * math.sqrt(expected * (1 - p_none)), refused
    with pytest.raises(ic.ModelError, match=r"met are \['y_0', 'y_1', 'y_2'\]"):
        ic.smc(random_observations, {**data, "y_5": 1.0}, 50, vectorize=False)


# -- compiled proposals ---------------------------------------------------------------------


def test_a_network_compiled_for_importance_sampling_runs_smc_unchanged():
    steps = 6
    csis = ic.CSIS(hmm, args=(steps,))
    csis.train(num_steps=10, batch_size=64, progress=False)
    data = hmm_example.simulate_data(steps)
    exact = hmm_example.forward_log_evidence(data, steps)
    posteriors = repeats(hmm, data, 200, 10, args=(steps,), guide=csis)
    assert_unbiased([p.log_evidence for p in posteriors], exact, "compiled SMC")
    one_by_one = repeats(hmm, data, 30, 4, args=(steps,), guide=csis, vectorize=False)
    assert_unbiased([p.log_evidence for p in one_by_one], exact, "compiled SMC one by one")


def test_the_networks_state_is_resampled_with_the_particles():
    steps, num = 4, 6
    csis = ic.CSIS(hmm, args=(steps,))
    network = csis.network
    data = hmm_example.simulate_data(steps)

    def proposals(values, index=None):
        proposer = network.proposer(data, (num,))
        handler = ic.propose(proposer=proposer, batch_ndim=1)
        for t in range(3):
            if t == 2 and index is not None:
                handler.reindex(index)  # what SMC does when it resamples before x_2
                for earlier in range(2):
                    values[earlier].copy_(values[earlier][index])
            site = ic.Site(f"x_{t}", "sample", Categorical(torch.ones(num, 3) / 3))
            proposal = proposer.propose(site)
            site.value = values[t]
            proposer.accept(site)
        return proposal.logits

    torch.manual_seed(1)
    values = [torch.randint(3, (num,)) for _ in range(steps)]
    index = torch.tensor([5, 5, 0, 1, 1, 3])
    resampled = proposals([v.clone() for v in values], index)
    fresh = proposals([v[index] if t < 2 else v.clone() for t, v in enumerate(values)])
    assert torch.allclose(resampled, fresh, atol=1e-6)


# -- the posterior --------------------------------------------------------------------------


def test_plot_shows_the_ess_trace():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    data = hmm_example.simulate_data(10)
    posterior = ic.smc(hmm, data, 100, args=(10,))
    ax = posterior.plot()
    assert len(ax.lines) == 2
    assert "resampled=" in repr(posterior)


# -- batches of data sets -------------------------------------------------------------------


def test_a_batch_of_data_sets_gives_each_its_evidence_and_marginals():
    steps, num_particles, num_datasets = 12, 300, 3
    datasets = [hmm_example.simulate_data(steps) for _ in range(num_datasets)]
    exact = [hmm_example.forward_log_evidence(d, steps) for d in datasets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        batches = [ic.smc_batch(hmm, datasets, num_particles, args=(steps,)) for _ in range(20)]
    first = batches[0]
    assert first.log_evidence.shape == (num_datasets,)
    assert first.ess_trace.shape == first.resampled.shape == (steps, num_datasets)
    assert first.ancestors.shape == (num_particles, num_datasets)
    assert first.log_evidence_stderr.shape == (num_datasets,)
    assert first.mean("x_0").shape == (num_datasets,)
    for b in range(num_datasets):
        assert_unbiased([batch.log_evidence[b] for batch in batches], exact[b], f"data set {b}")
        marginal = hmm_example.posterior_marginals(datasets[b], steps)[steps - 1]
        estimates = [
            torch.stack(
                [
                    (batch[b].values(f"x_{steps - 1}") == k).double() @ batch[b].weights
                    for k in range(3)
                ]
            )
            for batch in batches
        ]
        assert_mean_close(estimates, marginal, num_particles, f"data set {b}, p(x_T | y)")


def test_a_batch_gives_each_data_set_its_smc_posterior_with_its_history():
    steps, num_datasets = 8, 3
    datasets = [hmm_example.simulate_data(steps) for _ in range(num_datasets)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        batch = ic.smc_batch(hmm, datasets, 100, args=(steps,))
    assert bool((batch.log_evidence_stderr > 0).all())  # equal weights would give 0
    for b in range(num_datasets):
        single = batch[b]
        assert isinstance(single, ic.SMCPosterior)
        assert torch.equal(single.ess_trace, batch.ess_trace[:, b])
        assert torch.equal(single.resampled, batch.resampled[:, b])
        assert torch.equal(single.ancestors, batch.ancestors[:, b])
        assert single.steps == batch.steps
        assert torch.allclose(single.log_evidence_stderr, batch.log_evidence_stderr[b])
        assert torch.allclose(single.log_evidence, batch.log_evidence[b])
    assert isinstance(batch.posterior(0), ic.SMCPosterior)


def test_one_particle_has_no_standard_error_and_says_so():
    data = hmm_example.simulate_data(3)
    with pytest.warns(ic.InferenceWarning, match="with one particle the standard error"):
        posterior = ic.smc(hmm, data, 1, args=(3,))
    assert bool(torch.isnan(posterior.log_evidence_stderr))
    with pytest.warns(ic.InferenceWarning, match="with one particle the standard error"):
        batch = ic.smc_batch(hmm, [data, data], 1, args=(3,))
    assert bool(torch.isnan(batch.log_evidence_stderr).all())
    assert bool(torch.isnan(batch[0].log_evidence_stderr))


def test_a_batch_that_does_not_vectorize_runs_data_set_after_data_set():
    datasets = [{f"y_{t}": torch.tensor(float(t + b)) for t in range(2)} for b in range(2)]
    torch.manual_seed(5)
    batch = ic.smc_batch(substeps, datasets, 40, args=(2,), vectorize=False)
    torch.manual_seed(5)
    singles = [ic.smc(substeps, d, 40, args=(2,), vectorize=False) for d in datasets]
    for b, single in enumerate(singles):
        assert torch.equal(batch.log_weights[:, b], single.log_weights)
        assert torch.equal(batch.ess_trace[:, b], single.ess_trace)
        assert float(batch.ess[b]) == float(single.ess)  # the last epoch's, per data set
    assert batch.log_evidence_stderr.shape == (2,)
    scheme = ic.smc_batch(substeps, datasets, 40, args=(2,), vectorize=False, resample="residual")
    assert scheme[0].resampling == scheme[1].resampling == "residual"


def test_particles_with_invalid_parameters_get_weight_zero_and_are_counted():
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        scale = torch.where(z > 1.0, 0.0, 1.0)  # invalid (a scale of 0) where z > 1
        ic.observe("y_0", Normal(z, scale))
        w = ic.sample("w", Normal(z, 1.0))
        ic.observe("y_1", Normal(w, 1.0))
        return z

    data = {"y_0": torch.tensor(0.5), "y_1": torch.tensor(0.0)}
    with pytest.warns(ic.InferenceWarning, match="invalid parameters"):
        posterior = ic.smc(model, data, 500, ess_threshold=0.0)
    invalid = posterior.values("z") > 1.0
    assert posterior.invalid_sites == {"y_0": int(invalid.sum())} and bool(invalid.any())
    assert bool(torch.isneginf(posterior.log_weights[invalid]).all())
    assert bool(torch.isfinite(posterior.log_weights[~invalid]).all())


class PointMass(torch.distributions.Distribution):
    """A deterministic site: its value is ``value`` itself (a view of it), density 1."""

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, value):
        self.value = value
        super().__init__(value.shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return PointMass(self.value.expand(batch_shape))

    def sample(self, sample_shape=()):
        return self.value.expand(torch.Size(sample_shape) + self.value.shape)

    def log_prob(self, value):
        return torch.zeros(value.shape)


def test_a_value_that_views_another_sites_value_is_resampled_once():
    def model(num_steps):
        x = ic.sample("x_0", Normal(0.0, 1.0))
        ic.observe("y_0", Normal(x, ssm.R))
        for t in range(1, num_steps):
            same = ic.sample(f"same_{t}", PointMass(x))  # views x's memory
            x = ic.sample(f"x_{t}", Normal(ssm.A * same, ssm.Q))
            ic.observe(f"y_{t}", Normal(x, ssm.R))
        return x

    steps = 8
    data = ssm.simulate_data(steps)
    exact, *_ = ssm.kalman(data, steps)
    posteriors = repeats(model, data, 300, 15, args=(steps,), ess_threshold=1.0)
    assert_unbiased([p.log_evidence for p in posteriors], exact, "point-mass sites")


# -- the reported ESS and standard error ------------------------------------------------


def test_the_ess_is_the_last_epochs_and_summary_shows_no_khat_for_equal_weights():
    steps = 6
    data = hmm_example.simulate_data(steps)
    every = ic.smc(hmm, data, 500, args=(steps,), ess_threshold=1.0)
    assert bool((every.log_weights == every.log_weights[0]).all())  # equal final weights
    assert float(every.ess) == float(every.ess_trace[-1]) < 500  # not N
    assert "k-hat = -" in every.summary() and f"ESS = {float(every.ess):.1f}" in every.summary()
    assert every.problems() == []  # no k-hat verdict on SMC's weights (see SMCPosterior)
    never = ic.smc(hmm, data, 500, args=(steps,), ess_threshold=0.0)
    assert torch.allclose(never.ess, ic.diagnostics.effective_sample_size(never.log_weights))
    batch = ic.smc_batch(hmm, [data, data], 500, args=(steps,), ess_threshold=1.0)
    assert torch.equal(batch.ess, batch.ess_trace[-1])
    assert float(batch[1].ess) == float(batch.ess_trace[-1, 1])


def test_a_genealogy_variance_that_is_not_positive_is_nan_and_said_so():
    num = 100
    weights = torch.full((num,), 1 / num, dtype=torch.float64)
    eves = torch.arange(num)
    # Equal weights, every particle its own first ancestor, one resampling: V̂/Ẑ² =
    # 1 - (N/(N-1))² (1 - 1/N) < 0, no estimate; without resampling V̂ = 0 exactly.
    assert bool(torch.isnan(genealogy_stderr(weights, eves, torch.tensor(1))))
    assert float(genealogy_stderr(weights, eves, torch.tensor(0))) == 0.0
    history = _History(eves, ["y"], [torch.tensor(50.0)], [torch.tensor(True)])
    trace = ic.trace(lambda: ic.sample("x", Normal(torch.zeros(num), 1.0))).get_trace()
    posterior = ic.SMCPosterior([trace], [num], torch.zeros(num, dtype=torch.float64), history)
    assert any("cannot be estimated from this run" in p for p in posterior.problems())
    posterior.resampling = "systematic"
    assert any("derived for multinomial" in p for p in posterior.problems())


def test_the_standard_error_covers_the_exact_evidence_over_100_repeats():
    """With multinomial resampling (the default) the genealogy standard error is
    consistent (Lee & Whiteley 2018): the 95 % interval log Ẑ ± 1.96 se holds the exact
    log Z (the forward algorithm) in 95 % of runs, within 3 binomial standard errors
    (0.022 for 100 runs); the mean standard error matches the spread of log Ẑ within 3
    standard errors of a standard deviation from 100 runs (about 7 % each)."""
    steps, num_particles, runs = 10, 300, 100
    data = hmm_example.simulate_data(steps)
    exact = hmm_example.forward_log_evidence(data, steps)
    posteriors = repeats(hmm, data, num_particles, runs, args=(steps,), check=False)
    log_z = torch.stack([p.log_evidence for p in posteriors])
    stderr = torch.stack([p.log_evidence_stderr for p in posteriors])
    assert sum(p.num_resampling_steps for p in posteriors) > runs  # resampled
    covered = float(((log_z - exact).abs() < 1.96 * stderr).double().mean())
    assert abs(covered - 0.95) < 3 * math.sqrt(0.95 * 0.05 / runs), covered
    ratio = float(stderr.mean() / log_z.std())
    assert abs(ratio - 1) < 3 * 0.07, ratio


def test_by_default_a_call_is_replayed_until_a_run_with_sites_after_a_resampling_passed():
    def counted(num_steps, scale=1.0):
        counted.runs += 1
        return state_space(num_steps)

    counted.runs = 0
    data = ssm.simulate_data(3)

    def runs(steps=3, **options):
        before = counted.runs
        observed = {f"y_{t}": data[f"y_{t}"] for t in range(steps)}
        ic.smc(counted, observed, 50, args=(steps,), **options)
        return counted.runs - before  # the probe, the run, and the replay if checked

    assert runs(ess_threshold=0.0) == 3  # no resampling: nothing learned, checked again
    assert runs(steps=1, ess_threshold=1.0) == 3  # resampled at its last site only
    assert runs(steps=1, ess_threshold=1.0) == 3
    assert runs(ess_threshold=1.0) == 3  # resampled, then sites: passed
    assert runs(ess_threshold=1.0) == 2  # not replayed again
    assert runs(ess_threshold=0.0) == 2
    assert runs(ess_threshold=1.0, check=True) == 3
    assert runs(steps=2, ess_threshold=1.0) == 3  # other arguments and data: another call
    assert runs(ess_threshold=1.0, kwargs={"scale": 2.0}) == 3
    assert runs(ess_threshold=1.0, kwargs={"scale": 2}) == 3  # 2 == 2.0, but another type
    assert runs(ess_threshold=1.0, kwargs={"scale": torch.tensor(2.0)}) == 3  # not plain:
    assert runs(ess_threshold=1.0, kwargs={"scale": torch.tensor(2.0)}) == 3  # every time
    with pytest.raises(ValueError, match="check must be None, True or False, got 'yes'"):
        ic.smc(counted, data, 50, args=(3,), check="yes")


def random_walk(num_steps, jitter=False):
    x = ic.sample("x_0", Normal(0.0, 1.0))
    for t in range(num_steps):
        noise = 0.1 * torch.randn(x.shape) if jitter else 0.0  # untraced randomness
        ic.observe(f"y_{t}", Normal(x + noise, 1.0))
        if t + 1 < num_steps:
            x = ic.sample(f"x_{t + 1}", Normal(0.9 * x, 1.0))
    return x


def test_a_collapse_of_the_particles_mid_run_is_a_problem_as_in_importance_sampling():
    torch.manual_seed(0)
    steps = 20
    data = {f"y_{t}": torch.tensor(30.0 if t == 10 else 0.0) for t in range(steps)}
    post = ic.smc(random_walk, data, 1000, args=(steps,))
    assert float(post.ess_trace.min()) < 1.5
    assert any("collapsed at step 'y_10'" in problem for problem in post.problems())
    quiet = {name: torch.tensor(0.0) for name in data}
    batch = ic.smc_batch(random_walk, [data, quiet], 1000, args=(steps,))
    assert "1 of 2 data sets: the particles collapsed" in batch.problems()
    assert not any(
        "collapsed" in p for p in ic.smc(random_walk, quiet, 1000, args=(steps,)).problems()
    )


def test_the_standard_error_from_particles_of_one_first_ancestor_is_nan():
    torch.manual_seed(0)
    steps = 100
    data = {f"y_{t}": torch.tensor(float(t % 3)) for t in range(steps)}
    post = ic.smc(random_walk, data, 20, args=(steps,), ess_threshold=1.0)
    assert int(first_ancestors(post.ancestors)) == 1
    assert torch.isnan(post.log_evidence_stderr)  # Σ W_e² = 1 would give exactly 1
    assert NOT_ESTIMABLE in post.problems()
    ancestors = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 1]])
    assert first_ancestors(ancestors).tolist() == [1, 2]
    weights = torch.full((4, 2), 0.25, dtype=torch.float64)
    stderr = genealogy_stderr(weights, ancestors, torch.tensor([1, 1]))
    assert torch.isnan(stderr[0]) and not torch.isnan(stderr[1])


def test_randomness_outside_sample_statements_is_named_as_such_by_the_replay_check():
    data = {f"y_{t}": torch.tensor(1.0) for t in range(4)}
    with pytest.raises(ic.ModelError, match="site 'y_0'.*not a function of its sampled values"):
        ic.smc(random_walk, data, 100, args=(4, True), check=True)
    post = ic.smc(random_walk, data, 100, args=(4, True), check=False)
    assert torch.isfinite(post.log_evidence)


def test_impossible_data_are_reported_as_such_not_as_a_genealogy_problem():
    data = {f"y_{t}": torch.tensor(math.inf if t == 2 else 0.0) for t in range(4)}
    with pytest.warns(ic.InferenceWarning) as warned:
        post = ic.smc(random_walk, data, 100, args=(4,))
    messages = " ".join(str(w.message) for w in warned)
    assert "weights are zero" in messages and "first ancestors" not in messages
    data["y_0"] = torch.tensor(5.0)  # resampled there, before the impossible observation
    with pytest.warns(ic.InferenceWarning) as warned:
        post = ic.smc(random_walk, data, 100, args=(4,))
    messages = " ".join(str(w.message) for w in warned)
    assert post.num_resampling_steps > 0 and "weights are zero" in messages
    assert "first ancestors" not in messages and "collapsed" not in messages
    with pytest.raises(ValueError, match="check must be None, True or False, got 1"):
        ic.smc(random_walk, data, 10, args=(4,), check=1)
    quiet = {name: torch.tensor(0.0) for name in data}
    post = ic.smc(random_walk, quiet, 100, args=(4,), ess_threshold=torch.tensor(1.0))
    assert post.num_resampling_steps == 4


# -- Monte Carlo standard errors that follow the genealogy ---------------------------------


def test_mcse_follows_the_genealogy_and_matches_the_spread_of_independent_runs():
    # 12-step linear-Gaussian example, 2,000 particles, multinomial resampling, 40 runs.
    # The spread of 40 estimates has a relative standard error of 1/sqrt(2 * 39) = 0.11:
    # the mean reported error must be within about 3 of those of it (0.65 to 1.5 times).
    # The per-particle formula counts the final particles as independent: for x_0, whose
    # value ~120 first ancestors carry, it is about 6 times too small (measured 0.009
    # against a spread of 0.058) and fails the same check.
    steps = 12
    torch.manual_seed(3)
    data = ssm.simulate_data(steps)
    runs = []
    for seed in range(40):
        torch.manual_seed(200 + seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.InferenceWarning)
            runs.append(ic.smc(state_space, data, 2000, args=(steps,), resample="multinomial"))
    for site in ("x_0", "x_11"):
        for method in ("mean", "sd"):
            estimates = [float(p.mean(site) if method == "mean" else p.std(site)) for p in runs]
            spread = float(torch.tensor(estimates).std())
            reported = sum(float(p.mcse(site, method)) for p in runs) / len(runs)
            assert 0.65 < reported / spread < 1.5, (site, method, reported, spread)
    per_particle = sum(
        float(ic.diagnostics.mcse_mean(p.values("x_0"), p.log_weights)) for p in runs
    ) / len(runs)
    spread = float(torch.tensor([float(p.mean("x_0")) for p in runs]).std())
    assert per_particle / spread < 0.3
    # summary() shows the same errors.
    row = runs[-1].summary().splitlines()[1].split()
    assert row[0] == "x_0" and float(row[3]) == pytest.approx(float(runs[-1].mcse("x_0")), abs=1e-4)


def test_without_resampling_the_mcse_is_importance_samplings():
    torch.manual_seed(0)
    post = ic.smc(hmm, hmm_example.simulate_data(6), 500, args=(6,), ess_threshold=0)
    assert post.num_resampling_steps == 0
    for method, formula in (("mean", ic.diagnostics.mcse_mean), ("sd", ic.diagnostics.mcse_sd)):
        expected = formula(post.values("x_2").double(), post.log_weights)
        assert torch.allclose(post.mcse("x_2", method), expected, rtol=1e-10, atol=0)


def test_genealogy_mcse_of_one_lineage_is_not_estimable_and_batches_agree():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    one = torch.zeros(4, dtype=torch.long)
    for method in ("mean", "sd"):
        assert math.isnan(float(genealogy_mcse(values, weights, one, torch.tensor(1), method)))
    # Copies of one particle: a spread of 0 from one lineage is no estimate either.
    copies = torch.full((4,), 2.0)
    assert math.isnan(float(genealogy_mcse(copies, weights, one, torch.tensor(3), "sd")))
    constant = torch.ones(4)
    own = torch.arange(4)
    assert float(genealogy_mcse(constant, weights, own, torch.tensor(2), "sd")) == 0.0
    # Two lineages {0, 1} and {2, 3}: deviations -1.5, -0.5 | 0.5, 1.5, each lineage's
    # weighted sum ∓0.5, so V = (4/3)^(R + 1) * 2 * 0.25 with R = 1.
    two = torch.tensor([0, 0, 2, 2])
    got = genealogy_mcse(values, weights, two, torch.tensor(1), "mean")
    assert float(got) == pytest.approx(math.sqrt((4 / 3) ** 2 * 0.5))
    with pytest.raises(ValueError, match="method must be"):
        genealogy_mcse(values, weights, two, torch.tensor(1), "median")
    # A batch of data sets: each column as its own posterior.
    torch.manual_seed(1)
    datasets = [hmm_example.simulate_data(8) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        batch = ic.smc_batch(hmm, datasets, 300, args=(8,), resample="multinomial")
    for index in range(3):
        assert torch.allclose(
            batch.mcse("x_0")[index], batch.posterior(index).mcse("x_0"), rtol=1e-9
        )
