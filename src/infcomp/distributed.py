"""``torchrun --nproc-per-node P -m infcomp.distributed MODEL ...``: data-parallel compilation.

Each of the P processes (gloo on CPU; NCCL with ``--device cuda``, one GPU per rank,
untested here) simulates its share of every global
batch and the gradients are averaged (see :mod:`infcomp.inference.distributed`); rank 0
writes the artifact. ``MODEL`` is ``package.module:function`` (importable by every
process) or the name of an example in :mod:`infcomp.examples` (``gaussian``). Run with
plain ``python -m infcomp.distributed`` it trains in one process, the same way.

With ``--num-simulations N`` instead of ``--num-steps``, the ranks train on a budget of N
simulations for epochs, with early stopping (``DataParallel.train(num_simulations=N)``);
with ``--shards FOLDER`` alone, on the simulations saved there
(``DataParallel.train(dataset=trainer.read_shards(FOLDER))``).

Example (shell)::

    torchrun --standalone --nproc-per-node 2 -m infcomp.distributed gaussian \\
        --num-steps 500 --batch-size 512 --seed 0 --output gaussian.pt
    torchrun --standalone --nproc-per-node 2 -m infcomp.distributed gaussian \\
        --num-simulations 20000 --seed 0 --output gaussian.pt
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from infcomp.cli import report_error
from infcomp.errors import ArtifactError, ModelError
from infcomp.inference.csis import CSIS
from infcomp.inference.distributed import DataParallel, launched_group, scaled_learning_rate


def resolve_model(spec: str) -> Any:
    """``module:function``, or an example's name (``gaussian`` → its ``gaussian``)."""
    module_name, _, function = spec.partition(":")
    if not function:
        module_name, function = f"infcomp.examples.{spec}", spec
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"cannot import model {spec!r}: {error}") from error


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infcomp.distributed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", help="module:function, or an example's name (gaussian)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--num-steps", type=int, help="online steps of fresh simulations")
    budget.add_argument("--num-simulations", type=int, help="a budget, trained on for epochs")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch (all ranks); default 512 online, N/50 in [32, 256] on a budget",
    )
    parser.add_argument("--max-epochs", type=int, default=500, help="on a budget")
    parser.add_argument("--patience", type=int, default=10, help="on a budget: epochs")
    parser.add_argument(
        "--average-decay", type=float, default=0.99, help="on a budget: of the parameter average"
    )
    parser.add_argument("--chunk-size", type=int, default=64, help="simulations per seed")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Adam's; default 1e-3·√(batch/256), the square-root rule",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)"
    )
    parser.add_argument(
        "--shards",
        default=None,
        help="train on the shards in this folder (TraceDataset.save): with --num-steps, "
        "online, reading them in turn; without, for epochs, as on a budget",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--output", default=None, help="the artifact, written by rank 0")
    parser.add_argument("--check-in-sync", action="store_true", help="compare ranks every step")
    parser.add_argument("--report", action="store_true", help="rank 0 prints a JSON summary")
    options = parser.parse_args(argv)
    if options.num_steps is None and options.num_simulations is None and not options.shards:
        parser.error("give --num-steps, --num-simulations or --shards")
    if options.num_simulations is not None and options.shards:
        parser.error("--num-simulations simulates a budget; --shards reads one: not both")
    return options


def main(argv: Sequence[str] | None = None) -> None:
    """The command; errors (bad options, files, models) end it with one line on stderr
    and exit status 2 (:func:`infcomp.cli.report_error`)."""
    try:
        train(parse(argv))
    except (ArtifactError, ModelError, OSError, ValueError) as error:
        raise SystemExit(report_error("python -m infcomp.distributed", error)) from None


def train(options: argparse.Namespace) -> None:
    with launched_group(options.device) as device:
        torch.set_num_threads(1)
        torch.manual_seed(options.seed)
        online = options.num_steps is not None
        batch_size = options.batch_size or (512 if online else None)
        learning_rate = options.learning_rate or scaled_learning_rate(batch_size or 256)
        csis = CSIS(resolve_model(options.model), learning_rate=learning_rate, device=device)
        trainer = DataParallel(csis, options.chunk_size, options.check_in_sync)
        start = time.perf_counter()
        if online and options.shards:
            losses = trainer.train_on_shards(
                options.shards, options.num_steps, batch_size or 512, options.validate_every, False
            )
        elif online:
            losses = trainer.train(
                options.num_steps,
                batch_size,
                validate_every=options.validate_every,
                progress=False,
            )
        else:
            losses = trainer.train(
                num_simulations=options.num_simulations,
                dataset=trainer.read_shards(options.shards) if options.shards else None,
                batch_size=batch_size,
                max_epochs=options.max_epochs,
                patience=options.patience,
                average_decay=options.average_decay,
                progress=False,
            )
        seconds = time.perf_counter() - start
        if options.output:
            trainer.save(options.output)
        if options.report and trainer.rank == 0:
            summary = {
                "world_size": trainer.world_size,
                "num_steps": csis.num_steps,
                "num_simulations": csis.num_simulations,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "seconds": seconds,
                "traces_per_second": options.num_steps * batch_size / seconds if online else None,
                "final_loss": losses[-1],
                "validation_history": csis.validation_history,
                "checked_steps": trainer.checked_steps,
                "parameters": sum(p.numel() for p in trainer.parameters()),
            }
            sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
