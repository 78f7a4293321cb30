"""What the inference algorithms share: argument checks, quiet probe runs, warnings."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch

from infcomp._deprecation import user_stacklevel

Program = Callable[..., Any]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


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
