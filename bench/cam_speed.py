"""Seconds per student training step of each explainer, relative to Grad-CAM, side by side in one process.

    python bench/cam_speed.py                 # 3 rounds x 2 timed steps per row (1 warm-up step), 1 thread
    python bench/cam_speed.py --quick         # smoke test: 1 round, 1 step

A step is what a distillation step costs: `DistillationObjective.step` (teacher signals, the student's
forward and its map) plus the backward of the loss (CE + KD + the explanation MSE, weight 1) and the
SGD update, for resnet20 -> resnet8 on one batch of 32 CIFAR-10 images. The teacher's maps are made
on every step (no cache: the augmented-data case; with unaugmented data they are cached after the
first epoch and every row costs about Grad-CAM's). The rows run in turn within a round and each
ratio is taken within its round, so a slow phase of the shared machine hits every row alike; the
table gives the median over the rounds.

Two rows measure the score-based training choice: "Score-CAM" trains as a job does (the teacher's
Score-CAM maps as targets, the student explained by Grad-CAM), "Score-CAM, student exact" also
explains the student by Score-CAM, differentiably through its masked forwards.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common

TEACHER_ARCH, STUDENT_ARCH, BATCH = "resnet20", "resnet8", 32
ROWS = ["kd (no map)", "gradcam", "cam", "gradcampp", "xgradcam", "layercam", "smoothgradcampp", "scorecam",
        "sscam", "iscam", "scorecam, student exact"]


def build(row: str, samples: int) -> tuple[Any, Any, Any, Any]:
    """(objective, student, optimizer, batch) of one row, on the same data and initial weights."""
    import torch

    from core.data import load_dataset
    from core.explain import ExplainerSettings
    from core.models import build_model, load_weights
    from core.signals import Batch
    from core.spec import DatasetSpec, JobSpec
    from core.terms import build_terms
    from core.train.loop import DistillationObjective

    torch.manual_seed(0)
    data = load_dataset(DatasetSpec(path=str(common.small_npz(20, 50))), seed=0)
    teacher = build_model(TEACHER_ARCH, data.num_classes, data.in_channels)
    weights = common.CACHE_DIR / "teacher.safetensors"
    if weights.exists():
        load_weights(teacher, weights)
    teacher.eval().requires_grad_(False)
    student = build_model(STUDENT_ARCH, data.num_classes, data.in_channels)
    explainer = row.split(",")[0]
    loss = {"ce": 1.0, "kd": 1.0}
    if row != "kd (no map)":
        loss["explanation"] = {"weight": 1.0, "explainer": explainer, "distance": "mse", "samples": samples}
    spec = JobSpec.model_validate({"dataset": {"path": "x.npz"}, "method": None, "loss": loss})
    explanation = spec.loss.explanation if spec.loss.explanation.weight > 0 else None
    objective = DistillationObjective(student=student, terms=build_terms(spec.loss, 64, 64), data=data,
                                      device=torch.device("cpu"), teacher=teacher, explanation=explanation)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    index = torch.arange(BATCH)
    batch = Batch(data.train_x[:BATCH], data.train_y[:BATCH], index, index, 0, 1)
    settings = ExplainerSettings(samples=samples)
    return objective, optimizer, batch, settings


def time_steps(row: str, parts: tuple[Any, Any, Any, Any], steps: int, warm_up: bool) -> float:
    """Median wall seconds of `steps` training steps of `row` (after one untimed step when `warm_up`)."""
    from core.explain import explainer_settings
    from core.explain.scorecam import ScoreCam

    objective, optimizer, batch, settings = parts
    exact = row.endswith("student exact")
    times = []
    with explainer_settings(settings):
        if exact:
            ScoreCam.student_explainer = None  # this row only: the student explained by Score-CAM itself
        try:
            for step in range(steps + 1 if warm_up else steps):
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                out = objective.step(batch)
                out.loss.backward()
                optimizer.step()
                if step or not warm_up:
                    times.append(time.perf_counter() - started)
        finally:
            ScoreCam.student_explainer = "gradcam"
    return common.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row and round")
    parser.add_argument("--samples", type=int, default=2, help="draws of smoothgradcampp, sscam, iscam")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 1
    common.setup_logging()
    common.set_threads(args.threads)
    parts = {row: build(row, args.samples) for row in ROWS}
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        seconds = {row: time_steps(row, parts[row], args.steps, warm_up=number == 0) for row in ROWS}
        rounds.append(seconds)
        common.log.info("round %d: %s", number + 1, ", ".join(f"{r} {s:.3f}s" for r, s in seconds.items()))
    table = []
    for row in ROWS:
        ratio = common.median([r[row] / r["gradcam"] for r in rounds])
        table.append([row, f"{common.median([r[row] for r in rounds]):.3f}", f"{ratio:.2f}x"])
    notes = [
        f"One process, {args.threads} torch thread(s); resnet20 -> resnet8, batch {BATCH} CIFAR-10 images, teacher "
        f"maps made on every step (no cache); {args.samples} draws for Smooth Grad-CAM++ / SS-CAM / IS-CAM "
        "(their cost grows linearly with `samples`); Score-CAM masks: the teacher's 64 channels at batch 32.",
        "The machine was shared: absolute seconds vary with its load, the ratios (taken within each round) much less.",
    ]
    settings = {"rounds": args.rounds, "steps": args.steps, "samples": args.samples, "threads": args.threads}
    common.write_results("cam_speed" + ("_quick" if args.quick else ""),
                         "Seconds per student training step of each explainer, relative to Grad-CAM", settings,
                         [("median over rounds", ["explainer", "s/step", "vs Grad-CAM"], table)],
                         {"rounds": rounds}, notes)


if __name__ == "__main__":
    main()
