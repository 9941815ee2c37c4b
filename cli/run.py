"""`distill run SPEC.json --out DIR [--data NAME=PATH ...]`: one job in this process, no server.

Run under `torchrun --nproc-per-node N [--nnodes M ...]` with `training.devices: N x M`, each process is
one rank of the job (the out folder must be the same folder on every machine: shared storage); without
torchrun a spec with `training.devices > 1` launches its ranks itself, on this machine.

The engine (core.run) gets the spec as written: `dataset.path` and a `teacher.weights` path
are read as they are (core.resolver.LocalFiles), `--data` registers named datasets. Exit
codes: 0 done, 2 a spec or setting the user must fix, 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from core import distributed
from core.errors import DistillError, JobCancelled
from core.train.callbacks import NullCallbacks
from core.publish.tracking import tracking_from_env
from core.resolver import LocalFiles
from core.run import run_distillation
from core.spec import JobSpec
from core.train.progress import terminal_callbacks
from core.train.runtime import configure_torch

SUMMARY_KEYS = ("student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece")


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem, each naming the dotted spec field: `training.lr: Input should be ...`."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(spec)"
        lines.append(f"{field}: {problem['msg']}")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill run", description="Run one distillation job in this process (resumes an interrupted --out)."
    )
    parser.add_argument("spec", type=Path, help="job spec JSON (the body of POST /v1/jobs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for artifacts and checkpoints")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help="register a named dataset (ImageFolder tree or .npz); repeatable")
    return parser


def _parse_data(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            parser.error(f"--data expects NAME=PATH, got '{value}'")
        named[name] = Path(path)
    return named


def _read_spec(path: Path) -> JobSpec | None:
    """The spec file, validated; None after printing why not (each problem naming its field)."""
    try:
        return JobSpec.model_validate_json(path.read_bytes())
    except OSError as exc:
        print(f"cannot read spec {path}: {exc.strerror or exc}", file=sys.stderr)
    except ValidationError as exc:
        print(f"invalid spec {path}:", file=sys.stderr)
        for line in describe_validation_error(exc):
            print(f"  {line}", file=sys.stderr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, set torch up as a worker does, run (or resume) the job and print the headline metrics."""
    parser = _parser()
    args = parser.parse_args(argv)
    named = _parse_data(args.data, parser)
    logging.basicConfig(level=os.environ.get("DISTILL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configure_torch()  # DISTILL_TORCH_THREADS, as in a worker; the optimiser's imports before the first stage
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = _read_spec(args.spec)
    if spec is None:
        return 2
    # Under torchrun (WORLD_SIZE > 1) this process is one rank: join the group; rank 0 shows progress and prints.
    world = distributed.join(spec.training.device)
    callbacks = terminal_callbacks() if world.is_main else NullCallbacks()
    try:
        result = run_distillation(spec, args.out, callbacks, named_datasets=named, resolver=LocalFiles(),
                                  tracking=tracking_from_env())
    except DistillError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"error [{exc.code}]{where}: {exc.message}", file=sys.stderr)
        return 2
    except (JobCancelled, KeyboardInterrupt):
        print(f"interrupted; rerun the same command to resume from the last checkpoint in {args.out}", file=sys.stderr)
        return 130
    finally:
        close = getattr(callbacks, "close", None)
        if close is not None:
            close()
        distributed.leave()
    if not world.is_main:
        return 0
    print(json.dumps({key: result[key] for key in SUMMARY_KEYS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
