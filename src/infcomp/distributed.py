"""``torchrun --nproc-per-node P -m infcomp.distributed MODEL ...``: data-parallel compilation.

Each of the P processes (gloo on CPU; NCCL with ``--device cuda``, one GPU per rank,
untested here) simulates its share of every global
batch and the gradients are averaged (see :mod:`infcomp.inference.distributed`); rank 0
writes the artifact. ``MODEL`` is ``package.module:function`` (importable by every
process) or the name of an example in :mod:`infcomp.examples` (``gaussian``). Run with
plain ``python -m infcomp.distributed`` it trains in one process, the same way.

Example (shell)::

    torchrun --standalone --nproc-per-node 2 -m infcomp.distributed gaussian \\
        --num-steps 500 --batch-size 512 --seed 0 --output gaussian.pt
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from infcomp.inference.csis import CSIS
from infcomp.inference.distributed import DataParallel, scaled_learning_rate


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
    parser.add_argument("--num-steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=512, help="global batch (all ranks)")
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
        "--shards", default=None, help="train on the shards in this folder (TraceDataset.save)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--output", default=None, help="the artifact, written by rank 0")
    parser.add_argument("--check-in-sync", action="store_true", help="compare ranks every step")
    parser.add_argument("--report", action="store_true", help="rank 0 prints a JSON summary")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    launched = "WORLD_SIZE" in os.environ
    device = torch.device(options.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        torch.set_num_threads(1)
        torch.manual_seed(options.seed)
        learning_rate = options.learning_rate or scaled_learning_rate(options.batch_size)
        csis = CSIS(resolve_model(options.model), learning_rate=learning_rate, device=device)
        trainer = DataParallel(csis, options.chunk_size, options.check_in_sync)
        start = time.perf_counter()
        if options.shards:
            losses = trainer.train_on_shards(
                options.shards,
                options.num_steps,
                options.batch_size,
                options.validate_every,
                progress=False,
            )
        else:
            losses = trainer.train(
                options.num_steps, options.batch_size, options.validate_every, progress=False
            )
        seconds = time.perf_counter() - start
        if options.output:
            trainer.save(options.output)
        if options.report and trainer.rank == 0:
            summary = {
                "world_size": trainer.world_size,
                "num_steps": options.num_steps,
                "batch_size": options.batch_size,
                "learning_rate": learning_rate,
                "seconds": seconds,
                "traces_per_second": options.num_steps * options.batch_size / seconds,
                "final_loss": losses[-1],
                "validation_history": csis.validation_history,
                "checked_steps": trainer.checked_steps,
                "parameters": sum(p.numel() for p in trainer.parameters()),
            }
            sys.stdout.write(json.dumps(summary) + "\n")
    finally:
        if launched and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
