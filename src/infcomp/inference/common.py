"""What the inference algorithms share: argument checks and the batch-or-loop choice."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from infcomp.errors import ModelError, VectorizationError, VectorizationNotice

Program = Callable[..., Any]
_T = TypeVar("_T")


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


def batched_or_sequential(
    what: str,
    vectorize: bool | None,
    batched: Callable[[], _T],
    sequential: Callable[[], _T],
    stacklevel: int = 3,
) -> tuple[_T, bool]:
    """Run ``batched()``; if it fails and ``vectorize`` is None, run ``sequential()``.

    ``vectorize=False`` runs ``sequential()`` directly; ``vectorize=True`` turns a
    failure of ``batched()`` into a :class:`VectorizationError`. A
    :class:`~infcomp.errors.ModelError` is never a reason to fall back: it propagates.
    A fallback warns once per ``what`` (:class:`VectorizationNotice`). Returns the
    result and whether it came from the batched path.
    """
    if vectorize is False:
        return sequential(), False
    try:
        return batched(), True
    except ModelError:
        raise
    except Exception as error:
        if vectorize:
            raise VectorizationError(
                f"{what} cannot run with a leading batch dimension: {error}"
            ) from error
        warnings.warn(
            f"{what} runs one trace at a time because it could not be vectorized "
            f"({type(error).__name__}: {error}); pass vectorize=False to choose this path "
            f"directly",
            VectorizationNotice,
            stacklevel=stacklevel + 1,
        )
    return sequential(), False
