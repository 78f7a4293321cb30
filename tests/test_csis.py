import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Normal, Uniform

import infcomp as ic
from infcomp.examples.csis_gaussian import Guide, SingleTraceGuide, compile_gaussian
from infcomp.examples.gaussian import DATA, exact_log_evidence, exact_posterior, gaussian
from infcomp.inference.simulation import JointSimulator

# The exact posterior of the Gaussian model is N(1/6 + 5/12 (x1 + x2), √(5/6)): a guide
# that is linear in x1 + x2 contains it.
EXACT_INTERCEPT = 1 / 6
EXACT_SLOPE = 5 / 12
EXACT_STD = math.sqrt(5 / 6)
# E_p(x,y)[-log p(x | y)]: the entropy of N(·, √(5/6)), the least possible loss.
MINIMUM_LOSS = 0.5 * math.log(2 * math.pi * math.e * 5 / 6)


class LinearGuide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.intercept = nn.Parameter(torch.tensor(0.0))
        self.slope = nn.Parameter(torch.tensor(0.0))
        self.log_std = nn.Parameter(torch.tensor(0.0))

    def forward(self, prior_mean=1.0, observations=None):
        loc = self.intercept + self.slope * (observations["x1"] + observations["x2"])
        ic.sample("z", Normal(loc, self.log_std.exp()))


@pytest.fixture(scope="module")
def trained_linear():
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian, LinearGuide(), learning_rate=0.02, validation_size=4096)
    csis.train(1500, batch_size=256, progress=False, validate_every=500)
    return csis


def test_compilation_finds_the_exact_posterior_in_the_guide_family(trained_linear):
    guide = trained_linear.guide.requires_grad_(False)
    # The slope is pinned by many simulations; tolerances are a few times the spread of
    # the Adam iterates at this learning rate (checked over seeds).
    assert abs(float(guide.slope) - EXACT_SLOPE) < 0.02
    assert abs(float(guide.intercept) - EXACT_INTERCEPT) < 0.15
    assert abs(float(guide.log_std.exp()) - EXACT_STD) < 0.03
    # -log q on 4096 simulations: at the optimum -log q = const + ε²/2 with ε ~ N(0, 1),
    # variance 1/2, so the standard error is √(0.5 / 4096) ≈ 0.011.
    steps, validation = trained_linear.validation_history[-1]
    assert steps == 1500
    assert abs(validation - MINIMUM_LOSS) < 4 * math.sqrt(0.5 / 4096)


def test_the_compiled_guide_makes_importance_sampling_nearly_exact(trained_linear):
    post = trained_linear.run(DATA, num_particles=2000)
    assert float(post.ess) > 0.95 * 2000
    exact = exact_posterior()
    error = float(post.std("z")) / math.sqrt(float(post.ess))
    assert abs(float(post.mean("z")) - float(exact.mean)) < 4 * error
    assert abs(float(post.log_evidence) - exact_log_evidence()) < 4 * float(
        post.log_evidence_stderr
    )


def test_the_loss_is_the_mean_negative_log_proposal_density():
    guide = LinearGuide()
    csis = ic.CSIS(gaussian, guide, validation_size=0)
    batch = JointSimulator(gaussian)(64)
    trace = batch.traces[0]
    loc = guide.intercept + guide.slope * (trace["x1"].value + trace["x2"].value)
    expected = -Normal(loc, guide.log_std.exp()).log_prob(trace["z"].value).double().mean()
    assert torch.allclose(csis.loss(batch), expected)


def test_batched_and_single_trace_guides_give_the_same_loss_and_gradients():
    batched, single = Guide(), SingleTraceGuide()
    single.load_state_dict(batched.state_dict())
    batch = JointSimulator(gaussian)(32)
    losses = []
    for guide in (batched, single):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ic.VectorizationNotice)
            loss = ic.CSIS(gaussian, guide, validation_size=0).loss(batch)
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for a, b in zip(batched.parameters(), single.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_a_single_trace_guide_is_detected_once_and_trained_trace_by_trace():
    csis = ic.CSIS(gaussian, SingleTraceGuide(), validation_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        csis.train(3, batch_size=8, progress=False)
    notices = [w for w in caught if issubclass(w.category, ic.VectorizationNotice)]
    assert len(notices) == 1 and "SingleTraceGuide" in str(notices[0].message)
    assert csis.proposal.vectorize is False
    assert len(csis.loss_history) == 3


def test_training_reduces_the_loss_of_the_seed_guide():
    csis = compile_gaussian(num_steps=300, batch_size=64, seed=1)
    first, last = csis.validation_history[0][1], csis.validation_history[-1][1]
    assert last < first
    assert csis.num_steps == 300 and len(csis.loss_history) == 300


def test_train_records_history_and_steps_the_scheduler():
    csis = ic.CSIS(
        gaussian,
        LinearGuide(),
        learning_rate=0.1,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 10, gamma=0.5),
        validation_size=32,
    )
    losses = csis.train(25, batch_size=16, validate_every=10, progress=False)
    assert len(losses) == 25 and losses == csis.loss_history
    assert [step for step, _ in csis.validation_history] == [10, 20, 25]
    assert csis.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 4)
    csis.train(5, batch_size=16, validate_every=10, progress=False)
    assert csis.num_steps == 30 and len(csis.loss_history) == 30


def test_the_model_is_never_differentiated():
    prior_scale = torch.tensor(2.0, requires_grad=True)

    def model():
        z = ic.sample("z", Normal(0.0, prior_scale))
        ic.observe("x1", Normal(z, 1.0))
        ic.observe("x2", Normal(z, 1.0))

    csis = ic.CSIS(model, LinearGuide(), validation_size=0)
    csis.step(batch_size=8)
    assert prior_scale.grad is None
    assert all(p.grad is not None for p in csis.guide.parameters())


def test_a_guide_with_a_random_structure_is_trained_per_structure():
    def switch():
        k = ic.sample("k", Bernoulli(0.5))
        name = "a" if k else "b"
        value = ic.sample(name, Normal(3.0 if k else -3.0, 1.0))
        ic.observe("y", Normal(value, 0.5))

    class SwitchGuide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.tensor(0.0))
            self.scale = nn.Parameter(torch.tensor(0.0))

        def forward(self, observations=None):
            y = observations["y"]
            k = ic.sample("k", Bernoulli(logits=self.weight * y))
            name = "a" if k else "b"
            ic.sample(name, Normal(y, self.scale.exp()))

    csis = ic.CSIS(switch, SwitchGuide(), learning_rate=0.05, validation_size=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        csis.train(150, batch_size=32, validate_every=150, progress=False)
    assert csis.simulator.vectorize is False
    # The guide learns that the sign of y tells k: its weight grows positive.
    assert float(csis.guide.weight.detach()) > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        post = csis.run({"y": 2.5}, num_particles=500)
    # p(k = 0 | y = 2.5) ∝ N(2.5; -3, √1.25) is below 1e-5: all the weight is on k = 1.
    assert float(post.mean("k")) > 0.999


# -- checks and errors ------------------------------------------------------------------


def test_guides_that_miss_invent_or_observe_sites_are_named():
    def missing(prior_mean=1.0, observations=None):
        pass

    def inventive(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(0.0, 1.0))
        ic.sample("extra", Normal(0.0, 1.0))

    def greedy(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(0.0, 1.0))
        ic.sample("x1", Normal(0.0, 1.0))

    parameter = torch.zeros((), requires_grad=True)
    for guide, message in (
        (missing, "did not sample latent site 'z'"),
        (inventive, "samples 'extra', which is not a latent site"),
        (greedy, "samples 'x1', which the model observes"),
    ):
        csis = ic.CSIS(gaussian, guide, torch.optim.SGD([parameter], lr=0.1), validation_size=0)
        with pytest.raises(ic.GuideError, match=message):
            csis.step(batch_size=4)


def test_a_guide_that_does_not_cover_the_prior_is_an_error():
    def coin():
        r = ic.sample("r", Uniform(0.0, 1.0))
        ic.observe("flip", Bernoulli(r))

    class NarrowGuide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.upper = nn.Parameter(torch.tensor(0.5))

        def forward(self, observations=None):
            ic.sample("r", Uniform(0.0, self.upper))

    with pytest.raises(ic.GuideError, match=r"not finite at sites 'r' \(\d+ of 64\).*cover"):
        ic.CSIS(coin, NarrowGuide(), validation_size=0).step(batch_size=64)


def test_constructor_and_argument_errors():
    def plain_guide(prior_mean=1.0, observations=None):
        ic.sample("z", Normal(0.0, 1.0))

    with pytest.raises(TypeError, match="not an nn.Module: pass an optimizer"):
        ic.CSIS(gaussian, plain_guide)
    with pytest.raises(ValueError, match="no parameters"):
        ic.CSIS(gaussian, nn.Identity())
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        ic.CSIS(gaussian, LinearGuide(), optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validation_size"):
        ic.CSIS(gaussian, LinearGuide(), validation_size=-1)
    csis = ic.CSIS(gaussian, LinearGuide(), validation_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        csis.step(batch_size=0)
    with pytest.raises(ValueError, match="num_steps"):
        csis.train(0)
    with pytest.raises(ValueError, match="validation_size=0"):
        csis.validation_loss()


# -- artifacts ----------------------------------------------------------------------------


def proposal_parameters(guide: nn.Module) -> torch.Tensor:
    with ic.trace() as tracer:
        guide(observations={"x1": torch.tensor(8.0), "x2": torch.tensor(9.0)})
    fn = tracer.trace["z"].fn
    return torch.stack([fn.loc, fn.scale]).detach()


def test_save_and_load_restore_the_guide_optimizer_and_history(tmp_path):
    path = tmp_path / "gaussian.pt"
    csis = ic.CSIS(gaussian, Guide(), validation_size=16)
    csis.train(20, batch_size=16, validate_every=10, progress=False)
    csis.save(path)
    loaded = ic.CSIS.load(path, gaussian, Guide(), validation_size=16)
    assert torch.equal(proposal_parameters(loaded.guide), proposal_parameters(csis.guide))
    assert loaded.num_steps == 20 and loaded.loss_history == csis.loss_history
    assert loaded.validation_history == csis.validation_history
    state, loaded_state = csis.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert all(
        torch.equal(state["state"][i]["exp_avg"], loaded_state["state"][i]["exp_avg"])
        for i in state["state"]
    )
    # Training resumes from the loaded state: the same steps as the original would take.
    losses = []
    for run in (csis, loaded):
        torch.manual_seed(7)
        losses.append([run.step(batch_size=16) for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(proposal_parameters(loaded.guide), proposal_parameters(csis.guide))
    assert loaded.num_steps == 23


def test_a_loaded_artifact_gives_the_same_proposal_in_a_fresh_process(tmp_path):
    path = tmp_path / "gaussian.pt"
    csis = compile_gaussian(num_steps=50, batch_size=32, seed=3)
    csis.save(path)
    script = (
        "import sys, torch, infcomp as ic\n"
        "from infcomp.examples.csis_gaussian import Guide\n"
        "from infcomp.examples.gaussian import gaussian\n"
        "csis = ic.CSIS.load(sys.argv[1], gaussian, Guide())\n"
        "with ic.trace() as t:\n"
        "    csis.guide(observations={'x1': torch.tensor(8.0), 'x2': torch.tensor(9.0)})\n"
        "fn = t.trace['z'].fn\n"
        "print(repr(float(fn.loc)), repr(float(fn.scale)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    loc, scale = (float(v) for v in out.stdout.split())
    expected = proposal_parameters(csis.guide)
    assert (loc, scale) == (float(expected[0]), float(expected[1]))


def test_loading_rejects_foreign_files_versions_and_architectures(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not an infcomp CSIS artifact"):
        ic.CSIS.load(foreign, gaussian, Guide())
    path = tmp_path / "gaussian.pt"
    csis = ic.CSIS(gaussian, Guide(), validation_size=0)
    csis.save(path)
    saved = torch.load(path, weights_only=True)
    saved["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(saved, future)
    with pytest.raises(ValueError, match="format version 99"):
        ic.CSIS.load(future, gaussian, Guide())
    with pytest.raises(ValueError, match="do not fit guide 'LinearGuide'"):
        ic.CSIS.load(path, gaussian, LinearGuide())


@pytest.mark.slow
def test_seed_notebook_settings_give_a_high_ess():
    """The seed notebook's settings (2,000 steps, batch 10, Adam 1e-3): for each of three
    training seeds the median ESS of 20 runs of 50 samples at (8, 9) is at least 35."""
    for seed in range(3):
        csis = compile_gaussian(seed=seed)
        ess = torch.tensor([float(csis.run(DATA, num_particles=50).ess) for _ in range(20)])
        assert float(ess.median()) >= 35, (seed, ess.median())


# -- Pyro's CSIS tutorial, ported by changing the imports and the optimizer only -----------
#
# pyro.sample -> ic.sample, pyro.distributions -> torch.distributions, pyro.infer.CSIS ->
# ic.CSIS, pyro.infer.EmpiricalMarginal -> ic.EmpiricalMarginal; pyro.optim.Adam({"lr": 1e-3})
# -> torch.optim.Adam(guide.parameters(), lr=1e-3), which also replaces pyro.module("guide",
# self) (infcomp has no parameter store: the optimizer holds the parameters).


def pyro_tutorial_model(prior_mean, observations={"x1": 0, "x2": 0}):  # noqa: B006 (as in Pyro)
    x = ic.sample("z", Normal(prior_mean, torch.tensor(5**0.5)))
    ic.sample("x1", Normal(x, torch.tensor(2**0.5)), obs=observations["x1"])
    ic.sample("x2", Normal(x, torch.tensor(2**0.5)), obs=observations["x2"])
    return x


class PyroTutorialGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.neural_net = nn.Sequential(
            nn.Linear(2, 10),
            nn.ReLU(),
            nn.Linear(10, 20),
            nn.ReLU(),
            nn.Linear(20, 10),
            nn.ReLU(),
            nn.Linear(10, 5),
            nn.ReLU(),
            nn.Linear(5, 2),
        )

    def forward(self, prior_mean, observations={"x1": 0, "x2": 0}):  # noqa: B006
        x1 = observations["x1"]
        x2 = observations["x2"]
        v = torch.cat((x1.view(1, 1), x2.view(1, 1)), 1)
        v = self.neural_net(v)
        mean = v[0, 0]
        std = v[0, 1].exp()
        ic.sample("z", Normal(mean, std))


def test_the_pyro_csis_tutorial_ports_by_changing_imports_and_optimizer():
    torch.manual_seed(0)
    guide = PyroTutorialGuide()
    optimiser = torch.optim.Adam(guide.parameters(), lr=1e-3)
    csis = ic.CSIS(
        pyro_tutorial_model, guide, optimiser, num_inference_samples=2000, training_batch_size=10
    )
    prior_mean = torch.tensor(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)  # the guide is per trace
        losses = [csis.step(prior_mean) for _ in range(100)]
    assert csis.num_steps == 100 and all(math.isfinite(loss) for loss in losses)
    posterior = csis.run(
        prior_mean, observations={"x1": torch.tensor(8.0), "x2": torch.tensor(9.0)}
    )
    marginal = ic.EmpiricalMarginal(posterior, "z")
    samples = torch.stack([marginal() for _ in range(20)])
    assert samples.shape == (20,)
    # Self-normalized importance sampling is consistent whatever the guide learned: the
    # exact posterior is N(7.25, 5/6); the error bound is 4 standard errors at this ESS.
    assert posterior.num_particles == 2000
    stderr = (5 / 6) ** 0.5 / float(posterior.ess) ** 0.5
    assert abs(float(marginal.mean) - 7.25) < 4 * stderr
    # log Ẑ is biased low by about Var(Ẑ)/2Z² = (1/ESS - 1/N)/2 (delta method), which the
    # 1/ESS term bounds; the rest is 4 standard errors.
    error = abs(float(posterior.log_evidence) - exact_log_evidence())
    assert error < 4 * float(posterior.log_evidence_stderr) + 1 / float(posterior.ess)


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")  # an untrained guide
def test_the_old_calling_conventions_still_work_and_warn():
    csis = ic.CSIS(gaussian, Guide(), validation_size=0)
    with pytest.warns(DeprecationWarning, match=r"step\(batch_size=") as record:
        csis.step(8)
    assert record[0].filename == __file__ and csis.num_steps == 1
    with pytest.warns(DeprecationWarning, match="num_particles="):
        post = csis.run(DATA, num_samples=30)
    assert post.num_particles == 30
    assert csis.run(DATA, 40).num_particles == 40  # the particle count positional
    assert csis.run(DATA, np.int64(40)).num_particles == 40
    with pytest.raises(TypeError, match="num_particles= only"):
        csis.run(DATA, num_particles=10, num_samples=10)
    with pytest.raises(TypeError, match="observations"):
        csis.run()
    with pytest.raises(TypeError, match="give the data once"):
        csis.run(DATA, observations=DATA)


def test_a_model_without_observations_cannot_be_compiled():
    def prior_only():
        ic.sample("z", Normal(0.0, 1.0))

    with pytest.raises(ic.ModelError, match="model 'test_a_model_without.*prior_only' has no obse"):
        ic.CSIS(prior_only)


def test_every_inference_function_takes_a_csis_as_guide():
    # guide=csis is the CSIS's trained proposal: from the same seed, the same weights as
    # csis.run, whatever the function (smc without resampling is importance sampling).
    torch.manual_seed(0)
    csis = ic.CSIS(gaussian)
    csis.train(num_steps=20, batch_size=64, progress=False)
    torch.manual_seed(1)
    expected = csis.run(DATA, num_particles=300).log_weights
    runs = {
        "importance": lambda: ic.importance(gaussian, DATA, 300, guide=csis).log_weights,
        "smc": lambda: ic.smc(gaussian, DATA, 300, guide=csis, ess_threshold=0).log_weights,
        "importance_batch": lambda: ic.importance_batch(
            gaussian, [DATA], 300, guide=csis
        ).log_weights[:, 0],
    }
    for name, run in runs.items():
        torch.manual_seed(1)
        assert torch.equal(run(), expected), name
    torch.manual_seed(1)
    streamed = ic.importance_stream(gaussian, DATA, 300, guide=csis)
    torch.manual_seed(1)
    # One chunk of the same 300 draws: the same log evidence.
    assert float(streamed.log_evidence) == float(
        ic.importance(gaussian, DATA, 300, guide=csis).log_evidence
    )
    with pytest.raises(TypeError, match="a function or an nn.Module. or a CSIS"):
        ic.importance(gaussian, DATA, 10, guide="csis")


def test_a_saved_csis_keeps_the_models_plain_arguments(tmp_path):
    def shifted(prior_mean=1.0, *, noise=2**0.5):
        z = ic.sample("z", Normal(prior_mean, 5**0.5))
        ic.observe("x1", Normal(z, noise))
        ic.observe("x2", Normal(z, noise))

    torch.manual_seed(0)
    csis = ic.CSIS(shifted, args=(5.0,), kwargs={"noise": 1.5})
    csis.train(num_steps=5, batch_size=32, progress=False)
    csis.save(tmp_path / "a.pt")
    loaded = ic.CSIS.load(tmp_path / "a.pt", shifted)
    assert (loaded.args, loaded.kwargs) == ((5.0,), {"noise": 1.5})
    runs = []
    for compiled in (csis, loaded):
        torch.manual_seed(1)
        runs.append(compiled.run(DATA, num_particles=200).log_weights)
    assert torch.equal(*runs)
    assert ic.CSIS.load(tmp_path / "a.pt", shifted, args=(1.0,)).args == (1.0,)
    # Arguments that are not plain values are not saved: loading asks for them.
    torch.manual_seed(0)
    tensor_mean = ic.CSIS(shifted, args=(torch.tensor(5.0),))
    tensor_mean.save(tmp_path / "b.pt")
    with pytest.warns(ic.ArtifactWarning, match="args were not plain values"):
        assert ic.CSIS.load(tmp_path / "b.pt", shifted).args == ()
