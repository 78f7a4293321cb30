"""What the inference algorithms share: argument checks, quiet probe runs, warnings."""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch

from infcomp._deprecation import user_stacklevel

Program = Callable[..., Any]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer of at least ``minimum``, else a ValueError.

    An integer is any ``numbers.Integral`` (Python's, NumPy's ``np.int64``) or a 0-d
    integer tensor; a bool, a float (even ``1000.0``) and a NaN are not.
    """
    number = value
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        number = value.item()  # an int, or a float or bool refused below
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(number)


def check_finite(name: str, value: Any, minimum: float) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) of at least
    ``minimum``, else a ValueError: an infinite or NaN setting would only make NaNs."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ValueError(f"{name} must be a finite number of at least {minimum:g}, got {value!r}")
    return float(value)


def check_vectorize(vectorize: Any) -> bool | None:
    """``vectorize`` if it is True, False or None (automatic), else a ValueError."""
    if vectorize not in (None, True, False):
        raise ValueError(f"vectorize must be True, False or None (automatic), got {vectorize!r}")
    return bool(vectorize) if vectorize is not None else None


def untouched_random_state() -> contextlib.AbstractContextManager[None]:
    """A context in which random draws leave the global (CPU) random state as it was.

    Probe runs (which find sites' natural shapes or validate data) happen inside it, so
    that a seeded computation draws the same numbers whether or not it probed first.
    """
    return torch.random.fork_rng(devices=[])


def program_name(program: Any) -> str:
    """A readable name of a model or guide for messages."""
    return repr(getattr(program, "__qualname__", type(program).__name__))


def warn_user(message: str, category: type[Warning]) -> None:
    """Warn, attributed to the first caller outside infcomp (the user's line)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())


def plain_value(value: Any, containers: tuple[type, ...] = (tuple,)) -> bool:
    """Whether ``value`` is None, a bool, int, float or str (exactly: not numpy's
    scalars), or one of ``containers`` (tuple, list, dict with string keys) of such
    values: a model argument that can key a cache (tuples only: hashable) or be saved in
    an artifact (all three)."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) in (tuple, list) and type(value) in containers:
        return all(plain_value(item, containers) for item in value)
    if type(value) is dict and dict in containers:
        return all(
            isinstance(key, str) and plain_value(item, containers) for key, item in value.items()
        )
    return False
