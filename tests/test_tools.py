"""The repository's own tools: the core line counter (``tools/core_lines.py``)."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "core_lines.py"


@pytest.fixture(scope="module")
def core_lines():
    spec = importlib.util.spec_from_file_location("core_lines", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def count(core_lines, source: str) -> int:
    return core_lines.code_lines(textwrap.dedent(source))


def test_blank_lines_and_comments_do_not_count(core_lines):
    source = """
        # a comment

        x = 1  # a trailing comment keeps the line
            # an indented comment
        y = 2
    """
    assert count(core_lines, source) == 2


def test_docstrings_do_not_count_at_any_level(core_lines):
    source = '''
        """Module docstring,
        over two lines."""

        class A:
            """Class docstring."""

            x: int = 0
            """An attribute docstring."""

            def f(self):
                """Function docstring.

                With an example:

                >>> A().f()
                1
                """
                return 1

        async def g():
            \'\'\'Async docstring.\'\'\'
    '''
    assert count(core_lines, source) == 5  # class, x, def f, return, async def


def test_strings_that_are_values_count_every_line(core_lines):
    source = '''
        TEXT = """one
        two
        three"""
        call(
            "a",
            "b",
        )
    '''
    assert count(core_lines, source) == 7


def test_a_docstring_sharing_a_line_with_code(core_lines):
    assert count(core_lines, 'def f(): "doc"; return 1\n') == 1
    assert count(core_lines, '"""doc"""; x = 1\n') == 1
    assert count(core_lines, '"""doc"""\n') == 0


def test_empty_source(core_lines):
    assert count(core_lines, "") == 0
    assert count(core_lines, "# only a comment\n\n") == 0


def test_the_command_prints_counts_and_fails_above_the_limit(core_lines, tmp_path, capsys):
    small = tmp_path / "small.py"
    small.write_text('"""Doc."""\n\nimport os\n\n# why\nprint(os.sep)\n')
    assert core_lines.main([str(small), "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "2" and out[-1].split()[:2] == ["2", "total"]
    assert core_lines.main([str(small), str(small), "--limit", "3"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].split()[0] == "4"
    assert "1 over the limit of 3" in captured.err


def test_the_default_files_are_the_core(core_lines):
    names = [path.name for path in core_lines.CORE_FILES]
    assert names == ["runtime.py", "primitives.py", "handlers.py", "errors.py"]
    assert all(path.is_file() for path in core_lines.CORE_FILES)
    assert core_lines.LIMIT == 400
