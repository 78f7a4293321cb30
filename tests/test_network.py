"""The automatic inference network: construction, dynamic structure, and compiled
inference against exact answers.

Statistical tolerances are Monte Carlo standard errors of the run itself (sd / √ESS for
means, ``log_evidence_stderr`` for log Ẑ, √(p(1 - p)/ESS) for probabilities), 4 of them
unless said otherwise.
"""

import math
import re
import subprocess
import sys
import warnings

import pytest
import torch
from scipy import stats
from torch.distributions import Bernoulli, Independent, Multinomial, Normal

import infcomp as ic
from infcomp.examples import gaussian as g
from infcomp.examples import hmm
from infcomp.examples.branching import branching, enumerate_posterior
from infcomp.examples.marsaglia import marsaglia
from infcomp.nn import InferenceNetwork, NetworkConfig, UnsupportedSiteError
from infcomp.nn.network import ATTENTION_MIN_OBSERVATIONS, split_index

pytestmark = [
    pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning"),
    pytest.mark.filterwarnings("ignore::infcomp.VectorizationNotice"),
]


def compiled(model, steps, batch_size=128, seed=0, **options):
    torch.manual_seed(seed)
    csis = ic.CSIS(model, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        csis.train(steps, batch_size, progress=False, validate_every=steps)
    return csis


def mean_error(post, quantity):
    return float(post.std(quantity)) / math.sqrt(float(post.ess))


def test_split_index():
    assert split_index("x_12") == ("x", 12)
    assert split_index("x12") == ("x", 12)
    assert split_index("x[3]") == ("x", 3)
    assert split_index("z") == ("z", None)
    assert split_index("7") == ("7", None)
    assert split_index("layer_2_weight") == ("layer_2_weight", None)


# -- construction ---------------------------------------------------------------------------


def test_the_network_is_built_from_the_model():
    csis = ic.CSIS(hmm.hmm, args=(16,))
    network = csis.network
    assert network is not None
    # Sixteen Categorical(3) latents x_0 .. x_15 share one family; one embedding per y_t.
    assert len(network.families) == 1
    (family,) = network.families.values()
    assert (
        family.base == "x" and family.spec.kind == "categorical" and family.spec.num_categories == 3
    )
    assert sorted(network.observations) == sorted(f"y_{t}" for t in range(16))
    assert len(list(csis.optimizer.param_groups[0]["params"])) == len(list(network.parameters()))


def test_sites_without_a_head_are_named_or_proposed_from_the_prior_on_request():
    def allocation():
        counts = ic.sample("counts", Multinomial(10, torch.ones(3)))
        ic.observe("y", Normal(counts[..., 0], 1.0))

    with pytest.raises(UnsupportedSiteError, match="site 'counts'.*Multinomial") as error:
        ic.CSIS(allocation)
    # Follow the message's advice to the letter: each option it names must work.
    advice = re.findall(r"network=(NetworkConfig\(.*?\)\))", str(error.value))
    assert advice == [
        "NetworkConfig(prior_sites=('counts',))",
        "NetworkConfig(prior_sites=('*unsupported*',))",
    ]
    for option in advice:
        csis = ic.CSIS(allocation, network=eval(option, {"NetworkConfig": NetworkConfig}))
        csis.step(batch_size=16)
        post = csis.run({"y": 4.0}, num_particles=200)
        # Proposed from the prior: the weights are the likelihood alone.
        counts = post.values("counts")
        expected = Normal(counts[:, 0], 1.0).log_prob(torch.tensor(4.0)).double()
        assert torch.allclose(post.log_weights, expected, atol=1e-5)


def test_network_options_are_rejected_with_a_user_guide():
    with pytest.raises(ValueError, match="automatic network"):
        ic.CSIS(g.gaussian, lambda observations=None: None, network=NetworkConfig())


# -- compiled inference against exact answers ------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_csis():
    return compiled(g.gaussian, 1000, batch_size=256)


def test_gaussian_automatic_network_is_nearly_exact(gaussian_csis):
    post = gaussian_csis.run(g.DATA, num_particles=1000)
    assert float(post.ess) >= 0.9 * 1000
    assert abs(float(post.mean("z")) - 7.25) < 4 * mean_error(post, "z")
    assert abs(float(post.log_evidence) - g.exact_log_evidence()) < 4 * float(
        post.log_evidence_stderr
    )


def test_vectorized_and_sequential_network_proposals_agree(gaussian_csis):
    torch.manual_seed(1)
    batched = gaussian_csis.run(g.DATA, num_particles=2000, vectorize=True)
    torch.manual_seed(2)
    single = gaussian_csis.run(g.DATA, num_particles=2000, vectorize=False)
    assert stats.ks_2samp(batched.values("z").numpy(), single.values("z").numpy()).pvalue > 1e-3
    assert stats.ks_2samp(batched.log_weights.numpy(), single.log_weights.numpy()).pvalue > 1e-3


def test_defensive_mixture_bounds_the_weights(gaussian_csis):
    epsilon = 0.2
    post = gaussian_csis.run(g.DATA, num_particles=2000, defensive=epsilon)
    z = post.values("z")
    likelihood = (
        Normal(z, 2**0.5).log_prob(torch.tensor(8.0))
        + Normal(z, 2**0.5).log_prob(torch.tensor(9.0))
    ).double()
    # p(z) / q'(z) <= 1/ε, so log w <= log p(y | z) - log ε.
    assert (post.log_weights <= likelihood - math.log(epsilon) + 1e-4).all()
    assert abs(float(post.mean("z")) - 7.25) < 4 * mean_error(post, "z")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        gaussian_csis.run(g.DATA, num_particles=10, defensive=1.5)


def mixed():
    c = ic.sample("c", Bernoulli(0.3))
    mu = ic.sample("mu", Normal(6 * c - 3, 1.0))
    ic.observe("y1", Normal(mu, 1.0))
    ic.observe("y2", Normal(mu, 1.0))


def mixed_exact(y1, y2):
    """p(c = 1 | y), E[mu | y] and log p(y): for each c, (y1, y2) ~ N(m_c 1, I + 11ᵀ)."""
    y = torch.tensor([y1, y2], dtype=torch.float64)
    covariance = torch.eye(2, dtype=torch.float64) + torch.ones(2, 2, dtype=torch.float64)
    log_joint, means = [], []
    for c, prior in ((0, 0.7), (1, 0.3)):
        m = 6.0 * c - 3.0
        marginal = torch.distributions.MultivariateNormal(
            torch.full((2,), m, dtype=torch.float64), covariance
        )
        log_joint.append(math.log(prior) + float(marginal.log_prob(y)))
        means.append((m + float(y.sum())) / 3)  # posterior precision 1 + 2, mean (m + y1 + y2)/3
    log_evidence = float(torch.tensor(log_joint).logsumexp(0))
    p1 = math.exp(log_joint[1] - log_evidence)
    return p1, (1 - p1) * means[0] + p1 * means[1], log_evidence


def test_mixed_discrete_and_continuous_latents():
    csis = compiled(mixed, 500)
    data = {"y1": 1.0, "y2": 2.0}
    p1, mean_mu, log_evidence = mixed_exact(1.0, 2.0)
    post = csis.run(data, num_particles=4000)
    prior = ic.importance(mixed, data, num_particles=4000)
    ess = float(post.ess)
    assert ess > float(prior.ess)
    assert abs(float(post.mean("c")) - p1) < 4 * math.sqrt(p1 * (1 - p1) / ess)
    assert abs(float(post.mean("mu")) - mean_mu) < 4 * mean_error(post, "mu")
    assert abs(float(post.log_evidence) - log_evidence) < 4 * float(post.log_evidence_stderr)


@pytest.mark.slow  # minutes of training; the fast path: test_the_slow_models_compile_briefly
def test_branching_model_with_poisson_latents_matches_enumeration():
    csis = compiled(branching, 300, batch_size=64)
    posterior_k, log_evidence = enumerate_posterior(7.0)
    post = csis.run({"y": 7.0}, num_particles=3000)
    prior = ic.importance(branching, {"y": 7.0}, num_particles=3000)
    ess = float(post.ess)
    assert ess > float(prior.ess)
    exact_mean = float((posterior_k * torch.arange(80, dtype=torch.float64)).sum())
    assert abs(float(post.mean("k")) - exact_mean) < 4 * mean_error(post, "k")
    p_branch = float(posterior_k[5:].sum())
    estimate = float(post.mean(lambda trace: (trace["k"].value > 4).double()))
    assert abs(estimate - p_branch) < 4 * math.sqrt(p_branch * (1 - p_branch) / ess)
    assert abs(float(post.log_evidence) - log_evidence) < 4 * float(post.log_evidence_stderr)


@pytest.mark.slow  # minutes of training; the fast path: test_the_slow_models_compile_briefly
def test_hmm_with_one_categorical_site_per_step():
    torch.manual_seed(1)
    data = hmm.simulate_data(16)
    csis = compiled(hmm.hmm, 600, batch_size=128, args=(16,), learning_rate=3e-3)
    post = csis.run(data, num_particles=4000)
    prior = ic.importance(hmm.hmm, data, num_particles=4000, args=(16,))
    ess = float(post.ess)
    assert ess > 4 * float(prior.ess)
    assert abs(float(post.log_evidence) - hmm.forward_log_evidence(data, 16)) < 4 * float(
        post.log_evidence_stderr
    )
    marginals = hmm.posterior_marginals(data, 16)
    for t in range(16):
        for k in range(3):
            p = float(marginals[t, k])
            estimate = float(
                post.mean(lambda trace, t=t, k=k: (trace[f"x_{t}"].value == k).double())
            )
            # 48 comparisons: 4.5 standard errors each.
            assert abs(estimate - p) < 4.5 * math.sqrt(max(p * (1 - p), 1e-3) / ess), (t, k)


@pytest.mark.slow  # minutes of training; the fast path: test_the_slow_models_compile_briefly
def test_marsaglia_with_a_varying_number_of_sites():
    csis = compiled(marsaglia, 500, batch_size=64, learning_rate=3e-3)
    assert csis.simulator.vectorize is False
    assert {family.base for family in csis.network.families.values()} == {"u", "v"}
    torch.manual_seed(3)
    post = csis.run(g.DATA, num_particles=1500, vectorize=False)
    torch.manual_seed(3)
    prior = ic.importance(marsaglia, g.DATA, num_particles=1500, vectorize=False)
    assert float(post.ess) > 2 * float(prior.ess)  # 500 steps: clearly better than the prior
    returned = lambda trace: trace.return_value
    assert abs(float(post.mean(returned)) - 7.25) < 4 * mean_error(post, returned)
    assert abs(float(post.log_evidence) - g.exact_log_evidence()) < 4 * float(
        post.log_evidence_stderr
    )


# The three tests above are slow (they train until the proposal is good). The same code
# paths, briefly: a categorical site family over a loop (HMM), Poisson count heads in a
# branching structure, and a varying number of sites run particle by particle (Marsaglia).
# A barely trained network is still a valid proposal: the evidence estimate must hold.
@pytest.mark.parametrize(
    ("model", "args", "data", "families", "exact_log_evidence"),
    [
        (
            hmm.hmm,
            (4,),
            {f"y_{t}": y for t, y in enumerate((-1.0, 0.2, 1.4, 1.6))},
            {"x"},
            lambda data: hmm.forward_log_evidence(data, 4),
        ),
        (branching, (), {"y": 7.0}, {"k", "m"}, lambda data: enumerate_posterior(7.0)[1]),
        (marsaglia, (), g.DATA, {"u", "v"}, lambda data: g.exact_log_evidence()),
    ],
    ids=["hmm", "branching", "marsaglia"],
)
def test_the_slow_models_compile_briefly(model, args, data, families, exact_log_evidence):
    csis = compiled(model, 20, batch_size=32, args=args)
    assert {family.base for family in csis.network.families.values()} == families
    post = csis.run(data, num_particles=300)
    assert post.num_particles == 300
    assert abs(float(post.log_evidence) - exact_log_evidence(data)) < 4 * float(
        post.log_evidence_stderr
    )


# -- dynamic structure -------------------------------------------------------------------------


def test_a_site_first_seen_in_training_gets_modules_without_resetting_the_optimizer():
    calls = {"count": 0}

    def growing():
        calls["count"] += 1
        z = ic.sample("z", Normal(0.0, 1.0))
        if calls["count"] > 3:  # the probe and the first steps never see "late"
            z = z + ic.sample("late", Normal(0.0, 1.0))
        ic.observe("y", Normal(z, 1.0))

    csis = ic.CSIS(growing, validation_size=0)
    network = csis.network
    assert {f.base for f in network.families.values()} == {"z"}
    core = network.core.weight_ih
    csis.step(batch_size=8)
    assert "late" not in {f.base for f in network.families.values()}
    for _ in range(4):
        csis.step(batch_size=8)
    assert {f.base for f in network.families.values()} == {"z", "late"}
    assert len(csis.optimizer.param_groups) == 2
    # The core's Adam state kept counting through the addition: five steps, not reset.
    assert float(csis.optimizer.state[core]["step"]) == 5
    late = next(f for f in network.families.values() if f.base == "late")
    head_parameters = list(network.heads[late.key].parameters())
    assert all(float(csis.optimizer.state[p]["step"]) >= 1 for p in head_parameters)


def test_a_site_never_seen_in_training_is_proposed_from_its_prior(gaussian_csis):
    def extended():
        z = ic.sample("z", Normal(1.0, 5**0.5))
        ic.sample("nuisance", Normal(10.0, 2.0))
        ic.observe("x1", Normal(z, 2**0.5))
        ic.observe("x2", Normal(z, 2**0.5))

    with warnings.catch_warnings():
        warnings.filterwarnings("error", "latent site")  # never seen by name: no warning
        post = ic.importance(extended, g.DATA, num_particles=4000, guide=gaussian_csis.network)
    nuisance = post.values("nuisance")
    # The nuisance site is drawn from its prior and leaves the weights alone...
    assert stats.kstest(nuisance.numpy(), stats.norm(10, 2).cdf).pvalue > 1e-3
    # ... and the network carries on: z is still proposed well (the core saw one extra step).
    assert float(post.ess) > 0.5 * 4000
    assert abs(float(post.mean("z")) - 7.25) < 4 * mean_error(post, "z")


def vector_site(d=3):
    w = ic.sample("w", Independent(Normal(torch.zeros(d), 1.0), 1))
    ic.observe("y", Independent(Normal(w.sum(-1, keepdim=True), 0.1), 1))


def test_a_known_site_of_another_shape_is_proposed_from_its_prior_with_a_warning():
    csis = ic.CSIS(vector_site, args=(3,))
    data = {"y": torch.tensor([1.5])}
    message = (
        r"latent site 'w' \(Independent, shape \(2,\)\) is not what the inference network "
        r"was compiled on, \(Independent, shape \(3,\)\): it is proposed from its prior"
    )
    with pytest.warns(ic.InferenceWarning, match=message):
        post = csis.run(2, observations=data, num_particles=50)
    # The prior's draws: log q is the prior's, so the weights are the likelihood's.
    w = post.values("w")
    likelihood = Normal(w.sum(-1), 0.1).log_prob(torch.tensor(1.5)).double()
    assert torch.allclose(post.log_weights, likelihood, atol=1e-4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "latent site")  # once per network and variant
        csis.run(2, observations=data, num_particles=50)
        csis.run(3, observations=data, num_particles=50)  # the compiled shape: silent


# -- options -------------------------------------------------------------------------------


def test_prior_inflation_widens_simulated_latents_only():
    z = ic.JointSimulator(g.gaussian, prior_inflation=3.0)(20_000).traces[0]
    assert stats.kstest(z["z"].value.numpy(), stats.norm(1, 3 * 5**0.5).cdf).pvalue > 1e-3
    noise = (z["x1"].value - z["z"].value).numpy()
    assert stats.kstest(noise, stats.norm(0, 2**0.5).cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="at least 1"):
        ic.JointSimulator(g.gaussian, prior_inflation=0.5)
    # Trained on the widened joint, the network learns p_inflated(z | x): posterior
    # N(8.2, 0.98) instead of N(7.25, 0.91); as a proposal for the true posterior that
    # still gives ESS/N near 0.4, against 0.008 for the prior.
    csis = compiled(g.gaussian, 300, batch_size=256, prior_inflation=2.0)
    assert float(csis.run(g.DATA, num_particles=1000).ess) > 0.2 * 1000


def test_save_and_load_an_automatic_network(tmp_path):
    calls = {"count": 0}

    def growing():
        calls["count"] += 1
        z = ic.sample("z", Normal(0.0, 1.0))
        if calls["count"] > 66:  # after the 64 simulations that build the network
            z = z + ic.sample("late", Normal(0.0, 1.0))
        ic.observe("y", Normal(z, 1.0))

    # Trace by trace, so that both runs below draw their simulations alike.
    csis = ic.CSIS(growing, validation_size=0, vectorize=False)
    csis.train(5, batch_size=8, progress=False)
    assert len(csis.optimizer.param_groups) == 2
    path = tmp_path / "growing.pt"
    csis.save(path)
    loaded = ic.CSIS.load(path, growing, validation_size=0, vectorize=False)
    assert loaded.num_steps == 5
    for (name, a), (_, b) in zip(
        csis.network.state_dict().items(), loaded.network.state_dict().items()
    ):
        assert torch.equal(a, b), name
    losses = []
    for run in (csis, loaded):
        torch.manual_seed(11)
        losses.append([run.step(batch_size=8) for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_loaded_network_gives_the_same_proposal_in_a_fresh_process(gaussian_csis, tmp_path):
    path = tmp_path / "gaussian.pt"
    gaussian_csis.save(path)
    script = (
        "import sys, torch, infcomp as ic\n"
        "from infcomp.examples.gaussian import gaussian, DATA\n"
        "csis = ic.CSIS.load(sys.argv[1], gaussian)\n"
        "torch.manual_seed(5)\n"
        "post = csis.run(DATA, num_particles=5)\n"
        "print(' '.join(repr(float(v)) for v in post.log_weights))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    torch.manual_seed(5)
    expected = gaussian_csis.run(g.DATA, num_particles=5).log_weights
    assert [float(v) for v in out.stdout.split()] == pytest.approx(expected.tolist(), abs=1e-9)


def vector_model():
    theta = ic.sample("theta", Independent(Normal(torch.zeros(3), 2.0), 1))
    ic.observe("x", Independent(Normal(theta, 1.0), 1))


def test_vector_sites_get_a_flow_head_unless_turned_off_and_it_survives_saving():
    torch.manual_seed(0)
    trace = ic.trace(ic.uncondition(vector_model)).get_trace()
    network = InferenceNetwork.from_traces([trace])
    assert [f.spec.kind for f in network.families.values()] == ["flow"]
    off = InferenceNetwork.from_traces([trace], NetworkConfig(flows=False))
    assert [f.spec.kind for f in off.families.values()] == ["real"]
    joint = ic.JointSimulator(vector_model)(16).traces[0]
    rebuilt = InferenceNetwork.from_config_dict(network.config_dict())
    rebuilt.load_state_dict(network.state_dict())
    assert torch.equal(rebuilt.log_prob_trace(joint), network.log_prob_trace(joint))
    old = network.config_dict()
    del old["version"]  # as saved before the heads read the observation context
    with pytest.raises(ValueError, match="architecture version 1.*compile the model anew"):
        InferenceNetwork.from_config_dict(old)
    old["version"] = 2  # as saved before interval sites went through the Normal CDF
    with pytest.raises(ValueError, match="version 2.*interval sites.*compile the model anew"):
        InferenceNetwork.from_config_dict(old)


def test_observations_are_standardized_with_the_simulations_that_build_the_network():
    torch.manual_seed(0)
    csis = ic.CSIS(g.gaussian)  # x1, x2 ~ N(1, √7) marginally
    for name in ("x1", "x2"):
        embedding = csis.network.observation_embeddings[csis.network.observations[name].key]
        # 64 simulations: the mean within 4 standard errors, the sd within 30%.
        assert abs(float(embedding.loc) - 1.0) < 4 * math.sqrt(7 / 64)
        assert abs(float(embedding.scale) / math.sqrt(7) - 1) < 0.3


# -- attention over observe sites ----------------------------------------------------------


@pytest.mark.parametrize(("steps", "expected"), [(3, False), (4, True), (16, True)])
def test_attention_is_decided_from_the_number_of_observe_sites(steps, expected):
    # ATTENTION_MIN_OBSERVATIONS = 4: the HMM with 4 or more emissions attends, the
    # Gaussian's two observations and a directly built network do not; the decision is
    # kept in the config (so that a saved network rebuilds the same).
    assert ATTENTION_MIN_OBSERVATIONS == 4
    joint = ic.JointSimulator(hmm.hmm)(2, args=(steps,)).traces[0]
    network = InferenceNetwork.from_traces([joint])
    assert network.config.attention is expected
    assert (network.attention is not None) is expected
    assert InferenceNetwork.from_config_dict(network.config_dict()).config.attention is expected
    assert ic.CSIS(g.gaussian).network.config.attention is False
    assert InferenceNetwork().config.attention is False
    assert InferenceNetwork.from_traces([joint], NetworkConfig(attention=False)).attention is None


def test_attention_over_observe_sites_batches_saves_and_proposes(tmp_path):
    torch.manual_seed(0)
    config = NetworkConfig(attention=True)
    joint = ic.JointSimulator(hmm.hmm)(8, args=(4,)).traces[0]
    network = InferenceNetwork.from_traces([joint], config)
    names = [f"y_{t}" for t in range(4)]
    weights = network.attention_weights("x_2", names).detach()
    assert weights.shape == (4,) and torch.all(weights > 0)
    assert abs(float(weights.sum()) - 1) < 1e-6
    batched = network.log_prob_trace(joint)
    assert batched.shape == (8,) and torch.isfinite(batched).all()
    rebuilt = InferenceNetwork.from_config_dict(network.config_dict())
    rebuilt.load_state_dict(network.state_dict())
    assert torch.equal(rebuilt.log_prob_trace(joint), batched)
    with pytest.raises(ValueError, match=r"observe sites \['z_0'\] are not known"):
        network.attention_weights("x_0", ["z_0"])
    off = InferenceNetwork.from_traces([joint], NetworkConfig(attention=False))
    with pytest.raises(ValueError, match="no attention"):
        off.attention_weights("x_0", names)
    # Compiled briefly, saved and loaded: still a valid proposal (rows share their state
    # until values differ, here 300 particles for one data set).
    csis = compiled(hmm.hmm, 20, batch_size=32, args=(4,), network=config)
    path = tmp_path / "attention.pt"
    csis.save(path)
    loaded = ic.CSIS.load(path, hmm.hmm, args=(4,))
    data = {f"y_{t}": y for t, y in enumerate((-1.0, 0.2, 1.4, 1.6))}
    post = loaded.run(data, num_particles=300)
    assert abs(float(post.log_evidence) - hmm.forward_log_evidence(data, 4)) < 4 * float(
        post.log_evidence_stderr
    )


def test_the_core_step_is_the_lstm_cell_with_the_shared_input_broadcast():
    # NetworkProposer._step multiplies the input's data-set part once per data set: the
    # same arithmetic as nn.LSTMCell on the whole input of every particle.
    torch.manual_seed(0)
    network = InferenceNetwork.from_traces(ic.JointSimulator(g.gaussian)(4).traces)
    data = {"x1": torch.tensor([8.0, -1.0]), "x2": torch.tensor([9.0, 0.5])}
    proposer = network.proposer(data, (3, 2), data_batch_ndim=1)
    c = network.config
    proposer.lead = torch.Size((3, 2))
    proposer.hidden = torch.randn(6, c.hidden_size)
    proposer.cell = torch.randn(6, c.hidden_size)
    proposer.previous = torch.randn(6, c.value_size)
    shared = torch.randn(2, c.observation_size + c.address_size + 8)
    hidden, cell = proposer._step(shared)
    full = torch.cat([shared.expand(3, 2, -1).reshape(6, -1), proposer.previous], dim=-1)
    expected_hidden, expected_cell = network.core(full, (proposer.hidden, proposer.cell))
    assert torch.allclose(hidden, expected_hidden, atol=1e-6)
    assert torch.allclose(cell, expected_cell, atol=1e-6)


def test_groups_of_many_structures_are_scored_together_as_group_by_group():
    from infcomp.examples.marsaglia import marsaglia

    torch.manual_seed(0)
    csis = ic.CSIS(marsaglia, vectorize=False, validation_size=0)
    dataset = csis.simulate(600)
    csis.train(dataset=dataset, max_epochs=1, progress=False)
    batch = dataset.minibatch(torch.arange(len(dataset)))
    assert len(batch.traces) >= 3  # rejection loops of 1, 2, 3, ... attempts
    network = csis.network
    together = network.log_prob_groups(batch.traces)
    alone = torch.cat([network.log_prob_trace(trace) for trace in batch.traces])
    assert torch.allclose(together, alone, atol=1e-5)
    parameters = [p for p in network.parameters() if p.requires_grad]
    grads = [
        torch.autograd.grad(total.sum(), parameters, allow_unused=True)
        for total in (network.log_prob_groups(batch.traces), alone)
    ]
    for merged, single in zip(*grads):
        if merged is not None or single is not None:
            assert torch.allclose(merged, single, atol=1e-4, rtol=1e-4)
