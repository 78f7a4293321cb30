import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.distributions import Normal, Uniform

import infcomp as ic
from infcomp.examples import gaussian as g
from infcomp.examples.marsaglia import marsaglia

DATA = g.DATA


def exact_guide(prior_mean=g.PRIOR_MEAN, observations=None):
    """The exact posterior as a guide: every weight equals p(x1, x2)."""
    exact = g.exact_posterior(float(observations["x1"]), float(observations["x2"]), prior_mean)
    ic.sample("z", Normal(exact.mean.float(), exact.stddev.float()))


class LearnableGuide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.tensor(7.0))
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, prior_mean=1.0, observations=None):
        ic.sample("z", Normal(self.loc, self.log_scale.exp()))


# -- proposals --------------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", [True, False])
def test_the_exact_posterior_as_guide_gives_equal_weights_and_the_exact_evidence(vectorize):
    post = ic.importance(
        g.gaussian, DATA, num_particles=500, guide=exact_guide, vectorize=vectorize
    )
    # log w = log p(x, y) - log p(x | y) = log p(y) for every particle, up to float32 rounding.
    assert torch.allclose(
        post.log_weights, torch.tensor(g.exact_log_evidence(), dtype=torch.float64), atol=1e-4
    )
    assert float(post.ess) == pytest.approx(500, rel=1e-6)
    assert float(post.log_evidence_stderr) < 1e-3


def test_a_module_guide_gets_the_model_arguments_and_no_gradients_are_tracked():
    guide = LearnableGuide()
    post = ic.importance(g.gaussian, DATA, num_particles=1000, guide=guide, args=(1.0,))
    assert post.values("z").shape == (1000,)
    assert not post.log_weights.requires_grad
    # The proposal N(7, 1) is close to N(7.25, 0.913): ESS/N ≈ 0.96 by numeric integration.
    assert float(post.ess) > 800


def test_guide_weights_follow_the_formula():
    post = ic.importance(g.gaussian, DATA, num_particles=50, guide=LearnableGuide())
    z = post.values("z")
    expected = (
        Normal(1.0, 5**0.5).log_prob(z)
        + Normal(z, 2**0.5).log_prob(torch.tensor(8.0))
        + Normal(z, 2**0.5).log_prob(torch.tensor(9.0))
        - Normal(7.0, 1.0).log_prob(z)
    )
    assert torch.allclose(post.log_weights, expected.double(), atol=1e-5)


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_prior_weights_are_the_likelihood():
    post = ic.importance(g.gaussian, DATA, num_particles=50)
    z = post.values("z")
    expected = Normal(z, 2**0.5).log_prob(torch.tensor(8.0)) + Normal(z, 2**0.5).log_prob(
        torch.tensor(9.0)
    )
    assert torch.allclose(post.log_weights, expected.double(), atol=1e-5)
    assert torch.equal(post.values("x1"), torch.full((50,), 8.0))


def test_factors_add_to_the_weight():
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.factor("tilt", 2 * z)

    post = ic.importance(model, num_particles=10)
    assert torch.allclose(post.log_weights, 2 * post.values("z").double())


def test_model_arguments_and_fixed_observations():
    def model(prior_mean, n):
        z = ic.sample("z", Normal(prior_mean, 1.0))
        for i in range(n):
            ic.observe(f"x_{i}", Normal(z, 1.0), value=float(i))

    post = ic.importance(model, num_particles=20, kwargs={"prior_mean": 3.0, "n": 2})
    z = post.values("z")
    expected = Normal(z, 1.0).log_prob(torch.tensor(0.0)) + Normal(z, 1.0).log_prob(
        torch.tensor(1.0)
    )
    assert torch.allclose(post.log_weights, expected.double(), atol=1e-5)


# -- vectorized and particle-by-particle paths ------------------------------------------


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_both_paths_agree_in_distribution():
    n = 4000
    torch.manual_seed(1)
    batched = ic.importance(g.gaussian, DATA, num_particles=n, vectorize=True)
    torch.manual_seed(2)
    single = ic.importance(g.gaussian, DATA, num_particles=n, vectorize=False)
    # The proposal draws and the log weights have the same distribution on both paths.
    assert stats.ks_2samp(batched.values("z").numpy(), single.values("z").numpy()).pvalue > 1e-3
    assert stats.ks_2samp(batched.log_weights.numpy(), single.log_weights.numpy()).pvalue > 1e-3
    # And the estimates agree within their combined Monte Carlo error (4 standard errors).
    difference = batched.log_evidence - single.log_evidence
    tolerance = 4 * math.hypot(
        float(batched.log_evidence_stderr), float(single.log_evidence_stderr)
    )
    assert abs(float(difference)) < tolerance


def test_both_paths_agree_with_a_guide():
    torch.manual_seed(3)
    batched = ic.importance(
        g.gaussian, DATA, num_particles=3000, guide=LearnableGuide(), vectorize=True
    )
    torch.manual_seed(4)
    single = ic.importance(
        g.gaussian, DATA, num_particles=3000, guide=LearnableGuide(), vectorize=False
    )
    assert stats.ks_2samp(batched.log_weights.numpy(), single.log_weights.numpy()).pvalue > 1e-3


def test_a_model_that_cannot_be_vectorized_falls_back_once_with_a_notice():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            post = ic.importance(marsaglia, DATA, num_particles=20)
    notices = [w for w in caught if issubclass(w.category, ic.VectorizationNotice)]
    assert len(notices) == 1
    assert "model 'marsaglia' runs one trace at a time" in str(notices[0].message)
    assert notices[0].filename == __file__
    assert post.num_particles == 20


def test_forcing_the_vectorized_path_on_such_a_model_raises():
    with pytest.raises(ic.VectorizationError, match="marsaglia"):
        ic.importance(marsaglia, DATA, num_particles=20, vectorize=True)


def test_forcing_the_sequential_path_gives_no_notice():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ic.VectorizationNotice)
        post = ic.importance(marsaglia, DATA, num_particles=20, vectorize=False)
    # Sites vary between particles: traces are grouped by structure, particles all kept.
    assert sum(post.sizes) == 20
    assert post.values(lambda trace: trace.return_value).shape == (20,)


# -- bad input ----------------------------------------------------------------------------


def test_unknown_observation_names_are_listed():
    with pytest.raises(
        ic.ModelError, match=r"data names \['x3'\].*observe sites are \['x1', 'x2'\]"
    ):
        ic.importance(g.gaussian, {"x1": 8.0, "x2": 9.0, "x3": 1.0}, num_particles=10)


def test_missing_observations_name_the_site():
    with pytest.raises(ic.ModelError, match="observe site 'x2' has no observed value"):
        ic.importance(g.gaussian, {"x1": 8.0}, num_particles=10)


def test_wrong_shapes_and_values_outside_the_support_name_the_site():
    with pytest.raises(
        ic.ModelError, match=r"'x1': the observed value has shape \(2,\) but Normal has shape \(\)"
    ):
        ic.importance(g.gaussian, {"x1": [8.0, 1.0], "x2": 9.0}, num_particles=10)

    def coin():
        r = ic.sample("r", Uniform(0.0, 1.0))
        ic.observe("flip", torch.distributions.Bernoulli(r))

    with pytest.raises(ic.ModelError, match="observe site 'flip'.*outside the support"):
        ic.importance(coin, {"flip": 2.0}, num_particles=10)


def test_duplicate_site_names_are_an_error():
    def twice():
        ic.sample("z", Normal(0.0, 1.0))
        ic.sample("z", Normal(0.0, 1.0))

    with pytest.raises(ic.ModelError, match="'z' is used twice"):
        ic.importance(twice, num_particles=10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_particles"):
        ic.importance(g.gaussian, DATA, num_particles=0)
    with pytest.raises(ValueError, match="num_particles"):
        ic.importance(g.gaussian, DATA, num_particles=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vectorize"):
        ic.importance(g.gaussian, DATA, num_particles=5, vectorize="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the model must be a callable .*, got NoneType: None"):
        ic.importance(None, DATA)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "count", [np.int64(30), np.int32(30), torch.tensor(30), 30], ids=["np64", "np32", "0-d", "int"]
)
def test_any_integer_is_a_number_of_particles(count):
    post = ic.importance(g.gaussian, DATA, count)
    assert post.num_particles == 30 and type(post.num_particles) is int


@pytest.mark.parametrize(
    "count", [True, 30.0, np.float64(30), torch.tensor(30.0), torch.tensor([30]), "30"]
)
def test_bools_floats_and_vectors_are_no_number_of_particles(count):
    with pytest.raises(ValueError, match=r"num_particles must be a positive integer, got"):
        ic.importance(g.gaussian, DATA, count)


@pytest.mark.parametrize("where", ["data", "fixed value", "condition"])
def test_a_value_that_is_no_number_names_its_site(where):
    def fixed():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.observe("x", Normal(z, 1.0), value="high")

    def observed():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.observe("x", Normal(z, 1.0))

    expected = (
        r"site 'x' must be a number, a tensor or a \(nested\) list of numbers, got str 'high'"
    )
    with pytest.raises(ic.ModelError, match=expected):
        if where == "data":
            ic.importance(observed, {"x": "high"}, 10)
        elif where == "fixed value":
            ic.importance(fixed, None, 10)
        else:
            ic.condition(observed, data={"x": "high"})()


# -- precision --------------------------------------------------------------------------


def test_data_beyond_the_float32_range_name_the_site_and_the_remedy():
    with pytest.raises(
        ic.ModelError, match=r"data for site 'x1' \(1e\+40\) overflows torch.float32"
    ):
        ic.importance(g.gaussian, {"x1": 1e40, "x2": 0.0}, 10)


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_float32_model_whose_log_density_overflows_says_so(vectorize):
    # 1e20 fits float32, its square does not: log N(1e20; z, 2) is -inf in float32,
    # about -2.5e39 in float64. That is no "zero weight".
    with pytest.raises(ic.ModelError, match=r"observe site 'x1'.* -inf in torch.float32 .*float64"):
        ic.importance(g.gaussian, {"x1": 1e20, "x2": 1e20}, 10, vectorize=vectorize)
    # with the exact posterior as guide the overflow is in the prior of z first
    with pytest.raises(ic.ModelError, match=r"site 'z'.*set_default_dtype\(torch.float64\)"):
        ic.importance(g.gaussian, {"x1": 1e20, "x2": 1e20}, 10, guide=exact_guide)


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_float64_data_are_scored_in_float64():
    # A float32 model; the data in float64 tensors: every particle gets a finite weight.
    data = {name: torch.tensor(1e20, dtype=torch.float64) for name in ("x1", "x2")}
    post = ic.importance(g.gaussian, data, 100)
    assert post.num_zero_weights == 0 and bool(post.log_evidence.isfinite())


def test_in_float64_large_data_give_the_exact_evidence():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:

        def float64_exact_guide(prior_mean=g.PRIOR_MEAN, observations=None):
            x1, x2 = float(observations["x1"]), float(observations["x2"])
            ic.sample("z", g.exact_posterior(x1, x2, prior_mean))

        post = ic.importance(g.gaussian, {"x1": 1e20, "x2": 2e20}, 20, guide=float64_exact_guide)
        exact = g.exact_log_evidence(1e20, 2e20)  # about -6.8e39, in float64
    finally:
        torch.set_default_dtype(default)
    # Every weight is the evidence, up to float64 rounding of terms of about 1e40.
    assert float(post.log_evidence) == pytest.approx(exact, rel=1e-12)


def test_a_guide_that_misses_a_latent_site():
    def empty_guide(prior_mean=1.0, observations=None):
        pass

    with pytest.raises(ic.GuideError, match="did not sample latent site 'z'"):
        ic.importance(g.gaussian, DATA, num_particles=10, guide=empty_guide)


def test_a_guide_that_invents_a_site():
    def inventive_guide(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(7.0, 1.0))
        ic.sample("w", Normal(0.0, 1.0))

    with pytest.raises(ic.GuideError, match="samples 'w', which is not a latent site.*\\['z'\\]"):
        ic.importance(g.gaussian, DATA, num_particles=10, guide=inventive_guide)


def test_a_guide_that_samples_an_observed_site():
    def greedy_guide(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(7.0, 1.0))
        ic.sample("x1", Normal(7.0, 1.0))

    with pytest.raises(ic.GuideError, match="samples 'x1', which the model observes"):
        ic.importance(g.gaussian, DATA, num_particles=10, guide=greedy_guide)


def test_a_guide_that_observes():
    def observing_guide(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(7.0, 1.0))
        ic.observe("x1", Normal(7.0, 1.0), value=1.0)

    with pytest.raises(ic.GuideError, match="observe site 'x1'"):
        ic.importance(g.gaussian, DATA, num_particles=10, guide=observing_guide)


def test_a_guide_value_of_the_wrong_shape():
    def wide_guide(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(torch.zeros(2), 1.0))

    with pytest.raises(
        ic.GuideError,
        match=r"site 'z': the proposal's value has shape \(2,\) but Normal has shape \(\)",
    ):
        ic.importance(g.gaussian, DATA, num_particles=10, guide=wide_guide)


def test_a_guide_value_outside_the_prior_support_names_the_site():
    def coin():
        r = ic.sample("r", Uniform(0.0, 1.0))
        ic.observe("flip", torch.distributions.Bernoulli(r))

    def unbounded_guide(observations=None):
        ic.sample("r", Normal(0.5, 10.0))

    with pytest.raises(
        ic.GuideError, match="sample site 'r': the proposal's value lies outside the support"
    ):
        ic.importance(coin, {"flip": 1.0}, num_particles=100, guide=unbounded_guide)


# -- weights that are not finite -----------------------------------------------------------


@pytest.mark.parametrize("vectorize", [True, False])
def test_nan_and_infinite_weights_are_counted_reported_and_kept(vectorize):
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.factor("nan_when_negative", torch.where(z < 0, torch.nan, 0.0))
        ic.factor("inf_when_large", torch.where(z > 2, torch.inf, 0.0))

    with pytest.warns(ic.InferenceWarning, match="'nan_when_negative'.*'inf_when_large'") as record:
        post = ic.importance(model, num_particles=400, vectorize=vectorize)
    z = post.values("z")
    assert post.num_nan_weights == int((z < 0).sum()) > 0
    assert post.num_infinite_weights == int((z > 2).sum()) > 0
    assert post.num_particles == 400
    assert torch.isnan(post.log_evidence) or torch.isinf(post.log_evidence)
    assert len(record) == 1


def test_data_outside_a_parameter_dependent_support_give_zero_weights():
    def window():
        r = ic.sample("r", Uniform(0.0, 1.0))
        ic.observe("y", Uniform(r, r + 1.0))

    # y = 0.5 lies in (r, r + 1) iff r < 0.5: the posterior is U(0, 0.5), evidence 1/2.
    for vectorize in (True, False):
        post = ic.importance(window, {"y": 0.5}, num_particles=2000, vectorize=vectorize)
        r = post.values("r")
        assert post.num_zero_weights == int((r >= 0.5).sum()) > 0
        assert float(post.values("r")[post.weights > 0].max()) < 0.5
        # The weights are 0/1, so Ẑ is a binomial proportion: 4 standard errors.
        assert abs(float(post.log_evidence.exp()) - 0.5) < 4 * (0.25 / 2000) ** 0.5

    with pytest.warns(ic.InferenceWarning, match="all 100 weights are zero"):
        post = ic.importance(window, {"y": 5.0}, num_particles=100)
    assert post.num_zero_weights == 100


# -- worker processes ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_worker_processes_agree_with_one_process_and_are_reproducible():
    torch.manual_seed(7)
    parallel = ic.importance(marsaglia, DATA, num_particles=3000, vectorize=False, workers=2)
    torch.manual_seed(7)
    again = ic.importance(marsaglia, DATA, num_particles=3000, vectorize=False, workers=2)
    assert torch.equal(parallel.log_weights, again.log_weights)
    returned = parallel.values(lambda trace: trace.return_value)
    # The draws are the prior N(1, √5), whichever process made them.
    assert stats.kstest(returned.numpy(), stats.norm(1, math.sqrt(5)).cdf).pvalue > 1e-3
    torch.manual_seed(8)
    single = ic.importance(marsaglia, DATA, num_particles=3000, vectorize=False)
    assert stats.ks_2samp(parallel.log_weights.numpy(), single.log_weights.numpy()).pvalue > 1e-3


def test_workers_need_a_picklable_model():
    def local_model():
        ic.sample("z", Normal(0.0, 1.0))

    with pytest.raises(ic.ModelError, match="picklable"):
        ic.importance(local_model, num_particles=10, vectorize=False, workers=2)
    with pytest.raises(ValueError, match="workers"):
        ic.importance(g.gaussian, DATA, num_particles=10, workers=0)


WORKER_SCRIPT = """
import torch
from torch.distributions import Normal
import infcomp as ic

def model():
    z = ic.sample("z", Normal(0.0, 1.0))
    ic.observe("y", Normal(z, 1.0))

try:
    ic.importance(model, {"y": 1.0}, 10, vectorize=False, workers=2)
except ic.ModelError as error:
    print("ModelError:", error)
"""


def test_workers_say_what_to_do_from_an_interactive_session_or_an_unguarded_script(tmp_path):
    interactive = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert "ModelError: workers > 1 needs 'model'" in interactive.stdout
    assert "interactive session" in interactive.stdout
    script = tmp_path / "unguarded.py"
    script.write_text(WORKER_SCRIPT)
    unguarded = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert "if __name__ == '__main__':" in unguarded.stdout


def test_particles_with_invalid_parameters_are_listed_in_the_problems_report():
    def model():
        z = ic.sample("z", torch.distributions.Normal(0.0, 1.0))
        ic.observe("x", torch.distributions.Normal(0.0, torch.where(z > 1.0, 0.0, 1.0)))

    torch.manual_seed(0)
    with pytest.warns(ic.InferenceWarning, match="invalid parameters"):
        post = ic.importance(model, {"x": 0.5}, 2000)
    expected = int((post.values("z") > 1.0).sum())
    assert post.invalid_sites == {"x": expected} and expected > 0
    assert any("invalid parameters" in p and f"'x' ({expected})" in p for p in post.problems())
