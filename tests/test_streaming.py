"""Streaming importance sampling: exact merging of chunks, and the stream's estimates."""

import math

import pytest
import torch
from scipy import stats
from torch.distributions import Normal

import infcomp as ic
from infcomp import diagnostics
from infcomp.examples import gaussian as g
from infcomp.examples.marsaglia import marsaglia
from infcomp.inference.streaming import _Accumulator
from infcomp.runtime import Site, Trace


def chunk(values: torch.Tensor, log_weights: torch.Tensor) -> ic.Posterior:
    trace = Trace(batch_ndim=1)
    trace.add(Site("a", "sample", None, values))
    return ic.Posterior([trace], [len(log_weights)], log_weights)


def test_merged_chunks_equal_the_whole():
    torch.manual_seed(0)
    values = torch.randn(3000, 2, dtype=torch.float64) * 3 + 1
    # Chunks whose maxima differ wildly, so that rescaling to the running maximum matters.
    log_weights = torch.cat(
        [torch.randn(1000) * 2 - 50, torch.randn(1000) * 2, torch.randn(1000) * 2 + 30]
    ).double()
    accumulator = _Accumulator(3000, keep=10, sites=None)
    for start in range(0, 3000, 700):
        accumulator.add(chunk(values[start : start + 700], log_weights[start : start + 700]))
    result = accumulator.result()
    whole = chunk(values, log_weights)
    assert torch.allclose(result.log_evidence, whole.log_evidence, rtol=1e-12)
    assert torch.allclose(result.ess, whole.ess, rtol=1e-9)
    assert torch.allclose(result.mean("a"), whole.mean("a"), rtol=1e-9)
    assert torch.allclose(result.variance("a"), whole.variance("a"), rtol=1e-9)
    assert torch.allclose(result.khat, diagnostics.pareto_khat(log_weights), atol=1e-9)
    assert result.samples.values("a").shape == (10, 2)
    with pytest.raises(ic.ModelError, match="'b' was not kept"):
        result.mean("b")


def test_the_kept_resample_is_multinomial_over_the_whole_stream():
    torch.manual_seed(1)
    log_weights = torch.tensor(
        [0.0, 1.0, -1.0, 2.0, 0.5, -0.5, 1.5, 0.0, -2.0], dtype=torch.float64
    )
    values = torch.arange(9, dtype=torch.float64)
    keep = 20_000
    accumulator = _Accumulator(9, keep=keep, sites=None)
    for start in range(0, 9, 3):
        accumulator.add(chunk(values[start : start + 3], log_weights[start : start + 3]))
    kept = accumulator.result().samples.values("a").long()
    counts = torch.bincount(kept, minlength=9).double()
    expected = torch.softmax(log_weights, 0) * keep
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2(8).sf(chi2) > 1e-3


def test_streaming_the_gaussian():
    torch.manual_seed(2)
    post = ic.importance_stream(
        g.gaussian, g.DATA, num_particles=2_000_000, chunk_size=500_000, keep=2000
    )
    assert post.num_particles == 2_000_000
    assert abs(float(post.log_evidence) - g.exact_log_evidence()) < 4 * float(
        post.log_evidence_stderr
    )
    error = float(post.std("z")) / math.sqrt(float(post.ess))
    assert abs(float(post.mean("z")) - 7.25) < 4 * error
    assert abs(float(post.std("z")) - math.sqrt(5 / 6)) < 4 * math.sqrt(5 / 6) / math.sqrt(
        2 * float(post.ess)
    )
    # The kept draws are (nearly) independent draws from the posterior N(7.25, √(5/6)).
    kept = post.samples.values("z").double()
    assert stats.kstest(kept.numpy(), stats.norm(7.25, math.sqrt(5 / 6)).cdf).pvalue > 1e-3
    assert post.problems() == []


@pytest.mark.filterwarnings("ignore::infcomp.InferenceWarning")
def test_streaming_a_model_run_trace_by_trace():
    torch.manual_seed(3)
    with pytest.warns(ic.VectorizationNotice):
        post = ic.importance_stream(
            marsaglia, g.DATA, num_particles=3000, chunk_size=1000, sites=["u_0"]
        )
    assert post.num_particles == 3000
    assert abs(float(post.log_evidence) - g.exact_log_evidence()) < 4 * float(
        post.log_evidence_stderr
    )
    # u_1 exists only where the first attempt was rejected.
    with pytest.raises(ic.ModelError, match="site 'u_1' is present in"):
        ic.importance_stream(
            marsaglia, g.DATA, num_particles=200, chunk_size=100, sites=["u_1"], vectorize=False
        )


def test_nan_weights_are_counted_and_reported_in_a_stream():
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        ic.factor("bad", torch.where(z > 2.5, torch.nan, 0.0))

    torch.manual_seed(4)
    with pytest.warns(ic.InferenceWarning, match="NaN.*'bad'"):
        post = ic.importance_stream(model, num_particles=200_000, chunk_size=50_000)
    assert post.num_nan_weights > 0
    assert math.isnan(float(post.log_evidence)) and math.isnan(float(post.mean("z")))


def test_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        ic.importance_stream(g.gaussian, g.DATA, num_particles=10, chunk_size=0)
    with pytest.raises(ValueError, match="hold the"):
        diagnostics.pareto_khat(torch.zeros(3, dtype=torch.float64), 10_000)
