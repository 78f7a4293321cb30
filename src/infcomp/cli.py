"""The ``infcomp`` command line: compile a model, then infer, calibrate and inspect.

::

    infcomp compile MODULE:FUNCTION --simulations N --out model.pt
    infcomp infer model.pt data.json --particles N [--method is|prior|smc]
                  [--out posterior.nc] [--plot figure.png]
    infcomp calibrate model.pt --datasets N [--particles N] [--plot sbc.png]
    infcomp info model.pt

Under ``torchrun`` (which sets ``WORLD_SIZE``), ``compile`` trains data-parallel on
every process (gloo on CPU, NCCL with ``--device cuda``); rank 0 prints and writes the
artifact::

    torchrun --standalone --nproc-per-node 2 -m infcomp compile MODULE:FUNCTION \\
        --simulations N --out model.pt

``MODULE:FUNCTION`` names the model, an infcomp program importable from the current
folder (``examples.sir:sir``, or a file: ``path/to/model.py:sir``); ``compile`` stores
it in the artifact, so that the other commands find the model again (``--model``
overrides). ``data.json`` maps observe-site names to numbers or nested lists.

A model given as ``FILE.py:FUNCTION`` is stored with the file's absolute path, so that
``infer`` and ``calibrate`` find it from any folder.

Exit status: 0 on success; 2 for bad usage (unknown options, missing or unreadable
files, output folders that do not exist, an unsupported figure format, a model that
cannot be imported, arguments the library rejects, data that do not fit the model,
a missing optional dependency: one line on stderr says why, no traceback; paths and
formats are checked before any training or inference); 1 when ``calibrate`` finds the
posterior not calibrated.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

import infcomp as ic
from infcomp.errors import ArtifactError, InferenceWarning
from infcomp.inference.artifacts import FORMAT_VERSION, Signature, read_artifact
from infcomp.nn.network import split_index

#: The metadata key under which ``compile`` stores the model's ``MODULE:FUNCTION``.
ENTRY_POINT = "entry_point"
#: ``compile --attention``: NetworkConfig's attention (None: decided from the model).
ATTENTION = {"auto": None, "on": True, "off": False}
#: Inference methods of ``infer``.
METHODS = ("is", "prior", "smc")


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


# -- the model ----------------------------------------------------------------------------


def load_entry_point(spec: str) -> Callable[..., Any]:
    """The function named by ``MODULE:FUNCTION`` (or ``FILE.py:FUNCTION``).

    Raises:
        UsageError: a malformed spec, a module that cannot be imported, a missing or
            non-callable attribute.
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise UsageError(f"the model must be given as MODULE:FUNCTION, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"model file {module_name!r} does not exist")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[path.stem] = module
            loader.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` does
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as error:  # the user's module: a syntax error, or raising at import
        if module_name.endswith(".py"):
            sys.modules.pop(Path(module_name).stem, None)
        raise UsageError(
            f"cannot import the model's module {module_name!r}: {type(error).__name__}: {error}"
        ) from None
    function: Any = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise UsageError(f"{spec!r} is not callable")
    return function  # type: ignore[no-any-return]


def stored_entry_point(spec: str) -> str:
    """``spec`` as stored in an artifact: a ``FILE.py`` by its absolute path."""
    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py"):
        return f"{Path(module_name).resolve()}:{attribute}"
    return spec


def load_compiled(
    path: str, model_spec: str | None
) -> tuple[ic.CSIS, Callable[..., Any], dict[str, Any]]:
    """The :class:`~infcomp.CSIS` saved at ``path``, its model (from the artifact's
    entry point, or ``model_spec``) and the artifact's payload."""
    payload = read_artifact_or_usage(path)
    spec = model_spec or payload["config"].get("metadata", {}).get(ENTRY_POINT)
    if not spec:
        raise UsageError(
            f"{path!r} does not say which model it compiles (it was not made by `infcomp "
            f"compile`): give --model MODULE:FUNCTION"
        )
    model = load_entry_point(spec)
    return ic.CSIS.load(path, model), model, payload


def read_artifact_or_usage(path: str) -> dict[str, Any]:
    if Path(path).is_dir():
        raise UsageError(f"artifact {path!r} is a directory, not a file")
    if not Path(path).is_file():
        raise UsageError(f"artifact {path!r} does not exist")
    return read_artifact(path)


def check_output(path: str, option: str) -> None:
    """That ``path`` can be written: not a directory, in a folder that exists."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path!r} is a directory, not a file")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path!r}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path!r}: the folder {str(folder)!r} is not writable")


def check_figure(path: str, option: str = "--plot") -> None:
    """That matplotlib is installed and can write ``path``'s format (its suffix)."""
    check_output(path, option)
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError(
            f"{option} needs matplotlib, an optional dependency: pip install 'infcomp[plot]'"
        ) from None
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UsageError(
            f"{option} {path!r}: the format is given by the suffix, one of "
            f"{', '.join(formats)}; got {('.' + suffix) if suffix else 'none'}"
        )


def check_data(data: dict[str, torch.Tensor], payload: dict[str, Any], path: str) -> None:
    """That each observation has a shape the model's observe site (family) had in the
    artifact's probe; sites the probe did not see are left to the inference."""
    if payload.get("signature") is None:
        return
    shapes: dict[str, set[tuple[int, ...]]] = {}
    for record in Signature.from_dict(payload["signature"]).sites:
        if record.kind == "observe":
            shapes.setdefault(record.family, set()).add(tuple(record.shape))
    for name, value in data.items():
        expected = shapes.get(split_index(name)[0])
        if expected and tuple(value.shape) not in expected:
            described = " or ".join(_shape(shape) for shape in sorted(expected))
            raise UsageError(
                f"{path!r}: observe site {name!r} has shape {_shape(tuple(value.shape))}; "
                f"the model's is {described}"
            )


def _shape(shape: tuple[int, ...]) -> str:
    return f"{list(shape)}" if shape else "scalar ()"


def validation_text(history: Sequence[Sequence[float]], online: bool | None) -> str:
    """The validation loss that matters: training on a budget restores the best
    epoch's parameters; online training keeps the last step's (None: not known)."""
    if not history:
        return "validation loss none"
    best, last = min(float(h[1]) for h in history), float(history[-1][1])
    if online is None:
        return f"validation loss {best:.4f} (best), {last:.4f} (last)"
    if online:
        return f"validation loss {last:.4f} (the last, kept by online training)"
    return f"validation loss {best:.4f} (the best epoch's, restored)"


def read_data(path: str) -> dict[str, torch.Tensor]:
    """Observations from a JSON object of site names to numbers or nested lists."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read the data file {path!r}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path!r} must hold a JSON object of observe-site names to values")
    try:
        return {str(name): torch.tensor(value, dtype=torch.float32) for name, value in data.items()}
    except (TypeError, ValueError) as error:
        raise UsageError(
            f"{path!r}: the values must be numbers or nested lists ({error})"
        ) from None


# -- the subcommands ----------------------------------------------------------------------


def compile_command(options: argparse.Namespace) -> int:
    """Train and save; under ``torchrun`` (``WORLD_SIZE`` set), data-parallel on every
    process of the group (gloo, or NCCL with ``--device cuda``), rank 0 printing and
    writing the artifact (see :mod:`infcomp.inference.distributed`)."""
    from infcomp.inference.distributed import DataParallel, launched_group

    model = load_entry_point(options.model)
    check_output(options.out, "--out")  # before training
    with launched_group(options.device or "cpu") as device:
        torch.manual_seed(options.seed)
        network = ic.nn.NetworkConfig(attention=ATTENTION[options.attention])
        csis = ic.CSIS(model, network=network, device=device if options.device else None)
        csis.metadata = {ENTRY_POINT: stored_entry_point(options.model), "seed": options.seed}
        trainer: ic.CSIS | DataParallel = csis
        rank, processes = 0, ""
        if "WORLD_SIZE" in os.environ:
            # Simulations are made in seeded chunks of at most 64: online, a divisor of
            # the global batch; on a budget, at least one chunk for each process.
            world_size = int(os.environ["WORLD_SIZE"])
            if options.steps is not None:
                chunk = math.gcd(options.batch_size or csis.training_batch_size, 64)
            else:
                chunk = max(min(64, options.simulations // world_size), 1)
            trainer = DataParallel(csis, chunk)
            rank, processes = trainer.rank, f" on {trainer.world_size} processes"
        progress = options.progress and rank == 0
        if options.steps is not None:
            budget = f"{options.steps} online steps of {options.batch_size or 256} simulations"
            trainer.train(num_steps=options.steps, batch_size=options.batch_size, progress=progress)
        else:
            budget = f"a budget of {options.simulations:,} simulations"
            trainer.train(
                num_simulations=options.simulations,
                batch_size=options.batch_size,
                progress=progress,
            )
        csis.metadata["budget"] = budget + processes
        if isinstance(trainer, DataParallel):
            trainer.save(options.out)
        else:
            csis.save(options.out)
    if rank == 0:
        validation = validation_text(csis.validation_history, online=options.steps is not None)
        print(
            f"compiled {options.model} on {budget}{processes}: {csis.num_steps} steps, "
            f"{csis.num_simulations:,} simulations, {csis.training_seconds:.1f} s, {validation}"
        )
        print(f"saved {options.out}")
    return 0


def infer_command(options: argparse.Namespace) -> int:
    if options.out:
        check_output(options.out, "--out")
        if importlib.util.find_spec("arviz") is None:
            raise UsageError(
                "--out writes ArviZ netCDF and needs ArviZ, an optional dependency: "
                "pip install 'infcomp[arviz]'"
            )
    if options.plot:
        check_figure(options.plot)
    csis, model, payload = load_compiled(options.artifact, options.model)
    data = read_data(options.data)
    check_data(data, payload, options.data)
    torch.manual_seed(options.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InferenceWarning)
        start = time.perf_counter()
        posterior: ic.Posterior
        if options.method == "smc":
            # The compiled network proposes; resampling at the observe statements.
            posterior = ic.smc(model, data, options.particles, guide=csis)
        elif options.method == "prior":
            posterior = ic.importance(model, data, options.particles)
        else:
            posterior = csis.run(data, options.particles)
        seconds = time.perf_counter() - start
    print(f"{options.method} with {options.particles:,} particles, {seconds:.2f} s")
    print(posterior.summary())
    for warning in caught:
        if issubclass(warning.category, InferenceWarning):
            print(f"warning: {warning.message}")
    if options.out:
        posterior.to_arviz().to_netcdf(options.out)
        print(f"wrote {options.out} (ArviZ InferenceData)")
    if options.plot:
        from infcomp import plots

        if isinstance(posterior, ic.SMCPosterior):
            plots.ess_trace(
                posterior.ess_trace, posterior.num_particles, posterior.resampled, options.plot
            )
        else:
            plots.weights(posterior, options.plot)
        print(f"wrote {options.plot}")
    return 0


def calibrate_command(options: argparse.Namespace) -> int:
    from infcomp.calibration import calibrate

    if options.plot:
        check_figure(options.plot)
    csis, model, _ = load_compiled(options.artifact, options.model)
    torch.manual_seed(options.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceWarning)  # per data set; the summary says
        result = calibrate(
            model,
            options.datasets,
            options.particles,
            guide=csis,
            sites=options.sites,
            num_draws=options.draws,
            num_bins=options.bins,
        )
    print(result.summary())
    if options.plot:
        result.plot(options.plot)
        print(f"wrote {options.plot}")
    return 0 if result.passed() else 1


def info_command(options: argparse.Namespace) -> int:
    payload = read_artifact_or_usage(options.artifact)
    config = payload["config"]
    metadata = config.get("metadata", {})
    entry = metadata.get(ENTRY_POINT)
    model = entry if entry else config.get("model")
    if entry and entry.rpartition(":")[0].endswith(".py"):
        model = f"{entry} (a file, stored by its absolute path)"
    lines = [
        f"{options.artifact}: infcomp CSIS artifact, format version "
        f"{payload['format_version']} (this infcomp writes {FORMAT_VERSION})",
        f"model: {model}",
        f"guide: {config['guide_class']}",
    ]
    budget = metadata.get("budget")
    online = None if budget is None else "online" in budget
    validation = validation_text(config.get("validation_history", []), online)
    trained_on = config.get("dataset_simulations", 0)
    lines.append(
        f"training: {config['num_steps']} steps, {config.get('num_simulations', 0):,} "
        f"simulations run"
        + (f", on a dataset of {trained_on:,} simulations" if trained_on else "")
        + f", {config.get('training_seconds', 0.0):.1f} s, {validation}"
        + (f"; {budget}" if budget else "")
    )
    invalid = config.get("invalid_simulations", {})
    if invalid:
        lines.append(f"dropped simulations: {invalid}")
    if payload.get("signature") is not None:
        signature = Signature.from_dict(payload["signature"])
        lines.append(
            f"site families (a family is a site's name without its loop index; "
            f"a probe of {signature.size} simulations):"
        )
        for record in signature.sites:
            shape = "x".join(map(str, record.shape)) or "scalar"
            kind = "latent" if record.kind == "sample" else record.kind
            lines.append(f"  {kind:8} {record.family:20} {record.distribution:20} {shape}")
    parameters = sum(t.numel() for t in payload["guide"].values() if t.is_floating_point())
    lines.append(f"parameters: {parameters:,}")
    print("\n".join(lines))
    return 0


# -- the parser -----------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the same one-line form as ours and the defaults
    shown in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive(text: str) -> int:
    """A count such as ``1000``, ``10_000`` or ``1e4`` (a float that is a whole number)."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not number.is_integer():
            raise argparse.ArgumentTypeError(
                f"expected a positive integer (such as 1000 or 1e3), got {text!r}"
            ) from None
        value = int(number)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The parser of ``infcomp`` and its subcommands."""
    main = Parser(
        prog="infcomp",
        description="Inference compilation from the shell: compile a model, then infer, "
        "calibrate and inspect.",
        epilog="Exit status: 0 success, 1 a failed calibration, 2 bad usage.",
    )
    main.add_argument("--version", action="version", version=f"infcomp {ic.__version__}")
    commands = main.add_subparsers(dest="command", required=True, parser_class=Parser)

    compile_ = commands.add_parser("compile", help="train an inference network for a model")
    compile_.add_argument("model", help="the model, MODULE:FUNCTION or FILE.py:FUNCTION")
    budget = compile_.add_mutually_exclusive_group(required=True)
    budget.add_argument("--simulations", type=positive, help="simulation budget (epochs)")
    budget.add_argument("--steps", type=positive, help="online steps of fresh simulations")
    compile_.add_argument(
        "--batch-size", type=positive, help="simulations per step (None: the library's 256)"
    )
    compile_.add_argument("--out", default="model.pt", help="the artifact")
    compile_.add_argument(
        "--attention",
        choices=ATTENTION,
        default="auto",
        help="latent sites attend over the observe sites (auto: with 4 or more of them)",
    )
    compile_.add_argument("--seed", type=int, default=0, help="torch's random seed")
    compile_.add_argument(
        "--device",
        default=None,
        help="where the network trains: cpu or cuda (under torchrun: NCCL, and GPU "
        "LOCAL_RANK for each process); none given: the library's default",
    )
    compile_.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar with the validation loss",
    )
    compile_.set_defaults(run=compile_command)

    infer = commands.add_parser("infer", help="importance sampling on a data set")
    _compiled_arguments(infer)
    infer.add_argument("data", help="JSON object: observe-site name -> value")
    infer.add_argument(
        "--method",
        choices=METHODS,
        default="is",
        help="is: importance sampling with the compiled proposal; prior: with the prior; "
        "smc: sequential Monte Carlo with the compiled proposal",
    )
    infer.add_argument("--out", help="write the posterior as ArviZ netCDF (.nc)")
    infer.add_argument("--plot", help="the weights' figure (SMC: the ESS trace); PNG, PDF, SVG")
    infer.set_defaults(run=infer_command)

    calibrate = commands.add_parser("calibrate", help="simulation-based calibration")
    _compiled_arguments(calibrate)
    calibrate.add_argument("--datasets", type=positive, default=200, help="simulated data sets")
    calibrate.add_argument(
        "--draws", type=positive, default=99, help="SBC draws per data set (+ 1: bins x k)"
    )
    calibrate.add_argument("--bins", type=positive, default=10, help="bins of the chi2 test")
    calibrate.add_argument("--sites", nargs="+", help="latent sites to check (default all)")
    calibrate.add_argument("--plot", help="write the rank histograms and coverage")
    calibrate.set_defaults(run=calibrate_command)

    info = commands.add_parser("info", help="what an artifact holds")
    info.add_argument("artifact", help="a file written by `infcomp compile`")
    info.set_defaults(run=info_command)
    return main


def _compiled_arguments(command: argparse.ArgumentParser) -> None:
    """The arguments of the commands that use a compiled artifact."""
    command.add_argument("artifact", help="a file written by `infcomp compile`")
    command.add_argument("--particles", type=positive, default=1000, help="per data set")
    command.add_argument("--model", help="MODULE:FUNCTION, if not the artifact's")
    command.add_argument("--seed", type=int, default=0, help="torch's random seed")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module's docstring)."""
    try:
        options = parser().parse_args(argv)
        status: int = options.run(options)
        return status
    except (UsageError, ArtifactError, ic.ModelError, ImportError, OSError, ValueError) as error:
        return report_error("infcomp", error)


def report_error(program: str, error: BaseException) -> int:
    """Print ``error`` in one line on stderr and return the exit status, 2. Under
    ``torchrun`` (``RANK`` set) rank 0 prints every error; the other ranks print only
    those that are not about the command's arguments (usage errors and plain
    ``ValueError`` errors, which every rank meets alike), with their rank, so that nothing
    met by one rank alone is lost."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        sys.stderr.write(f"{program}: error: {one_line(error)}\n")
    elif not isinstance(error, UsageError) and type(error) is not ValueError:
        sys.stderr.write(f"{program}: error (rank {rank}): {one_line(error)}\n")
    return 2


#: Python-only advice in the library's messages, and what the command line says instead.
_FOR_PYTHON = (
    (re.compile(r"\s*\(see the traceback above\)"), ""),
    (re.compile(r";\s*pass on_error='skip' to drop and count failing simulations"), ""),
    (
        re.compile(
            r"pass it in data \(data=\{.*?: \.\.\.\}\) or give observe\(\.\.\., value=\.\.\.\)"
        ),
        "give it in the data file",
    ),
)
#: The library's argument names, as the command line's options.
_OPTIONS = {
    "num_simulations": "--simulations",
    "num_steps": "--steps",
    "batch_size": "--batch-size",
    "num_particles": "--particles",
    "num_datasets": "--datasets",
    "num_draws": "--draws",
    "num_bins": "--bins",
}


def one_line(error: BaseException) -> str:
    """The error's message in one line, in the command line's terms."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        message = f"{error.strerror}: {error.filename!r}"
    elif isinstance(error, UsageError):
        message = str(error)
    else:
        message = str(error)
        for pattern, replacement in _FOR_PYTHON:
            message = pattern.sub(replacement, message)
        for name, option in _OPTIONS.items():
            message = re.sub(rf"\b{name}\b", option, message)
        if isinstance(error, ImportError):
            message = f"{type(error).__name__}: {message}"
    return " ".join(message.split())


def run() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())
