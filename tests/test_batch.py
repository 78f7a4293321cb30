"""Many data sets at once: importance_batch and BatchPosterior against exact answers."""

import math
import warnings

import pytest
import torch

import infcomp as ic
from infcomp.examples import gaussian as g
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.proposals import NetworkProposal

pytestmark = pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")


def datasets(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = 1 + 5**0.5 * torch.randn(count, generator=generator)
    return {
        "x1": z + 2**0.5 * torch.randn(count, generator=generator),
        "x2": z + 2**0.5 * torch.randn(count, generator=generator),
    }


def exact(data):
    pairs = list(zip(data["x1"].tolist(), data["x2"].tolist()))
    log_evidence = torch.tensor([g.exact_log_evidence(a, b) for a, b in pairs], dtype=torch.float64)
    means = torch.tensor(
        [float(g.exact_posterior(a, b).mean) for a, b in pairs], dtype=torch.float64
    )
    return log_evidence, means


def test_each_data_set_gets_its_exact_answer():
    data = datasets(40)
    batch = ic.importance_batch(g.gaussian, data, num_particles=20_000)
    assert len(batch) == batch.num_datasets == 40 and batch.num_particles == 20_000
    assert batch.weights.shape == (20_000, 40)
    log_evidence, means = exact(data)
    # 40 comparisons each: 4.5 standard errors (two-sided tail 7e-6 each).
    assert ((batch.log_evidence - log_evidence).abs() < 4.5 * batch.log_evidence_stderr).all()
    error = batch.std("z") / batch.ess.sqrt()
    assert ((batch.mean("z") - means).abs() < 4.5 * error).all()
    assert batch.values("z").shape == (20_000, 40)
    assert batch.khat.shape == batch.ess.shape == (40,)


def test_a_network_runs_many_data_sets_in_groups_joined_in_order(monkeypatch):
    calls = []

    def counted(returns="tensor"):
        calls.append(1)
        z = g.gaussian()
        if returns == "dict":
            return {"z": [z, (z,)]}
        return z.mean() if returns == "mean" else z

    torch.manual_seed(0)
    csis = ic.CSIS(counted, validation_size=0)
    csis.train(num_steps=20, batch_size=64, progress=False)
    monkeypatch.setattr(NetworkProposal, "group_rows", 2000)  # 1,000 particles: 2 data sets
    data = datasets(7)
    calls.clear()
    batch = csis.run_batch(data, 1000)
    assert len(calls) == 1 + 4  # the probe, then groups of 2, 2, 2 and 1 data sets
    assert batch.weights.shape == batch.values("z").shape == (1000, 7)
    assert torch.equal(batch.values("x1")[0], data["x1"])  # the data sets' order is kept
    assert torch.equal(batch.trace.return_value, batch.values("z"))
    assert torch.equal(batch[6].values("z"), batch.values("z")[:, 6])
    log_evidence, _ = exact(data)
    assert ((batch.log_evidence - log_evidence).abs() < 4.5 * batch.log_evidence_stderr).all()
    calls.clear()  # containers of per-particle tensors are joined too
    batch = csis.run_batch(data, 1000, returns="dict")
    assert len(calls) == 1 + 4 and torch.equal(
        batch.trace.return_value["z"][1][0], batch.values("z")
    )
    # A return value that is not one tensor per particle cannot be joined: one run for all.
    calls.clear()
    batch = csis.run_batch(data, 1000, returns="mean")
    assert len(calls) == 1 + 4 + 1 and batch.trace.return_value.shape == ()
    calls.clear()  # the prior keeps little state per particle: one run for all
    ic.importance_batch(counted, data, num_particles=1000)
    assert len(calls) == 1 + 1


def test_a_data_set_of_the_batch_is_a_posterior():
    data = datasets(5)
    batch = ic.importance_batch(g.gaussian, data, num_particles=1000)
    third = batch[2]
    assert isinstance(third, ic.Posterior)
    assert torch.equal(third.log_weights, batch.log_weights[:, 2])
    assert torch.allclose(third.mean("z"), batch.mean("z")[2])
    assert torch.allclose(third.variance("z"), batch.variance("z")[2])
    assert torch.equal(third.values("x1"), torch.full((1000,), float(data["x1"][2])))
    with pytest.raises(IndexError):
        batch[5]


def test_a_list_of_data_sets_is_the_same_as_a_stacked_dict():
    data = datasets(3)
    listed = [{"x1": float(a), "x2": float(b)} for a, b in zip(data["x1"], data["x2"])]
    torch.manual_seed(1)
    from_list = ic.importance_batch(g.gaussian, listed, num_particles=100)
    torch.manual_seed(1)
    from_dict = ic.importance_batch(g.gaussian, data, num_particles=100)
    assert torch.equal(from_list.log_weights, from_dict.log_weights)


def test_models_that_cannot_be_vectorized_run_data_set_by_data_set():
    data = [{"x1": 8.0, "x2": 9.0}, {"x1": 0.0, "x2": 1.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ic.VectorizationNotice)
        batch = ic.importance_batch(marsaglia, data, num_particles=3000)
    assert batch.log_weights.shape == (3000, 2)
    returned = lambda trace: trace.return_value
    means = batch.mean(returned)
    for index, (a, b) in enumerate(((8.0, 9.0), (0.0, 1.0))):
        posterior = batch[index]
        error = float(posterior.std(returned)) / math.sqrt(float(posterior.ess))
        assert abs(float(means[index]) - float(g.exact_posterior(a, b).mean)) < 4 * error
    with pytest.raises(ic.ModelError, match="trace by trace"):
        batch.values(returned)


def test_a_summary_of_unreliable_data_sets_is_warned_once():
    data = {"x1": torch.tensor([1.0, 30.0]), "x2": torch.tensor([2.0, 31.0])}
    with pytest.warns(ic.InferenceWarning, match="of 2 data sets: 1 with") as record:
        ic.importance_batch(g.gaussian, data, num_particles=1000)
    assert len(record) == 1


def test_bad_batches_name_the_problem():
    with pytest.raises(ic.ModelError, match="leading dimension"):
        ic.importance_batch(g.gaussian, {"x1": torch.zeros(3), "x2": torch.zeros(4)}, 10)
    with pytest.raises(ic.ModelError, match="leading dimension"):
        ic.importance_batch(g.gaussian, {"x1": 1.0, "x2": 2.0}, 10)
    with pytest.raises(ic.ModelError, match="data set 1 names"):
        ic.importance_batch(g.gaussian, [{"x1": 1.0, "x2": 2.0}, {"x1": 1.0}], 10)
    with pytest.raises(ic.ModelError, match="no data sets"):
        ic.importance_batch(g.gaussian, [], 10)
    mixed = [{"x1": 1.0, "x2": 2.0}, {"x1": 1.0, "x2": 2.0}, {"x1": [1.0, 2.0], "x2": 2.0}]
    message = r"observe site 'x1': data set 2 has shape \(2,\), data set 0 \(\)"
    for run in (ic.importance_batch, ic.smc_batch):
        with pytest.raises(ic.ModelError, match=message):
            run(g.gaussian, mixed, 10)
    with pytest.raises(ic.ModelError, match="no data sets given: .* leading dimension B is 0"):
        ic.importance_batch(g.gaussian, {"x1": torch.zeros(0), "x2": torch.zeros(0)}, 10)
    with pytest.raises(ic.ModelError, match="observe site 'x2' has no observed value"):
        ic.importance_batch(g.gaussian, {"x1": torch.zeros(3)}, 10)


def test_every_data_set_is_checked_and_the_bad_one_named():
    def counts():
        rate = ic.sample("rate", torch.distributions.Gamma(2.0, 1.0))
        ic.observe("k", torch.distributions.Poisson(rate))

    for values, bad in (([1.0, 2.5, 3.0], 1), ([-1.0, 2.0], 0), ([1.0, 2.0, 3.0, -4.0], 3)):
        with pytest.raises(ic.ModelError, match=f"data set {bad}: observe site 'k'.*support"):
            ic.importance_batch(counts, {"k": torch.tensor(values)}, 10)
    ic.importance_batch(counts, {"k": torch.tensor([1.0, 2.0])}, 10)
