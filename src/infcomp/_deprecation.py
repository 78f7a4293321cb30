"""Deprecated names: each old name keeps working for one release, with a warning.

Every alias in the library goes through these functions, so that a warning says the
same thing everywhere, points at the user's line, and the aliases are easy to find and
remove.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TypeVar

_T = TypeVar("_T")
_PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning, raised by the caller of this
    function, to the first frame outside infcomp (the user's line)."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIRECTORY):
        frame = frame.f_back
        level += 1
    return level


def warn_renamed(old: str, new: str) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is now called ``new``."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=user_stacklevel(),
    )


def renamed_argument(old: str, old_value: _T | None, new: str, new_value: _T | None) -> _T | None:
    """The value of an argument that was renamed from ``old`` to ``new``.

    Giving both is a ``TypeError``; giving the old one warns. Returns whichever was
    given (None when neither was).
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"give {new}= only ({old}= is its deprecated name)")
    warn_renamed(f"the argument {old}=", f"{new}=")
    return old_value
