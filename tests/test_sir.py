"""The boarding-school SIR program and the main job (python -m infcomp.sir_demo)."""

import math
import warnings

import pytest
import torch
from torch.distributions import Binomial, NegativeBinomial

import infcomp as ic
from infcomp import diagnostics, sir_demo
from infcomp.examples.sir import (
    DATA,
    DAYS,
    POPULATION,
    REPORTING_FLOOR,
    infectious_curve,
    r0,
    sir,
)


def test_the_program_has_31_latent_sites_and_conserves_the_school():
    trace = ic.trace(ic.uncondition(sir)).get_trace()
    assert len(trace.names("sample")) == 31 and len(trace.names("observe")) == DAYS
    batch = ic.JointSimulator(sir)(500)
    assert batch.vectorized and batch.size == 500
    simulated = batch.traces[0]
    infected = torch.stack([simulated[f"infections_{t}"].value for t in range(1, DAYS + 1)], -1)
    recovered = torch.stack([simulated[f"recoveries_{t}"].value for t in range(1, DAYS + 1)], -1)
    # Nobody is infected twice or recovers before being infected.
    assert bool((infected.sum(-1) <= POPULATION - 1).all())
    assert bool((recovered.cumsum(-1) <= 1 + infected.cumsum(-1)).all())
    assert torch.equal(infectious_curve(simulated), 1 + infected.cumsum(-1) - recovered.cumsum(-1))


def test_the_log_joint_is_the_chain_binomial_and_negative_binomial_densities():
    trace = ic.trace(ic.uncondition(sir)).get_trace()
    beta, gamma = trace["beta"].value, trace["gamma"].value
    dispersion = 1 / trace["phi_inv"].value
    expected = float(
        trace["beta"].fn.log_prob(beta)
        + trace["gamma"].fn.log_prob(gamma)
        + trace["phi_inv"].fn.log_prob(trace["phi_inv"].value)
    )
    susceptible, infectious = POPULATION - 1.0, 1.0
    for t in range(1, DAYS + 1):
        new, gone = trace[f"infections_{t}"].value, trace[f"recoveries_{t}"].value
        escape = math.exp(-float(beta) / POPULATION) ** infectious
        expected += float(Binomial(susceptible, torch.tensor(1 - escape)).log_prob(new))
        expected += float(Binomial(infectious, 1 - torch.exp(-gamma)).log_prob(gone))
        susceptible, infectious = susceptible - float(new), infectious + float(new - gone)
        mean = torch.tensor(infectious + REPORTING_FLOOR)
        reporting = NegativeBinomial(dispersion, probs=mean / (mean + dispersion))
        expected += float(reporting.log_prob(trace[f"in_bed_{t}"].value))
    log_joint = sum(float(site.log_prob().sum()) for site in trace.sites.values())
    assert log_joint == pytest.approx(expected, rel=1e-5)


def test_prior_importance_sampling_runs_vectorized_and_r0_is_a_function_of_the_trace():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)  # prior IS is poor here
        post = ic.importance(sir, DATA, 2000)
    assert post.num_particles == 2000 and len(post.traces) == 1
    torch.testing.assert_close(post.values(r0), post.values("beta") / post.values("gamma"))


def test_the_main_job_prints_every_method_and_caches_its_artifact(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    arguments = [
        "--steps", "4", "--batch-size", "32", "--particles", "300", "--prior-particles", "600",
        "--artifact", str(tmp_path / "sir.pt"), "--figure", str(tmp_path / "sir.png"),
    ]  # fmt: skip
    sir_demo.main(arguments)
    out = capsys.readouterr().out
    assert "compiled in" in out and "saved to" in out
    columns = ("prior IS, N = 300", "prior IS, N = 600", "compiled IS, N = 300")
    for column in (*columns, "bootstrap SMC, N = 300", "compiled SMC, N = 300"):
        assert column in out
    for row in sir_demo.ROWS:
        assert row in out
    assert (tmp_path / "sir.png").read_bytes()[:4] == b"\x89PNG"
    sir_demo.main(arguments)  # again: the artifact is loaded, not compiled
    assert f"loaded {tmp_path / 'sir.pt'}" in capsys.readouterr().out


def test_sequential_monte_carlo_runs_on_the_program_and_its_replay_check_passes():
    # The program recomputes its state from sampled values (nothing derived crosses an
    # observe statement), so SMC's replay check of the final particles passes.
    post = ic.smc(sir, DATA, 500, check=True)
    assert post.num_resampling_steps > 0
    assert math.isfinite(float(post.log_evidence))


def prior_reference(num_particles, chunk=100_000):
    """Long prior importance sampling: the log weights and (beta, gamma) of every particle."""
    log_weights, values = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.InferenceWarning)
        for _ in range(num_particles // chunk):
            post = ic.importance(sir, DATA, chunk)
            log_weights.append(post.log_weights)
            values.append(torch.stack([post.values("beta"), post.values("gamma")], -1))
    return torch.cat(log_weights), torch.cat(values).to(torch.float64)


@pytest.mark.slow
def test_compiled_inference_agrees_with_a_long_prior_reference():
    # Reference: 10^7 prior particles (ESS 1034 at this seed); compiled: 10^4 particles
    # after the main job's training. Means of beta, gamma and R0 agree within 4 joint
    # Monte Carlo standard errors (delta method, diagnostics.mcse_mean), the log evidence
    # within 4 joint standard errors.
    log_weights, values = prior_reference(10_000_000)
    quantities = torch.cat([values, (values[:, 0] / values[:, 1]).unsqueeze(-1)], -1)
    reference = diagnostics.weighted_mean(quantities, log_weights)
    reference_error = diagnostics.mcse_mean(quantities, log_weights)
    assert float(diagnostics.effective_sample_size(log_weights)) > 500  # 1034 at this seed
    csis = sir_demo.compile_sir(1000, 256, seed=0, progress=False)
    torch.manual_seed(1)
    post = csis.run(DATA, 10_000)
    compiled = torch.stack([post.mean("beta"), post.mean("gamma"), post.mean(r0)])
    compiled_error = torch.stack([post.mcse("beta"), post.mcse("gamma"), post.mcse(r0)])
    tolerance = 4 * (reference_error**2 + compiled_error**2).sqrt()
    assert bool(((compiled - reference).abs() < tolerance).all()), (compiled, reference, tolerance)
    reference_evidence = diagnostics.log_evidence(log_weights)
    evidence_error = diagnostics.log_evidence_stderr(log_weights)
    joint = 4 * math.hypot(float(evidence_error), float(post.log_evidence_stderr))
    assert abs(float(post.log_evidence - reference_evidence)) < joint
