"""No module of infcomp imports a module of a higher layer (the layers of DESIGN.md).

The imports are read from the source with ``ast``, wherever they are: at module level,
inside functions, under ``if TYPE_CHECKING:``, absolute or relative (``from . import x``).
A module missing from ``LAYERS`` fails the test, so a new module must be placed.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "infcomp"

# The one table. A name ending in ".*" covers that package and every module under it;
# any other name covers that module only. Imports within a layer are allowed.
LAYERS: dict[str, int] = {
    "infcomp.errors": 0,
    "infcomp.distributions": 0,
    "infcomp._deprecation": 0,
    "infcomp.runtime": 1,
    "infcomp.primitives": 2,
    "infcomp.handlers": 3,
    "infcomp.traces": 3,  # trace batching, out of the runtime
    "infcomp.diagnostics": 4,
    "infcomp.resampling": 4,
    "infcomp.empirical": 4,
    "infcomp.posterior": 4,
    "infcomp.export": 4,  # Posterior.to_arviz
    "infcomp.nn.*": 5,
    "infcomp.inference.*": 6,
    "infcomp.examples.*": 8,
    "infcomp.demo": 8,
    "infcomp.sir_demo": 8,
    "infcomp.calibration": 8,
    "infcomp.plots": 8,
    "infcomp.cli": 8,
    "infcomp.__main__": 8,
    "infcomp.distributed": 8,  # torchrun -m infcomp.distributed: the command
    "infcomp": 8,  # the package's __init__: the public API gathers every layer
}


def layer_of(module: str, table: Mapping[str, int] = LAYERS) -> int | None:
    """The layer of ``module``: its exact entry, else the longest matching ``.*`` entry."""
    if module in table:
        return table[module]
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        rule = ".".join(parts[:end]) + ".*"
        if rule in table:
            return table[rule]
    return None


@dataclass(frozen=True)
class Module:
    name: str
    source: str
    is_package: bool = False


def read_package(root: Path = PACKAGE) -> dict[str, Module]:
    """Every module of the package under ``root``, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path.read_text(encoding="utf-8"), is_package)
    return modules


def imported_modules(module: Module, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, at any depth of its source.

    ``from p import x`` imports the module ``p.x`` where there is one, else ``p`` itself
    (``x`` is then a name defined in ``p``).
    """
    found = set()
    for node in ast.walk(ast.parse(module.source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.name if module.is_package else module.name.rpartition(".")[0]
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return found & known


def layer_problems(modules: Mapping[str, Module], table: Mapping[str, int] = LAYERS) -> list[str]:
    """One line per module without a layer and per import of a higher layer."""
    problems = []
    known = set(modules)
    for name in sorted(modules):
        own = layer_of(name, table)
        if own is None:
            problems.append(f"{name} has no layer: add it to LAYERS in tests/test_layers.py")
            continue
        for target in sorted(imported_modules(modules[name], known)):
            theirs = layer_of(target, table)
            if theirs is not None and theirs > own:
                problems.append(f"{name} (layer {own}) imports {target} (layer {theirs})")
    return problems


def test_no_module_imports_a_higher_layer_and_every_module_has_a_layer():
    modules = read_package()
    assert "infcomp.runtime" in modules and "infcomp" in modules
    problems = layer_problems(modules)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(n for n in LAYERS if not n.endswith(".*")))
def test_each_module_named_in_the_table_exists(name):
    if name not in read_package():
        pytest.skip(f"{name} is placed in LAYERS but not written yet")


# The checker itself, on synthetic packages.


def synthetic(**sources: str) -> dict[str, Module]:
    """A package ``p`` from ``name=source`` pairs; ``__init__`` names a package's init."""
    modules = {}
    for key, source in sources.items():
        parts = key.split("__")
        is_package = parts[-1] == "init"
        name = ".".join(["p", *[part for part in parts if part and part != "init"]])
        modules[name] = Module(name, source, is_package)
    return modules


TABLE = {"p": 9, "p.low": 0, "p.mid": 1, "p.sub.*": 2, "p.high": 3}


def test_the_checker_accepts_imports_downward_and_within_a_layer():
    modules = synthetic(
        __init="from p.high import f\nfrom p import low\n",
        low="import os\nimport torch\n",
        mid="from p.low import f\nfrom . import low\n",
        sub__init="from .a import g\nfrom ..mid import h\n",
        sub__a="from p.sub import b\nfrom . import b as c\n",
        sub__b="",
        high="import p.sub.a\nfrom p.mid import x\n",
    )
    assert layer_problems(modules, TABLE) == []


@pytest.mark.parametrize(
    ("importer", "source", "target"),
    [
        ("low", "import p.mid\n", "p.mid"),
        ("low", "from p.high import f\n", "p.high"),
        ("low", "from p import high\n", "p.high"),
        ("low", "from . import high\n", "p.high"),
        ("low", "from .sub.a import g\n", "p.sub.a"),
        ("low", "from p import api_name\n", "p"),  # a name of the package's __init__
        ("low", "def f():\n    from p.high import g\n    return g\n", "p.high"),
        ("low", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.mid\n", "p.mid"),
        ("sub__a", "from .. import high\n", "p.high"),
        ("sub__a", "from ..high import x\n", "p.high"),
        ("sub__init", "from ..high import x\n", "p.high"),
        ("mid", "import p.sub.b as b\n", "p.sub.b"),
    ],
)
def test_the_checker_reports_an_import_of_a_higher_layer(importer, source, target):
    sources = dict(__init="", low="", mid="", sub__init="", sub__a="", sub__b="", high="")
    sources[importer] = source
    modules = synthetic(**sources)
    problems = layer_problems(modules, TABLE)
    name = synthetic(**{importer: ""}).popitem()[0]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{name} (layer ") and problems[0].endswith(
        f"imports {target} (layer {layer_of(target, TABLE)})"
    )


def test_the_checker_reports_a_module_without_a_layer():
    modules = synthetic(__init="", low="", stray="from p import low\n")
    assert layer_problems(modules, TABLE) == [
        "p.stray has no layer: add it to LAYERS in tests/test_layers.py"
    ]


def test_prefix_rules_place_new_submodules():
    assert layer_of("infcomp.nn.flows") == 5
    assert layer_of("infcomp.nn") == 5
    assert layer_of("infcomp.inference.particles") == 6
    assert layer_of("infcomp.examples") == 8
    assert layer_of("infcomp") == 8
    assert layer_of("infcomp.newthing") is None
    assert layer_of("infcomp.runtime.x") is None
