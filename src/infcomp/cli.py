"""The ``infcomp`` command line: compile a model, then infer, calibrate and inspect.

::

    infcomp compile MODULE:FUNCTION --simulations N --out model.pt
    infcomp infer model.pt data.json --particles N [--method is|prior|smc]
                  [--out posterior.nc] [--plot figure.png]
    infcomp calibrate model.pt --datasets N [--particles N] [--plot sbc.png]
    infcomp info model.pt

``MODULE:FUNCTION`` names the model, an infcomp program importable from the current
folder (``examples.sir:sir``, or a file: ``path/to/model.py:sir``); ``compile`` stores
it in the artifact, so that the other commands find the model again (``--model``
overrides). ``data.json`` maps observe-site names to numbers or nested lists.

Exit status: 0 on success; 2 for bad usage (unknown options, missing or unreadable
files, a model that cannot be imported, data that do not fit the model: one line on
stderr says why); 1 when ``calibrate`` finds the posterior not calibrated.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
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
    module_name, _, attribute = spec.partition(":")
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
    except ImportError as error:
        raise UsageError(f"cannot import the model's module {module_name!r}: {error}") from None
    function: Any = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise UsageError(f"{spec!r} is not callable")
    return function  # type: ignore[no-any-return]


def load_compiled(path: str, model_spec: str | None) -> tuple[ic.CSIS, Callable[..., Any]]:
    """The :class:`~infcomp.CSIS` saved at ``path`` and its model (from the artifact's
    entry point, or ``model_spec``)."""
    payload = read_artifact_or_usage(path)
    spec = model_spec or payload["config"].get("metadata", {}).get(ENTRY_POINT)
    if not spec:
        raise UsageError(
            f"{path!r} does not say which model it compiles (it was not made by `infcomp "
            f"compile`): give --model MODULE:FUNCTION"
        )
    model = load_entry_point(spec)
    return ic.CSIS.load(path, model), model


def read_artifact_or_usage(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise UsageError(f"artifact {path!r} does not exist")
    return read_artifact(path)


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
    model = load_entry_point(options.model)
    torch.manual_seed(options.seed)
    network = ic.nn.NetworkConfig(attention=ATTENTION[options.attention])
    csis = ic.CSIS(model, network=network)
    csis.metadata = {ENTRY_POINT: options.model, "seed": options.seed}
    if options.steps is not None:
        budget = f"{options.steps} online steps of {options.batch_size or 256} simulations"
        csis.train(
            num_steps=options.steps, batch_size=options.batch_size, progress=options.progress
        )
    else:
        budget = f"a budget of {options.simulations:,} simulations"
        csis.train(
            num_simulations=options.simulations,
            batch_size=options.batch_size,
            progress=options.progress,
        )
    csis.metadata["budget"] = budget
    csis.save(options.out)
    validation = csis.validation_history[-1][1] if csis.validation_history else math.nan
    print(
        f"compiled {options.model} on {budget}: {csis.num_steps} steps, "
        f"{csis.num_simulations:,} simulations, {csis.training_seconds:.1f} s, "
        f"validation loss {validation:.4f}"
    )
    print(f"saved {options.out}")
    return 0


def infer_command(options: argparse.Namespace) -> int:
    csis, model = load_compiled(options.artifact, options.model)
    data = read_data(options.data)
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

    csis, model = load_compiled(options.artifact, options.model)
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
    lines = [
        f"{options.artifact}: infcomp CSIS artifact, format version "
        f"{payload['format_version']} (this infcomp writes {FORMAT_VERSION})",
        f"model: {metadata.get(ENTRY_POINT, config.get('model'))}",
        f"guide: {config['guide_class']}",
    ]
    history = config.get("validation_history", [])
    validation = f"{history[-1][1]:.4f}" if history else "none"
    lines.append(
        f"training: {config['num_steps']} steps, {config.get('num_simulations', 0):,} "
        f"simulations, {config.get('training_seconds', 0.0):.1f} s, validation loss "
        f"{validation}" + (f" ({metadata['budget']})" if "budget" in metadata else "")
    )
    invalid = config.get("invalid_simulations", {})
    if invalid:
        lines.append(f"dropped simulations: {invalid}")
    if payload.get("signature") is not None:
        signature = Signature.from_dict(payload["signature"])
        lines.append(f"sites (a probe of {signature.size} simulations):")
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
    """argparse, with its errors in the same one-line form as ours."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
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
    compile_.add_argument("--batch-size", type=positive, help="simulations per step")
    compile_.add_argument("--out", default="model.pt", help="the artifact (default model.pt)")
    compile_.add_argument(
        "--attention",
        choices=ATTENTION,
        default="auto",
        help="latent sites attend over the observe sites (auto: with 4 or more of them)",
    )
    compile_.add_argument("--seed", type=int, default=0)
    compile_.add_argument("--no-progress", dest="progress", action="store_false")
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
    calibrate.add_argument("--datasets", type=positive, default=200)
    calibrate.add_argument("--draws", type=positive, default=99, help="SBC draws per data set")
    calibrate.add_argument("--bins", type=positive, default=10, help="bins of the chi2 test")
    calibrate.add_argument("--sites", nargs="+", help="latent sites to check (default all)")
    calibrate.add_argument("--plot", help="write the rank histograms and coverage")
    calibrate.set_defaults(run=calibrate_command)

    info = commands.add_parser("info", help="what an artifact holds")
    info.add_argument("artifact")
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
    except (UsageError, ArtifactError, ic.ModelError) as error:
        message = " ".join(str(error).split())  # one line
        print(f"infcomp: error: {message}", file=sys.stderr)
        return 2


def run() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())
