"""Deprecated names: each old name keeps working for one release, with a warning.

Every alias in the library goes through these two functions, so that a warning says
the same thing everywhere and the aliases are easy to find and remove.
"""

from __future__ import annotations

import warnings
from typing import TypeVar

_T = TypeVar("_T")


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is now called ``new``."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_argument(
    old: str, old_value: _T | None, new: str, new_value: _T | None, stacklevel: int = 4
) -> _T | None:
    """The value of an argument that was renamed from ``old`` to ``new``.

    Giving both is a ``TypeError``; giving the old one warns. Returns whichever was
    given (None when neither was).
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"give {new}= only ({old}= is its deprecated name)")
    warn_renamed(f"the argument {old}=", f"{new}=", stacklevel)
    return old_value
