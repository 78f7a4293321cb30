"""Weighted statistics and diagnostics for self-normalised importance sampling.

Every function takes a tensor of importance *log* weights ``log w_i = log p(x_i) - log q(x_i)``
(``p`` possibly unnormalised) whose dimension 0 indexes the ``N`` particles.  Any trailing
dimensions are independent batches: an input of shape ``(N,)`` gives a scalar, an input of
shape ``(N, B1, B2, ...)`` gives a result of shape ``(B1, B2, ...)`` (except
:func:`normalized_weights`, which keeps the input shape).  All computations are carried out in
``float64`` and the results are ``float64`` tensors on the input's device.

A log weight of ``-inf`` is a legitimate zero weight (e.g. a particle outside the support of
the target) and is counted in ``N``.  ``NaN`` log weights propagate to ``NaN`` results.

The weighted statistics (:func:`weighted_mean`, :func:`weighted_variance`,
:func:`weighted_quantile`, and the Monte Carlo standard errors :func:`mcse_mean` and
:func:`mcse_sd`) also take the particles' values, of shape ``(N, *batch, *event)``,
and give results of shape ``(*batch, *event)``.  :func:`weight_problems` turns the
diagnostics into the report every posterior type gives.

The functions are pure: they never modify their input, print, or warn.

Example:
    >>> import torch
    >>> from infcomp import diagnostics
    >>> log_weights = torch.tensor([0.0, 0.0, 2.0])
    >>> round(float(diagnostics.effective_sample_size(log_weights)), 3)
    1.558
    >>> diagnostics.weighted_mean(torch.tensor([1.0, 2.0, 3.0]), log_weights)
    tensor(2.6805, dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "MIN_ESS_FRACTION",
    "effective_sample_size",
    "khat_threshold",
    "log_evidence",
    "log_evidence_stderr",
    "mcse_mean",
    "mcse_sd",
    "normalized_weights",
    "pareto_khat",
    "weight_problems",
    "weighted_mean",
    "weighted_quantile",
    "weighted_variance",
]

#: Below this ESS/N the problems report says that almost all the weight sits on few particles.
MIN_ESS_FRACTION = 0.001

# Weakly informative prior of the Pareto k-hat estimate (Vehtari et al., 2024, Appendix C):
# the Zhang & Stephens estimate is shrunk towards this value with the weight of this many
# pseudo-observations.
_KHAT_PRIOR_VALUE = 0.5
_KHAT_PRIOR_WEIGHT = 10.0
# Fewer tail points than this and the generalized Pareto fit is not attempted.
_MIN_TAIL_POINTS = 5
# Upper bound on the number of float64 elements of one (columns, grid, tail) block in the
# vectorised Zhang & Stephens fit, so that wide batches are processed in chunks.
_MAX_BLOCK_ELEMENTS = 1 << 24


def _as_float64(log_weights: Tensor) -> Tensor:
    """Validate the particle dimension and convert to float64."""
    if log_weights.dim() == 0:
        raise ValueError("log_weights must have at least one dimension (the particle dimension)")
    if log_weights.shape[0] == 0:
        raise ValueError("log_weights must contain at least one particle along dim 0")
    return log_weights.to(torch.float64)


def _shifted_weight_moments(log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(S1, S2) = (sum_i u_i, sum_i u_i^2)`` with ``u_i = exp(log w_i - max_j log w_j)``.

    Shifting by the maximum keeps ``1 <= S1 <= N`` and ``1 <= S2 <= N`` (for a finite maximum),
    so no overflow or catastrophic underflow can occur, and exactly equal weights give exactly
    ``S1 = S2 = N``.
    """
    lw = _as_float64(log_weights)
    lw_max = lw.amax(dim=0)
    u = torch.exp(lw - lw_max)
    return u.sum(dim=0), (u * u).sum(dim=0)


def normalized_weights(log_weights: Tensor) -> Tensor:
    """Self-normalised importance weights.

    ``wbar_i = w_i / sum_j w_j = exp(log w_i - logsumexp_j(log w_j))``, i.e. a softmax over
    dim 0.

    Args:
        log_weights: Log importance weights, shape ``(N, *batch)``.

    Returns:
        Float64 tensor of the same shape as ``log_weights`` whose slices along dim 0 sum to 1.
        A batch column whose weights are all zero (all log weights ``-inf``) gives ``NaN``.

    Raises:
        ValueError: If ``log_weights`` is 0-dimensional or has no particles.
    """
    return torch.softmax(_as_float64(log_weights), dim=0)


def log_evidence(log_weights: Tensor) -> Tensor:
    """Importance-sampling estimate of the log normalising constant (log evidence).

    ``log Z_hat = log((1/N) sum_i w_i) = logsumexp_i(log w_i) - log N``.

    ``Z_hat`` is unbiased for ``Z``; ``log Z_hat`` is biased downwards by about
    ``Var(Z_hat) / (2 Z^2)`` (Jensen), see :func:`log_evidence_stderr`.

    Args:
        log_weights: Log importance weights, shape ``(N, *batch)``.

    Returns:
        Float64 tensor of shape ``batch``.  All-zero weights give ``-inf``; any ``+inf`` log
        weight gives ``+inf``.

    Raises:
        ValueError: If ``log_weights`` is 0-dimensional or has no particles.
    """
    lw = _as_float64(log_weights)
    return torch.logsumexp(lw, dim=0) - math.log(lw.shape[0])


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """Kish effective sample size of the importance weights.

    ``ESS = (sum_i w_i)^2 / sum_i w_i^2 = exp(2 logsumexp(log w) - logsumexp(2 log w))``.

    It lies in ``[1, N]``: ``N`` for equal weights, ``1`` when one weight dominates.  It is
    invariant to adding a constant to all log weights.

    What it promises (Kish, 1965; Owen, 2013, sec. 9.3): for a bounded ``f`` that varies
    little with the weights, the self-normalised mean has about the variance of a mean of
    ``ESS`` independent draws from the target, ``Var_p(f) / ESS``.  It does not look at
    ``f``: it says nothing reliable for rare events or tail quantities (a posterior
    probability carried by a few heavily weighted particles can be several times less
    precise than ``sqrt(p (1 - p) / ESS)``), and a large ESS does not show that the
    proposal has found every mode.  For the error of an estimate use :func:`mcse_mean`;
    for the reliability of the weights, :func:`pareto_khat`.  It is evaluated on weights rescaled by
    the largest one, so that equal weights give exactly ``N``.

    Args:
        log_weights: Log importance weights, shape ``(N, *batch)``.

    Returns:
        Float64 tensor of shape ``batch``.  A column with all weights zero, or with a ``+inf`` or
        ``NaN`` log weight, gives ``NaN``.

    Raises:
        ValueError: If ``log_weights`` is 0-dimensional or has no particles.
    """
    s1, s2 = _shifted_weight_moments(log_weights)
    return s1 * s1 / s2


def log_evidence_stderr(log_weights: Tensor) -> Tensor:
    """Delta-method standard error of :func:`log_evidence`.

    ``se(log Z_hat) = sqrt(1/ESS - 1/N)``.

    Derivation: ``Z_hat = (1/N) sum_i w_i`` is a mean of ``N`` i.i.d. weights, so
    ``Var(Z_hat) = Var(w) / N``.  Estimating ``Var(w)`` by the plug-in
    ``(1/N) sum_i w_i^2 - Z_hat^2`` and ``Z`` by ``Z_hat``::

        Var(Z_hat) / Z_hat^2 ≈ ((1/N) sum w^2 / ((1/N) sum w)^2 - 1) / N
                             = (N sum w^2 / (sum w)^2 - 1) / N
                             = (N / ESS - 1) / N = 1/ESS - 1/N.

    By the delta method (``d log z / dz = 1/z``),
    ``Var(log Z_hat) ≈ Var(Z_hat) / Z^2``, whose square root is the value returned.  It is
    exactly ``0`` for equal weights.  Like any moment-based error estimate it is unreliable
    (typically too small) when the weights are heavy tailed; check :func:`pareto_khat`.

    Args:
        log_weights: Log importance weights, shape ``(N, *batch)``.

    Returns:
        Float64 tensor of shape ``batch``.  ``NaN`` where :func:`effective_sample_size` is
        ``NaN``.

    Raises:
        ValueError: If ``log_weights`` is 0-dimensional or has no particles.
    """
    n = log_weights.shape[0] if log_weights.dim() > 0 else 0
    s1, s2 = _shifted_weight_moments(log_weights)
    # (N S2 / S1^2 - 1) / N; clamped at zero against rounding (it is >= 0 by Cauchy-Schwarz).
    relative_var = (n * s2 / (s1 * s1) - 1.0).clamp(min=0.0) / n
    return torch.sqrt(relative_var)


def khat_threshold(num_samples: int) -> float:
    """Sample-size-dependent reliability threshold for the Pareto k-hat diagnostic.

    ``threshold(N) = min(1 - 1/log10(N), 0.7)`` (Vehtari et al., 2024, Section 3.2.2).  With
    ``k-hat`` below it, importance sampling with ``N`` draws can be expected to be reliable;
    above it, the pre-asymptotic error is too large (and above 0.7 no feasible ``N`` helps).

    Args:
        num_samples: Number of importance samples ``N`` (at least 1).

    Returns:
        The threshold; ``-inf`` for ``N = 1`` (the limit of the formula).

    Raises:
        ValueError: If ``num_samples < 1``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if num_samples == 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def _pareto_tail_length(num_samples: int) -> int:
    """Tail length ``M = ceil(min(0.2 N, 3 sqrt(N))) = min(ceil(N / 5), ceil(sqrt(9 N)))``.

    Computed in exact integer arithmetic.
    """
    ceil_fifth = -(-num_samples // 5)
    root = math.isqrt(9 * num_samples)
    ceil_root = root if root * root == 9 * num_samples else root + 1
    return min(ceil_fifth, ceil_root)


def _quartile_index(n: int) -> int:
    """0-based index of the first-quartile order statistic ``x_(floor(n/4 + 1/2))``."""
    return math.floor(n / 4 + 0.5) - 1


def _gpd_fit_zhang_stephens(x: Tensor) -> tuple[Tensor, Tensor]:
    """Fit a generalized Pareto distribution with location 0 (Zhang & Stephens, 2009).

    The GPD with shape ``k`` and scale ``sigma`` has density
    ``(1/sigma) (1 + k x / sigma)^(-1/k - 1)``.  With ``theta = -k / sigma`` and
    ``k(theta) = (1/n) sum_i log(1 - theta x_i)`` (the ML estimate of ``k`` given ``theta``),
    the profile log-likelihood is ``l(theta) = n (log(-theta / k(theta)) - k(theta) - 1)``.
    Zhang & Stephens' empirical-Bayes estimate is the posterior mean of ``theta`` over the grid
    ``theta_j = 1/x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x_q)``, ``j = 1..m``,
    ``m = 30 + floor(sqrt(n))`` (Zhang & Stephens use 20; 30 is the grid of the PSIS reference
    implementations), ``x_q`` the first quartile ``x_(floor(n/4 + 1/2))``, with
    posterior weights proportional to ``exp(l(theta_j))``.  Then ``k = k(theta_hat)`` and
    ``sigma = -k / theta_hat``.  No prior on ``k`` is applied here (see :func:`pareto_khat`).

    Args:
        x: Exceedances, shape ``(B, n)``, each row sorted ascending and non-negative, with a
            positive first quartile ``x_q``.

    Returns:
        ``(k, sigma)``, each of shape ``(B,)``.
    """
    n = x.shape[-1]
    m = 30 + math.isqrt(n)
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    x_max = x[:, -1]
    quartile = x[:, _quartile_index(n)]
    # theta_j < 1/x_max for every j (the second term is negative), so 1 - theta_j x_i > 0.
    theta = 1.0 / x_max[:, None] + (1.0 - torch.sqrt(m / (j - 0.5)))[None, :] / (
        3.0 * quartile[:, None]
    )  # (B, m)
    k_grid = torch.log1p(-theta[:, :, None] * x[:, None, :]).mean(dim=-1)  # (B, m)
    profile = n * (torch.log(-theta / k_grid) - k_grid - 1.0)
    profile = torch.where(torch.isnan(profile), -torch.inf, profile)
    post = torch.softmax(profile, dim=-1)
    theta_hat = (post * theta).sum(dim=-1)
    k = torch.log1p(-theta_hat[:, None] * x).mean(dim=-1)
    sigma = -k / theta_hat
    return k, sigma


def pareto_khat(log_weights: Tensor, num_samples: int | None = None) -> Tensor:
    """Pareto k-hat diagnostic of Vehtari, Simpson, Gelman, Yao & Gabry (JMLR, 2024).

    Estimates the shape ``k`` of the generalized Pareto distribution (GPD) fitted to the upper
    tail of the weights; the weight distribution has finite moments of order ``< 1/k``.
    ``k < 0.5``: finite variance; ``k`` below :func:`khat_threshold` (at most 0.7): importance
    sampling is reliable; ``k > 0.7``: unreliable for any feasible ``N``; ``k >= 1``: the
    weights do not even have a finite mean.

    Procedure, with ``u_i = exp(log w_i - max_j log w_j)`` (scale invariant, overflow free):

    1. ``M = ceil(min(0.2 N, 3 sqrt(N)))`` tail points: the ``M`` largest ``u``.
    2. Threshold ``u_thr``: the ``(M+1)``-th largest ``u``; exceedances ``x = u_tail - u_thr``.
    3. ``k_ZS``: Zhang & Stephens (2009) empirical-Bayes GPD fit (location 0) to ``x``.
    4. Weakly informative prior: ``k = (M k_ZS + 10 * 0.5) / (M + 10)``.

    The result is invariant to adding a constant to all log weights (up to rounding).

    Edge cases (per batch column):

    * ``M < 5``, i.e. ``N < 21``: too few tail points, ``NaN``.
    * any ``NaN`` log weight: ``NaN``.
    * otherwise any ``+inf`` log weight: ``+inf`` (an infinitely heavy tail).
    * all log weights ``-inf`` (all weights zero): ``NaN`` (weights undefined after
      normalisation).
    * flat tail, i.e. all exceedances zero (e.g. all weights equal): ``-inf``, meaning "no tail
      at all".  More generally any constant tail (the ``M`` largest weights all equal) gives
      ``-inf``: a point mass at the top is the ``k -> -inf`` limit of the GPD.
    * heavily tied tail that is not constant: if the first quartile of the exceedances is zero,
      i.e. at least a quarter of the tail ties with the threshold (e.g. weights taking only a
      few distinct values), the tail is far from a GPD and the Zhang & Stephens grid (scaled by
      that quartile) is undefined: ``NaN``.  (``posterior::gpdfit`` returns ``NA`` more
      eagerly, whenever the quartile equals the smallest exceedance; that would also reject
      every 5-point tail, whose quartile *is* its minimum.)
    * ``-inf`` log weights (zero weights) among others are legitimate; they sort to the bottom
      and count in ``N``.

    Args:
        log_weights: Log importance weights, shape ``(N, *batch)``.
        num_samples: When given, ``log_weights`` holds only the largest log weights of
            ``num_samples`` particles (at least the ``M + 1`` largest, M computed from
            ``num_samples``), as a stream keeps them.

    Returns:
        Float64 tensor of shape ``batch``.

    Raises:
        ValueError: If ``log_weights`` is 0-dimensional or has no particles, or holds
            fewer than ``M + 1`` of ``num_samples`` weights.
    """
    lw = _as_float64(log_weights)
    n = lw.shape[0] if num_samples is None else num_samples
    if num_samples is not None and lw.shape[0] < min(_pareto_tail_length(n) + 1, n):
        raise ValueError(
            f"{lw.shape[0]} log weights cannot hold the {_pareto_tail_length(n) + 1} largest of {n}"
        )
    batch_shape = lw.shape[1:]
    flat = lw.reshape(lw.shape[0], -1)  # (N, B), or the largest of N
    num_cols = flat.shape[1]
    out = torch.full((num_cols,), torch.nan, dtype=torch.float64, device=lw.device)
    tail_len = _pareto_tail_length(n)
    if tail_len < _MIN_TAIL_POINTS or num_cols == 0:
        return out.reshape(batch_shape)

    has_nan = torch.isnan(flat).any(dim=0)
    has_posinf = torch.isposinf(flat).any(dim=0)
    all_zero = torch.isneginf(flat).all(dim=0)
    out = torch.where(has_posinf & ~has_nan, torch.inf, out)
    valid = ~(has_nan | has_posinf | all_zero)
    if not bool(valid.any()):
        return out.reshape(batch_shape)

    # (M+1, B_valid), descending: row 0 is the maximum, row M the threshold.
    top = torch.topk(flat[:, valid], tail_len + 1, dim=0, largest=True, sorted=True).values
    u = torch.exp(top - top[0])
    exceedances = (u[:tail_len] - u[tail_len]).T.flip(-1)  # (B_valid, M), ascending rows
    x_min = exceedances[:, 0]
    constant = exceedances[:, -1] <= x_min  # flat tail: a point mass, the k -> -inf limit
    # The Zhang & Stephens grid needs a positive first quartile; else heavily tied: NaN.
    fittable = (exceedances[:, _quartile_index(tail_len)] > 0) & ~constant
    khat = torch.full_like(x_min, torch.nan).masked_fill(constant, -torch.inf)
    if bool(fittable.any()):
        x = exceedances[fittable]
        m_grid = 30 + math.isqrt(tail_len)
        chunk = max(1, _MAX_BLOCK_ELEMENTS // (m_grid * tail_len))
        k_zs = torch.cat([_gpd_fit_zhang_stephens(xc)[0] for xc in torch.split(x, chunk)])
        k_post = (tail_len * k_zs + _KHAT_PRIOR_WEIGHT * _KHAT_PRIOR_VALUE) / (
            tail_len + _KHAT_PRIOR_WEIGHT
        )
        khat[fittable] = k_post
    out[valid] = khat
    return out.reshape(batch_shape)


def pareto_tail_length(num_samples: int) -> int:
    """How many of the largest weights the k-hat fit uses: ``ceil(min(0.2 N, 3 sqrt(N)))``."""
    return _pareto_tail_length(num_samples)


# -- weighted statistics -----------------------------------------------------------------


def _shaped_weights(values: Tensor, log_weights: Tensor) -> Tensor:
    """Normalized weights with trailing singleton dimensions, to multiply ``values``."""
    weights = normalized_weights(log_weights)
    if values.shape[: weights.dim()] != weights.shape:
        raise ValueError(
            f"values of shape {tuple(values.shape)} do not start with the log weights' shape "
            f"{tuple(weights.shape)}"
        )
    return weights.reshape(weights.shape + (1,) * (values.dim() - weights.dim()))


def weighted_mean(values: Tensor, log_weights: Tensor) -> Tensor:
    """Self-normalised estimate of an expectation: ``E[f] ≈ sum_i wbar_i f(x_i)``.

    ``values`` holds ``f(x_i)``, shape ``(N, *batch, *event)``; the result, in float64, has
    shape ``(*batch, *event)``.  A ``ValueError`` says when ``values`` does not start with the
    shape of ``log_weights``.

    Example:
        >>> import torch
        >>> from infcomp.diagnostics import weighted_mean
        >>> weighted_mean(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
        tensor(0.5000, dtype=torch.float64)
    """
    return (_shaped_weights(values, log_weights) * values.to(torch.float64)).sum(0)


def weighted_variance(values: Tensor, log_weights: Tensor, mean: Tensor | None = None) -> Tensor:
    """Self-normalised variance: ``Var[f] ≈ sum_i wbar_i (f(x_i) - E[f])^2``.

    Shapes as for :func:`weighted_mean`, whose result may be passed as ``mean`` where it is
    already known (the streaming merge needs both).

    Example:
        >>> import torch
        >>> from infcomp.diagnostics import weighted_variance
        >>> values, log_weights = torch.tensor([[0.0, 2.0], [1.0, 4.0]]), torch.zeros(2)
        >>> weighted_variance(values, log_weights)  # per element of the event
        tensor([0.2500, 1.0000], dtype=torch.float64)
    """
    weights = _shaped_weights(values, log_weights)
    values = values.to(torch.float64)
    if mean is None:
        mean = (weights * values).sum(0)
    return (weights * (values - mean) ** 2).sum(0)


def mcse_mean(values: Tensor, log_weights: Tensor) -> Tensor:
    """Monte Carlo standard error of the self-normalised mean :func:`weighted_mean`.

    ``mcse = sqrt(sum_i wbar_i^2 (f(x_i) - mu_hat)^2)``, ``mu_hat = sum_i wbar_i f(x_i)``:
    the delta-method variance of a ratio estimate (Owen, *Monte Carlo theory, methods and
    examples*, 2013, ch. 9, sec. 9.2), with the expectations replaced by sample sums.
    Unlike ``std / sqrt(ESS)`` it sees how the weights and ``f`` vary together: for a
    rare event that the proposal under-samples but the target favours, few particles
    carry the estimate and the error is several times what the ESS suggests. Like every
    moment-based estimate it is itself unreliable when the weights are heavy-tailed
    (check :func:`pareto_khat`) or when few particles have ``f != mu_hat``.

    Shapes as for :func:`weighted_mean`: ``values`` ``(N, *batch, *event)``, result
    ``(*batch, *event)`` in float64.

    Example:
        >>> import torch
        >>> from infcomp.diagnostics import mcse_mean
        >>> values = torch.tensor([0.0, 1.0, 0.0, 1.0])
        >>> mcse_mean(values, torch.zeros(4))  # sqrt(4 * (1/4)^2 * (1/2)^2) = 1/4
        tensor(0.2500, dtype=torch.float64)
    """
    weights = _shaped_weights(values, log_weights)
    values = values.to(torch.float64)
    mean = (weights * values).sum(0)
    return (weights.square() * (values - mean).square()).sum(0).sqrt()


def mcse_sd(values: Tensor, log_weights: Tensor) -> Tensor:
    """Monte Carlo standard error of the self-normalised standard deviation.

    The variance ``v_hat = sum_i wbar_i (f_i - mu_hat)^2`` is the self-normalised mean of
    ``g_i = (f_i - mu_hat)^2``, so :func:`mcse_mean` of ``g`` is its error (the error of
    ``mu_hat`` adds only a second-order term); the delta method for ``sd = sqrt(v)``
    divides by ``2 sd``: ``mcse_sd = sqrt(sum_i wbar_i^2 (g_i - v_hat)^2) / (2 sd_hat)``,
    and 0 where ``sd_hat`` is 0 (NaN where the weights are undefined, as for
    :func:`mcse_mean`). Shapes as for :func:`mcse_mean`.

    Example:
        >>> import torch
        >>> from infcomp.diagnostics import mcse_sd
        >>> mcse_sd(torch.tensor([0.0, 2.0, 0.0, 2.0]), torch.zeros(4))  # every g_i = v_hat
        tensor(0., dtype=torch.float64)
    """
    weights = _shaped_weights(values, log_weights)
    values = values.to(torch.float64)
    squared_deviations = (values - (weights * values).sum(0)).square()
    variance = (weights * squared_deviations).sum(0)
    mcse_variance = (weights.square() * (squared_deviations - variance).square()).sum(0).sqrt()
    sd = variance.sqrt()
    # 0 where the spread is 0; NaN stays NaN (undefined weights: all zero, NaN or +inf).
    return torch.where(sd == 0, torch.zeros_like(sd), mcse_variance / (2 * sd))


def weighted_quantile(
    values: Tensor, log_weights: Tensor, probs: float | Sequence[float] | Tensor
) -> Tensor:
    """Weighted quantiles, elementwise: the smallest ``v`` with ``sum_{x_i <= v} wbar_i >= q``.

    The cumulative weights are sums of the weights rescaled by the largest one, so that equal
    weights add up exactly and a level such as ``1/2`` falls exactly on a particle's cumulative
    weight: with equal weights the ``q`` quantile is the ``ceil(q N)``-th smallest value.

    Args:
        values: The particles' values, shape ``(N, *batch, *event)``.
        log_weights: Log importance weights, shape ``(N, *batch)``.
        probs: Levels ``q`` in ``[0, 1]``.

    Returns:
        Float64 tensor of shape ``(*probs.shape, *batch, *event)``; NaN for a batch
        column whose weights are undefined (a NaN or +inf log weight, or all zero).

    Raises:
        ValueError: If a level lies outside ``[0, 1]``, the shapes do not match, or
            ``log_weights`` has no particles.

    Example:
        >>> import torch
        >>> from infcomp.diagnostics import weighted_quantile
        >>> values = torch.tensor([3.0, 1.0, 2.0, 4.0])
        >>> weighted_quantile(values, torch.zeros(4), [0.25, 0.5, 0.75, 1.0])
        tensor([1., 2., 3., 4.], dtype=torch.float64)
    """
    q = torch.as_tensor(probs, dtype=torch.float64)
    if not bool(((q >= 0) & (q <= 1)).all()):
        raise ValueError(f"quantile levels must lie in [0, 1], got {q.tolist()}")
    lw = _as_float64(log_weights)
    _shaped_weights(values, lw)  # checks the shapes
    n, batch, event = lw.shape[0], lw.shape[1:], values.shape[lw.dim() :]
    columns, elements = batch.numel(), event.numel()
    flat = values.to(torch.float64).reshape(n, columns, elements)
    ordered, order = flat.sort(dim=0)
    shifted = (lw - lw.amax(dim=0)).exp().reshape(n, columns, 1).expand(n, columns, elements)
    cumulative = shifted.gather(0, order).reshape(n, -1).T.contiguous().cumsum(-1)
    targets = (q.to(lw.device).reshape(1, -1) * cumulative[:, -1:]).contiguous()
    index = torch.searchsorted(cumulative, targets).clamp_(max=n - 1)  # (columns * elements, Q)
    result = ordered.reshape(n, -1).gather(0, index.T.contiguous())
    # Undefined weights (a NaN or +inf, or all zero) have no quantile: NaN, as for the mean.
    undefined = torch.isnan(lw).any(0) | torch.isposinf(lw).any(0) | torch.isneginf(lw).all(0)
    undefined = undefined.reshape(1, columns, 1).expand(len(q.reshape(-1)), columns, elements)
    result = result.reshape(undefined.shape).masked_fill(undefined, math.nan)
    return result.reshape(q.shape + batch + event)


# -- the problems report -----------------------------------------------------------------


def low_ess(num_particles: int) -> float:
    """Below this ESS the weight sits on too few particles: ``MIN_ESS_FRACTION * N``, and
    at least 1.5 (an ESS of about one is a collapse whatever N is) when N > 1."""
    return max(MIN_ESS_FRACTION * num_particles, 1.5 if num_particles > 1 else 0.0)


def weight_problems(
    num_particles: int,
    ess: Tensor | float,
    khat: Tensor | float | None,
    num_nan: Tensor | int = 0,
    num_infinite: Tensor | int = 0,
    num_zero: Tensor | int = 0,
    nonfinite_sites: Mapping[str, int] | None = None,
) -> list[str]:
    """Reasons not to trust importance-sampling estimates; empty when none are found.

    The checks, in order; the first two end the report, since the later ones are then
    undefined:

    1. NaN or +inf log weights: every estimate is NaN (``nonfinite_sites`` names the sites
       whose log densities were NaN or +inf, with how many particles each).
    2. All ``N`` weights zero: no particle is consistent with the data.
    3. ``ESS < MIN_ESS_FRACTION * N``, or ``ESS < 1.5`` (N > 1): almost all the weight
       sits on few particles, or on one.
    4. ``k-hat > khat_threshold(N)``: the weights are heavy-tailed.
    5. ``k-hat`` is NaN (N < 21, or a tail of tied weights): the weights' reliability
       cannot be judged, which is itself a reason for caution.

    For one set of weights (scalar ``ess``, ``khat`` and counts) each problem is a sentence
    with its numbers. With batch dimensions (the arguments are tensors of the batch shape,
    e.g. one entry per data set) each problem is reported once, with how many entries have
    it: ``"3 with ESS/N below 0.001"``.

    Args:
        num_particles: ``N``.
        ess: :func:`effective_sample_size` of the weights.
        khat: :func:`pareto_khat` of the weights; None skips checks 4 and 5 (weights for
            which k-hat is not the importance-sampling diagnostic, as sequential Monte
            Carlo's).
        num_nan, num_infinite, num_zero: how many log weights are NaN, +inf and -inf.
        nonfinite_sites: for the first check, particles with a NaN or +inf log density, by
            site.

    Example:
        >>> from infcomp.diagnostics import weight_problems
        >>> for problem in weight_problems(1000, ess=0.5, khat=0.9):  # doctest: +ELLIPSIS
        ...     print(problem)
        ESS is 0.5 of 1000 particles (0.05%): the proposal is poor for these data; ...
        Pareto k-hat is 0.90 > 0.67: the weights are heavy-tailed and estimates may be far off (...
        >>> weight_problems(10, ess=float("nan"), khat=float("nan"), num_zero=10)
        ['all 10 weights are zero: no particle is consistent with the data']
    """
    n = num_particles
    threshold = khat_threshold(n)
    if khat is None:
        khat = -math.inf  # passes checks 4 and 5
    arguments = (ess, khat, num_nan, num_infinite, num_zero)
    if any(isinstance(x, Tensor) and x.dim() > 0 for x in arguments):
        ess_t = torch.as_tensor(ess, dtype=torch.float64)
        khat_t = torch.as_tensor(khat, dtype=torch.float64)
        nan_t, inf_t, zero_t = (torch.as_tensor(c) for c in (num_nan, num_infinite, num_zero))
        nonfinite_t = (nan_t + inf_t) > 0
        all_zero_t = ~nonfinite_t & (zero_t == n)
        checked = ~(nonfinite_t | all_zero_t)
        found = [
            (nonfinite_t, "NaN or +inf weights"),
            (all_zero_t, "all weights zero"),
            (checked & (ess_t < low_ess(n)), f"ESS/N below {MIN_ESS_FRACTION} (or ESS about 1)"),
            (checked & (khat_t > threshold), f"Pareto k-hat above {threshold:.2f}"),
            (checked & torch.isnan(khat_t), "Pareto k-hat not computable"),
        ]
        return [f"{int(mask.sum())} with {what}" for mask, what in found if bool(mask.any())]
    # One set of weights: plain numbers (tensor arithmetic costs more than it saves here).
    nan_count, inf_count, zero_count = int(num_nan), int(num_infinite), int(num_zero)
    nonfinite = nan_count + inf_count > 0
    all_zero = not nonfinite and zero_count == n
    few = not (nonfinite or all_zero) and float(ess) < low_ess(n)
    heavy = not (nonfinite or all_zero) and float(khat) > threshold
    unknown = not (nonfinite or all_zero) and math.isnan(float(khat))
    if nonfinite:
        sites = ", ".join(f"{name!r} ({count})" for name, count in (nonfinite_sites or {}).items())
        where = f"; sites with non-finite log densities: {sites}" if sites else ""
        return [
            f"{nan_count} NaN and {inf_count} +inf log weights out of {n}; estimates are NaN{where}"
        ]
    if all_zero:
        return [f"all {n} weights are zero: no particle is consistent with the data"]
    problems = []
    if few:
        value = float(ess)
        problems.append(
            f"ESS is {value:.1f} of {n} particles ({value / n:.2%}): the proposal is poor for "
            f"these data; use more particles or a better proposal"
        )
    if heavy:
        problems.append(
            f"Pareto k-hat is {float(khat):.2f} > {threshold:.2f}: the weights are "
            f"heavy-tailed and estimates may be far off (k-hat is fitted to the largest "
            f"{_pareto_tail_length(n)} of {n} weights; where ESS/N is high, a few large but "
            f"bounded weights can look like a heavy tail: more particles tell them apart)"
        )
    if unknown:
        cause = (
            "fewer than 21 particles"
            if n < 21
            else "the largest weights tie: they take few distinct values, as the weights of "
            "discrete latents do, so no tail can be fitted; judge by the ESS and by "
            "independent runs"
        )
        problems.append(
            f"Pareto k-hat cannot be computed ({cause}): how reliable these estimates are "
            f"is unknown"
        )
    return problems
