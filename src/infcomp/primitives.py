"""The language: ``sample``, ``observe`` and ``factor``.

A model is a Python function that calls these with a unique name per site::

    def gaussian(prior_mean=1.0):
        z = ic.sample("z", Normal(prior_mean, 5**0.5))
        ic.observe("x1", Normal(z, 2**0.5))
        ic.observe("x2", Normal(z, 2**0.5))
        return z

Run plainly, the model is a simulator: every site samples. Under inference, an
``observe`` takes its value from the data handed to the inference call by site name.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.distributions import Distribution

from infcomp.errors import ModelError
from infcomp.runtime import Site, apply_stack, as_value


def _check_name(name: Any, primitive: str) -> None:
    if not isinstance(name, str) or not name:
        raise ModelError(f"{primitive}() needs a non-empty string name, got {name!r}")


def _check_distribution(name: str, fn: Any, primitive: str) -> None:
    if not isinstance(fn, Distribution):
        raise ModelError(
            f"{primitive} site {name!r}: expected a torch.distributions.Distribution, "
            f"got {type(fn).__name__}"
        )


def sample(name: str, fn: Distribution, obs: Tensor | float | None = None) -> Tensor:
    """A latent random variable ``x ~ fn``, named ``name``.

    Returns the value chosen by the active handlers (a proposal's value, a replayed
    value) or, if none chooses, a draw from ``fn``. ``sample(name, fn, obs=y)`` is
    ``observe(name, fn, value=y)``, Pyro's spelling of an observation.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> import infcomp as ic
        >>> _ = torch.manual_seed(0)
        >>> ic.sample("z", Normal(0.0, 1.0)).shape
        torch.Size([])
        >>> trace = ic.trace(lambda: ic.sample("y", Normal(0.0, 1.0), obs=2.0)).get_trace()
        >>> trace["y"].kind, float(trace["y"].value)
        ('observe', 2.0)
    """
    if obs is not None:
        return observe(name, fn, value=obs)
    _check_name(name, "sample")
    _check_distribution(name, fn, "sample")
    value = apply_stack(Site(name, "sample", fn)).value
    assert value is not None
    return value


def observe(name: str, fn: Distribution, value: Tensor | float | None = None) -> Tensor:
    """An observation ``y ~ fn``, named ``name``; contributes ``log fn(y)`` to the weight.

    The observed value comes from the data handed to the inference call under
    ``name``; failing that, from ``value`` (a fixed observation). Under joint
    simulation (:class:`infcomp.handlers.uncondition`) and in a plain run without a value,
    the site samples instead: the sample/observe duality that lets inference
    compilation simulate (latents, observations) pairs from the model.
    """
    _check_name(name, "observe")
    _check_distribution(name, fn, "observe")
    if value is not None and not isinstance(value, Tensor):
        value = as_value(value, f"the value of observe site {name!r}")
    result = apply_stack(Site(name, "observe", fn, value)).value
    assert result is not None
    return result


def factor(name: str, log_weight: Tensor | float) -> None:
    """Add ``log_weight`` to the log joint density (an unnormalized soft constraint)."""
    _check_name(name, "factor")
    if not isinstance(log_weight, Tensor):
        log_weight = as_value(log_weight, f"the log weight of factor {name!r}")
    apply_stack(Site(name, "factor", None, log_weight))
