"""Contract tests over every proposal head: shapes, support, finite log-probs, gradients."""

import math

import pytest
import torch
import torch.distributions as D
from torch.distributions import Binomial, Normal, Poisson

import infcomp as ic
import infcomp.nn
from infcomp.nn import InferenceNetwork
from infcomp.nn.heads import (
    HEADS,
    HeadSpec,
    NormalCDFTransform,
    ProposalHead,
    Readout,
    UnsupportedSiteError,
    head_class,
    head_spec,
    location_and_spread,
    make_head,
    unconstraining_transform,
)

# Which head each prior gets: the registry must keep choosing the same ones (saved networks
# and results for a seed depend on it). Vectors moved from "real" and "constrained" to "flow" with the
# network's architecture version 2 (networks saved before are refused on loading).
PRIORS = {
    "normal": (D.Normal(0.5, 2.0), "real"),
    "normal-batch": (D.Normal(torch.zeros(3), 1.0), "real"),
    "mvn": (D.MultivariateNormal(torch.zeros(2), torch.eye(2)), "flow"),
    "independent-normal": (D.Independent(D.Normal(torch.zeros(2), 1.0), 1), "flow"),
    "independent-normal-1": (D.Independent(D.Normal(torch.zeros(1), 1.0), 1), "real"),
    "large-vector": (D.Independent(D.Normal(torch.zeros(300), 1.0), 1), "real"),  # > 256
    "cauchy": (D.Cauchy(1.0, 2.0), "real"),
    "gamma": (D.Gamma(2.0, 1.0), "constrained"),
    "exponential": (D.Exponential(1.5), "constrained"),
    "lognormal": (D.LogNormal(0.0, 1.0), "constrained"),
    "halfnormal": (D.HalfNormal(1.0), "constrained"),
    "beta": (D.Beta(2.0, 2.0), "constrained"),
    "uniform": (D.Uniform(-1.0, 3.0), "constrained"),
    "dirichlet": (D.Dirichlet(torch.ones(3)), "flow"),
    "dirichlet-2": (D.Dirichlet(torch.ones(2)), "constrained"),
    "independent-gamma": (D.Independent(D.Gamma(torch.ones(3), 1.0), 1), "flow"),
    "bernoulli": (D.Bernoulli(0.3), "bernoulli"),
    "categorical": (D.Categorical(torch.tensor([0.1, 0.2, 0.3, 0.4])), "categorical"),
    "binomial": (D.Binomial(10, 0.3), "categorical"),
    "one-hot": (D.OneHotCategorical(torch.ones(3)), "one_hot"),
    "poisson": (D.Poisson(3.0), "count"),
    "geometric": (D.Geometric(0.3), "count"),
    "negative-binomial": (D.NegativeBinomial(5.0, 0.5), "count"),
    "large-binomial": (D.Binomial(1000, 0.5), "count"),
}

LEAD = (5,)
HIDDEN = 8

# Every registered head with each of its example priors: a head added to the registry is
# tested here without touching this file.
EXAMPLES = [
    pytest.param(head, prior, id=f"{head.kind}-{index}")
    for head in HEADS
    for index, prior in enumerate(head.examples())
]


@pytest.mark.parametrize("head", HEADS, ids=lambda head: head.kind)
def test_every_registered_head_has_an_example_prior_and_its_own_kind(head):
    assert issubclass(head, ProposalHead)
    assert head.examples(), f"{head.__name__} gives no example prior for the contract test"
    for prior in head.examples():  # e.g. examples inherited from the head it extends
        kind = head_spec("site", prior).kind
        assert kind == head.kind, f"{head.__name__}'s example {prior} gets the {kind!r} head"
    assert [other.kind for other in HEADS].count(head.kind) == 1
    assert head_class(head.kind) is head


@pytest.mark.parametrize(("head", "prior"), EXAMPLES)
def test_head_contract(head, prior):
    spec = head_spec("site", prior)
    # The registry routes the example to this head (no head earlier in it takes it).
    assert spec.kind == head.kind
    check_contract(prior, spec)


@pytest.mark.parametrize("name", list(PRIORS))
def test_priors_get_the_same_heads_as_before(name):
    prior, kind = PRIORS[name]
    spec = head_spec(name, prior)
    assert spec.kind == kind
    check_contract(prior, spec)


def check_contract(prior, spec):
    head = make_head(spec, HIDDEN, components=3)
    assert type(head) is head_class(spec.kind)
    batched = prior.expand(torch.Size(LEAD) + prior.batch_shape)
    hidden = torch.randn(math.prod(LEAD), HIDDEN, requires_grad=True)
    proposal = head(hidden, batched)
    assert proposal.batch_shape == batched.batch_shape
    assert proposal.event_shape == prior.event_shape
    samples = proposal.sample((7,))
    assert samples.shape == (7,) + batched.batch_shape + prior.event_shape
    # Samples lie in the prior's support, and the prior can score them.
    assert bool(prior.support.check(samples).all())
    assert torch.isfinite(batched.log_prob(samples)).all()
    log_q = proposal.log_prob(samples)
    assert log_q.shape == (7,) + batched.batch_shape
    assert torch.isfinite(log_q).all()
    # Gradients of -log q reach the hidden state and every parameter of the head.
    (-log_q.sum()).backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    for parameter_name, parameter in head.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
    # The network's value features of one sample per row have the declared width.
    rows = math.prod(LEAD)
    features = type(head).value_features(spec, samples[0], rows)
    assert features.shape == (rows, type(head).value_feature_size(spec))
    assert torch.isfinite(features).all()
    # The spec survives saving.
    assert HeadSpec.from_dict(spec.to_dict()) == spec


def test_specs_saved_before_the_registry_still_load():
    # A spec as config_dict wrote it (lists for shapes, the old kind strings).
    saved = {
        "kind": "categorical",
        "natural_shape": [2],
        "event_shape": [],
        "base_event_shape": [],
        "num_categories": 4,
        "lower": 0.0,
        "upper": 3.0,
        "value_dtype": "int64",
        "distribution": "Categorical",
    }
    spec = HeadSpec.from_dict(saved)
    assert spec == head_spec("x", D.Categorical(torch.ones(2, 4)))
    for kind in ("flow", "real", "constrained", "bernoulli", "categorical", "one_hot", "count"):
        assert head_class(kind).kind == kind
    with pytest.raises(ValueError, match="unknown head kind 'wishart'"):
        head_class("wishart")


def test_nn_exports_a_chosen_api_and_keeps_the_old_names_with_a_warning():
    assert infcomp.nn.HEADS is HEADS
    assert "NetworkProposer" not in infcomp.nn.__all__
    for name in infcomp.nn.__all__:
        assert getattr(infcomp.nn, name) is not None
    with pytest.warns(DeprecationWarning, match=r"infcomp.nn.heads.make_head"):
        assert infcomp.nn.make_head is make_head
    with pytest.warns(DeprecationWarning, match=r"infcomp.nn.network.NetworkProposer"):
        from infcomp.nn import NetworkProposer  # noqa: F401
    with pytest.raises(AttributeError):
        infcomp.nn.nothing  # noqa: B018


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        ("normal", 0.15),
        ("poisson", 0.15),
        ("categorical", 0.15),
        ("bernoulli", 0.15),
        ("gamma", 0.5),
        ("beta", 0.5),
    ],
)
def test_an_untrained_head_starts_near_the_prior(name, tolerance):
    # The last layer starts near zero, so q's first two moments are near the prior's. For
    # constrained heads the mean and sd are matched in the unconstrained space (delta
    # method), so in the constrained space they agree only roughly: a wider tolerance.
    prior, _ = PRIORS[name]
    torch.manual_seed(0)
    head = make_head(head_spec(name, prior), HIDDEN, components=1)
    proposal = head(torch.randn(1, HIDDEN), prior.expand((1,)))
    samples = proposal.sample((20000,)).double()
    if isinstance(prior, D.Categorical):  # torch gives no moments of a Categorical
        values = prior.enumerate_support().double()
        mean = float((prior.probs * values).sum())
        sd = float((prior.probs * (values - mean) ** 2).sum().sqrt())
    else:
        mean, sd = float(prior.mean), float(prior.stddev)
    # 20,000 draws: the mean has standard error sd/141, on top of the tolerance.
    assert abs(float(samples.mean()) - mean) < tolerance * sd + 4 * sd / math.sqrt(20000)
    assert abs(float(samples.std()) - sd) < 2 * tolerance * sd


def test_categorical_head_samples_carry_the_prior_dtype():
    for prior, dtype in (
        (D.Categorical(torch.ones(3)), torch.int64),
        (D.Binomial(4, 0.5), torch.float32),
    ):
        head = make_head(head_spec("k", prior), HIDDEN, 3)
        assert head(torch.randn(2, HIDDEN), prior.expand((2,))).sample().dtype == dtype


def test_unsupported_supports_name_the_site():
    with pytest.raises(UnsupportedSiteError, match="site 'counts'.*Multinomial"):
        head_spec("counts", D.Multinomial(5, torch.ones(3)))


def test_location_and_spread_fall_back_sensibly():
    loc, spread = location_and_spread(D.Cauchy(torch.tensor(2.0), torch.tensor(3.0)))
    assert float(loc) == 2.0 and float(spread) == 3.0
    loc, spread = location_and_spread(D.Normal(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])))
    assert torch.equal(loc, torch.tensor([1.0, -1.0])) and torch.equal(
        spread, torch.tensor([2.0, 0.5])
    )


def test_specs_from_batched_priors_describe_one_row():
    # Parameters with a leading batch (stacked simulations) must not leak into the spec.
    for prior in (
        D.Uniform(-torch.ones(51), torch.ones(51)),
        D.Dirichlet(torch.ones(51, 3)),
        D.Gamma(torch.ones(51), 1.0),
    ):
        spec = head_spec("site", prior, lead=1)
        unbatched = head_spec("site", _first(prior))
        assert spec == unbatched
        head = make_head(spec, HIDDEN, 2)
        for rows in (51, 7):
            batched = _first(prior).expand((rows,))
            assert head(torch.randn(rows, HIDDEN), batched).batch_shape == (rows,)


def _first(prior):
    params = {
        name: getattr(prior, name)[0]
        for name in ("low", "high", "concentration", "rate")
        if name in vars(prior)
    }
    return type(prior)(**params)


def test_flow_head_fits_a_correlated_gaussian_posterior():
    # Target: θ | y ~ N(A y, Σ) with correlation 0.8, y ~ N(0, I) fed to the head as its
    # readout. A diagonal proposal can do no better than KL(p ‖ q) = -½ log(1 - 0.8²) =
    # 0.51 nats; the flow must get within 0.1 nats at three values of y (KL estimated
    # from 4000 draws of p, whose Monte Carlo error is checked to be far below that).
    torch.manual_seed(0)
    prior = D.MultivariateNormal(torch.zeros(2), 4 * torch.eye(2))
    spec = head_spec("theta", prior)
    assert spec.kind == "flow"
    head = make_head(spec, HIDDEN, components=1)
    covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    a = torch.tensor([[1.5, 0.0], [0.5, -1.0]])
    with torch.no_grad():  # untrained, it starts near the prior, N(0, 4 I)
        draws = head(torch.randn(1, HIDDEN), prior.expand((1,))).sample((20000,))
    assert torch.allclose(draws.mean((0, 1)), torch.zeros(2), atol=0.2)
    assert torch.allclose(draws.std((0, 1)), torch.full((2,), 2.0), atol=0.2)

    def posterior(y):
        return D.MultivariateNormal(y @ a.T, covariance)

    def readout(y):
        return torch.cat([y, torch.zeros(y.shape[0], HIDDEN - 2)], -1)

    optimizer = torch.optim.Adam(head.parameters(), lr=5e-3)
    for _ in range(200):
        y = torch.randn(128, 2)
        theta = posterior(y).sample()
        loss = -head(readout(y), prior.expand((128,))).log_prob(theta).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for y in torch.tensor([[0.0, 0.0], [1.0, -0.5], [-1.5, 1.0]]):
            target = posterior(y.expand(4000, 2))
            theta = target.sample()
            q = head(readout(y.expand(4000, 2)), prior.expand((4000,)))
            gap = target.log_prob(theta) - q.log_prob(theta)
            stderr = float(gap.std()) / math.sqrt(4000)
            assert stderr < 0.01
            assert float(gap.mean()) < 0.1 + 3 * stderr, (y, float(gap.mean()))


def test_importing_infcomp_leaves_torchs_argument_validation_as_it_was():
    # zuko, which the flow head uses, switches it off for the process when imported.
    import subprocess
    import sys

    script = (
        "from torch.distributions import Distribution\n"
        "assert Distribution._validate_args\n"
        "import infcomp\n"
        "assert Distribution._validate_args\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


# -- integer ranges that differ between the sites of a family, or between particles ------


def binomial_chain(steps: int = 3):
    # k_t ~ Binomial(t, 0.5): one family "k" whose sites have ranges 0..1, 0..2, 0..3;
    # m ~ Binomial(n, 0.3) with n = 1 + Poisson(2): a range that varies between particles.
    total = torch.zeros(())
    for t in range(1, steps + 1):
        total = total + ic.sample(f"k_{t}", Binomial(t, torch.tensor(0.5)))
    n = 1 + ic.sample("n", Poisson(torch.tensor(2.0)))
    m = ic.sample("m", Binomial(n, torch.tensor(0.3)))
    ic.observe("y", Normal(total + m, 1.0))


def binomial_chain_log_evidence(y: float, steps: int = 3) -> float:
    """log p(y) by enumeration (n truncated at 60, where Poisson(2) has no mass left)."""
    from itertools import product

    from scipy.stats import binom, norm, poisson

    total = 0.0
    ranges = [range(t + 1) for t in range(1, steps + 1)]
    for ks in product(*ranges):
        p_k = math.prod(binom.pmf(k, t, 0.5) for t, k in zip(range(1, steps + 1), ks))
        for n0 in range(60):
            for m in range(n0 + 2):
                p = p_k * poisson.pmf(n0, 2.0) * binom.pmf(m, n0 + 1, 0.3)
                total += p * norm.pdf(y, sum(ks) + m, 1.0)
    return math.log(total)


def test_sites_of_a_family_with_different_integer_ranges_get_a_head_each():
    torch.manual_seed(0)
    csis = ic.CSIS(binomial_chain)
    network = csis.network
    ranges = sorted(
        (family.lookup[4], family.spec.kind)
        for family in network.families.values()
        if family.base == "k"
    )
    assert ranges == [
        ((0.0, 1.0), "categorical"),
        ((0.0, 2.0), "categorical"),
        ((0.0, 3.0), "categorical"),
    ]
    varying = [family for family in network.families.values() if family.base == "m"]
    assert [(f.lookup[4], f.spec.kind) for f in varying] == [(None, "count")]
    csis.train(num_simulations=500, max_epochs=2, progress=False)
    # The proposal never leaves a particle's own range: the evidence is the enumerated one.
    post = csis.run({"y": 6.0}, num_particles=4000)
    m, n = post.traces[0]["m"].value, post.traces[0]["n"].value
    assert bool((m <= n + 1).all())
    exact = binomial_chain_log_evidence(6.0)
    assert abs(float(post.log_evidence) - exact) < 4 * float(post.log_evidence_stderr) + 0.01
    # Saved and loaded (also as saved before ranges were in the lookup): the same families.
    rebuilt = InferenceNetwork.from_config_dict(network.config_dict())
    assert [f.lookup for f in rebuilt.families.values()] == [
        f.lookup for f in network.families.values()
    ]
    old = network.config_dict()
    for item in old["families"]:
        item["lookup"] = item["lookup"][:4]
    assert [f.lookup for f in InferenceNetwork.from_config_dict(old).families.values()] == [
        f.lookup for f in network.families.values()
    ]


def test_a_readout_in_two_parts_gives_the_linear_layer_of_its_concatenation():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5 + 3, 4)
    state, shared = torch.randn(6, 2, 5), torch.randn(1, 2, 3)  # shared by the 6 rows
    readout = Readout(state, shared)
    whole = torch.cat([state, shared.expand(6, 2, 3)], -1)
    assert torch.equal(readout.tensor(), whole)
    assert torch.allclose(readout.linear(layer), layer(whole), atol=1e-6)
    head = make_head(head_spec("z", Normal(torch.zeros(6, 2), 1.0), lead=2), 8, 3)
    prior = Normal(torch.zeros(6, 2), 1.0)
    assert torch.allclose(head(readout, prior).mean, head(whole, prior).mean, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_cdf_transform_is_phi_with_its_inverse_and_log_density(dtype):
    x = torch.linspace(-6, 5, 45, dtype=dtype)
    transform = NormalCDFTransform()
    y = transform(x)
    exact = Normal(torch.zeros((), dtype=torch.float64), 1.0).cdf(x.double())
    assert torch.allclose(y.double(), exact, rtol=1e-5, atol=0)  # the lower tail too
    # Near 1, y resolves 1 - Φ(x) only to the dtype's eps (as the logistic does).
    inside = x <= (3 if dtype == torch.float32 else 5)
    back = transform.inv(y)[inside]
    assert torch.allclose(back, x[inside], atol=1e-4 if dtype == torch.float32 else 1e-7)
    slope = torch.autograd.functional.jacobian(lambda t: transform(t).sum(), x.double())
    assert torch.allclose(transform.log_abs_det_jacobian(x, y).double(), slope.log(), atol=1e-6)
    # Far out, y stays inside (0, 1) so that no value lands on an interval's end.
    far = transform(torch.tensor([-40.0, 40.0], dtype=dtype))
    assert bool((far > 0).all() and (far < 1).all())
    assert transform == NormalCDFTransform() and transform != D.transforms.SigmoidTransform()
    assert bool(torch.isfinite(transform.inv(torch.tensor([0.0, 1.0], dtype=dtype))).all())


@pytest.mark.parametrize("head_kind", ["flow", "constrained"])
def test_a_proposal_that_lands_on_an_end_of_its_interval_has_a_finite_log_density(head_kind):
    # In float32, -3 + 6·Φ(x) rounds to -3 for x below about -5.5: a poorly trained head
    # proposes such values (SLCP at 10³ simulations did). Their log-density must stay
    # finite, not NaN from Φ⁻¹(0) = -∞.
    if head_kind == "flow":
        prior = D.Independent(D.Uniform(-3 * torch.ones(5), 3.0), 1)
    else:
        prior = D.Uniform(-3.0, 3.0)
    spec = head_spec("theta", prior)
    assert spec.kind == head_kind
    head = make_head(spec, HIDDEN, components=1)
    proposal = head(torch.randn(2, HIDDEN), prior.expand((2,)))
    ends = torch.stack([torch.full(prior.event_shape, -3.0), torch.full(prior.event_shape, 3.0)])
    assert bool(torch.isfinite(proposal.log_prob(ends)).all())


@pytest.mark.parametrize(
    "prior",
    [
        D.Uniform(-3.0, 3.0),
        D.Uniform(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 5.0])),
        D.Independent(D.Uniform(-3 * torch.ones(5), 3.0), 1),
        D.Beta(2.0, 5.0),
    ],
)
def test_interval_sites_are_unconstrained_by_the_normal_cdf(prior):
    # x ↦ a + (b - a)·Φ(x) pushes N(0, 1) onto exactly Uniform(a, b): a uniform prior is
    # a standard Normal in unconstrained space, with Normal tails where the logistic's
    # are exponential. (Beta's support is the unit interval: Uniform(0, 1).)
    uniform = D.Uniform(0.0, 1.0).expand((3,)) if isinstance(prior, D.Beta) else prior
    transform = unconstraining_transform(prior.support)
    base = D.Normal(torch.zeros(uniform.batch_shape + uniform.event_shape), 1.0)
    if isinstance(uniform, D.Independent):
        base = D.Independent(base, 1)
    pushed = D.TransformedDistribution(base, [transform], validate_args=False)
    value = uniform.sample((1000,))
    # Equal up to float32 rounding in Φ⁻¹ and the affine map (at most 2·10⁻⁶ seen over
    # 10⁵ draws, summed over 5 coordinates).
    assert torch.allclose(pushed.log_prob(value), uniform.log_prob(value), atol=1e-5)


def test_other_supports_keep_torchs_bijections():
    for support in (D.constraints.positive, D.constraints.simplex, D.constraints.real):
        assert type(unconstraining_transform(support)) is type(D.biject_to(support))
    independent = unconstraining_transform(D.constraints.independent(D.constraints.positive, 1))
    assert isinstance(independent, D.transforms.IndependentTransform)
    with pytest.raises(NotImplementedError):
        unconstraining_transform(D.constraints.integer_interval(0, 3))


def test_a_uniform_prior_has_bounded_weights_under_a_wider_normal_proposal():
    # The reason for the Normal CDF: a proposal N(m, s²) in unconstrained space, pushed onto
    # (a, b), has weights p/q against a uniform target that stay bounded near the ends when
    # s > 1 (both tails are Normal); through the logistic they grow without bound (the
    # target's tails there are exponential). Weights at points approaching the lower end:
    prior = D.Uniform(-3.0, 3.0)
    ends = -3.0 + 6.0 * torch.tensor([1e-2, 1e-4, 1e-6, 1e-8], dtype=torch.float64)
    proposal = D.Normal(torch.tensor(0.5, dtype=torch.float64), 1.5)

    def log_weights(transform):
        q = D.TransformedDistribution(proposal, [transform], validate_args=False)
        return -math.log(6.0) - q.log_prob(ends)

    normal_cdf = log_weights(unconstraining_transform(prior.support))
    logistic = log_weights(D.biject_to(prior.support))
    # Bounded: log(s) + max over x of (x - m)²/(2s²) - x²/2 = log 1.5 + m²/(2(s² - 1)).
    assert float(normal_cdf.max()) <= math.log(1.5) + 0.25 / (2 * 1.25) + 1e-9
    assert float(logistic[-1] - logistic[0]) > 5  # grows as the end is approached
