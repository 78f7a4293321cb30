"""Count the code lines of infcomp's core and fail above the budget (issue 9: at most 400).

A code line is a physical line that holds part of a Python token other than a comment,
and that is not part of a docstring. Blank lines, comment-only lines and docstrings
(any statement that is a bare string literal: module, class, function and attribute
docstrings) do not count. A statement or a string literal spread over several lines
counts each of its lines, as ``cloc`` does. The counts come from ``tokenize`` and
``ast``, not from patterns on the text.

Usage: ``python tools/core_lines.py [--limit N] [FILE ...]`` (defaults: the core files
below and a limit of 400). Prints a count per file and the total; exits 1 above the limit.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ("runtime.py", "primitives.py", "handlers.py", "errors.py")
CORE_FILES = tuple(ROOT / "src" / "infcomp" / name for name in CORE)
LIMIT = 400

_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}

Position = tuple[int, int]


def _docstring_spans(tree: ast.AST) -> list[tuple[Position, Position]]:
    """The (start, end) positions of every statement that is a bare string literal."""
    spans = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            assert node.end_lineno is not None and node.end_col_offset is not None
            spans.append(((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)))
    return spans


def code_lines(source: str) -> int:
    """The number of code lines in ``source`` (see the module docstring for the rule)."""
    spans = _docstring_spans(ast.parse(source))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in _NOT_CODE:
            continue
        if any(start <= token.start < end for start, end in spans):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, default=list(CORE_FILES))
    parser.add_argument("--limit", type=int, default=LIMIT)
    args = parser.parse_args(argv)
    total = 0
    for path in args.files:
        count = code_lines(path.read_text(encoding="utf-8"))
        total += count
        try:
            shown = path.resolve().relative_to(ROOT)
        except ValueError:
            shown = path
        print(f"{count:6d}  {shown}")
    print(f"{total:6d}  total (limit {args.limit})")
    if total > args.limit:
        print(
            f"core_lines: {total} code lines, {total - args.limit} over the limit of {args.limit}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
