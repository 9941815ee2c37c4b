"""Deployment table: the README demo's teacher and student, PyTorch vs onnxruntime, batch 1 and 32.

    python bench/deploy.py            # the demo job (examples/digits-e2kd.json) once, then 5 timing rounds
    python bench/deploy.py --quick    # smoke test: a tiny job, 1 round

The demo job runs once into `bench/.cache/deploy/<spec>/` (a rerun reuses the finished folder)
and leaves `student.onnx` checked against PyTorch, exactly as a service job does. The teacher
is exported the same way into the same folder. Every round then times every row (model x
runtime x batch, `--runs` passes after warm-up) in turn, so a slow phase of a shared machine
hits all rows alike; the onnxruntime speed-up is taken within a round (side by side) and the
table gives its median over rounds, next to the median and p90 of all timed passes of a row.
onnxruntime runs with as many intra-op threads as torch (`--threads`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import common

EXAMPLE = common.REPO_ROOT / "examples" / "digits-e2kd.json"
QUICK_OVERRIDES = {
    "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 10},
    "teacher": {"arch": "resnet20", "epochs": 1},
    "training": {"epochs": 1, "batch_size": 32},
    "report": {"heatmaps": 2, "latency_runs": 2},
}


def demo_job(quick: bool, folder: Path | None) -> tuple[Path, dict[str, Any]]:
    """Run (or reuse) the demo job; returns its folder and metrics."""
    from core.run import run_distillation
    from core.spec import JobSpec

    if folder is not None:  # a finished run of the demo spec, e.g. `distill run examples/digits-e2kd.json --out DIR`
        return folder, json.loads((folder / "metrics.json").read_text())
    document = json.loads(EXAMPLE.read_text())
    if quick:
        document.update(QUICK_OVERRIDES)
    spec = JobSpec.model_validate(document)
    out = common.CACHE_DIR / "deploy" / (spec.name + ("-quick" if quick else ""))
    return out, run_distillation(spec, out)


def models(out: Path, metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path], Any]:
    """Teacher and student from the job folder, their ONNX files, and the test images."""
    from core.data import load_dataset
    from core.deploy.onnx import export_onnx
    from core.models import build_model, load_weights
    from core.spec import JobSpec

    spec = JobSpec.model_validate(metrics["spec"])
    data = load_dataset(spec.dataset)
    built = {
        role: load_weights(build_model(arch, data.num_classes, data.in_channels), out / f"{role}.safetensors").eval()
        for role, arch in (("teacher", spec.teacher.arch), ("student", spec.student.arch))
    }
    files = {"student": out / "student.onnx", "teacher": out / "teacher.onnx"}
    if not files["teacher"].exists():
        export_onnx(built["teacher"], data.test_x, files["teacher"])
    return built, files, data.test_x


def time_rounds(built: dict[str, Any], files: dict[str, Path], images: Any, rounds: int, runs: int) -> dict:
    """Per (model, batch, runtime): the row's median ms in each round."""
    from core.deploy.latency import onnx_rows, torch_rows

    per_round: dict[tuple[str, int, str], list[float]] = {}
    for round_index in range(rounds):
        for role, model in built.items():
            rows = torch_rows(role, model, images, runs, ["cpu"]) + onnx_rows(role, files[role], images, runs)
            for row in rows:
                if row.device != "cpu":
                    continue
                key = (role, row.batch, row.runtime)
                per_round.setdefault(key, []).append(row.median_ms)
        common.log.info("round %d/%d done", round_index + 1, rounds)
    return {"per_round": per_round}


def table(timings: dict, metrics: dict[str, Any], params: dict[str, int]) -> list[list[Any]]:
    per_round = timings["per_round"]
    rows = []
    for role in ("teacher", "student"):
        for batch in (1, 32):
            pytorch, onnx = per_round[(role, batch, "pytorch")], per_round[(role, batch, "onnxruntime")]
            speedups = [p / o for p, o in zip(pytorch, onnx, strict=True)]
            rows.append([
                role, f"{params[role]:,}", batch,
                f"{common.median(pytorch):.2f}", f"{common.percentile(pytorch, 90):.2f}",
                f"{batch / common.median(pytorch) * 1000:.0f}",
                f"{common.median(onnx):.2f}", f"{common.percentile(onnx, 90):.2f}",
                f"{batch / common.median(onnx) * 1000:.0f}",
                f"{common.median(speedups):.2f}x",
            ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny job, 1 round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed passes per row per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--job", type=Path, help="use this finished demo job folder instead of running the job")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    common.setup_logging(args.verbose)
    common.set_threads(args.threads)
    rounds, runs = (1, 3) if args.quick else (args.rounds, args.runs)

    out, metrics = demo_job(args.quick, args.job)
    built, files, images = models(out, metrics)
    timings = time_rounds(built, files, images, rounds, runs)
    params = {"teacher": metrics["teacher_params"], "student": metrics["student_params"]}
    headers = ["model", "params", "batch", "PyTorch median ms", "PyTorch p90 ms", "PyTorch img/s",
               "onnxruntime median ms", "onnxruntime p90 ms", "onnxruntime img/s", "onnxruntime speed-up"]
    sizes = metrics["sizes"]
    onnx = metrics["onnx"] or {}
    size_rows = [
        ["teacher", f"{sizes['teacher_safetensors_bytes']:,}", f"{files['teacher'].stat().st_size:,}", ""],
        ["student", f"{sizes['student_safetensors_bytes']:,}", f"{sizes['student_onnx_bytes'] or 0:,}",
         f"{onnx.get('max_abs_diff', float('nan')):.2g} on {onnx.get('images', 0)} images"],
    ]
    name = "deploy_quick" if args.quick else "deploy"
    common.write_results(
        name,
        "Deployment: the demo teacher and student in PyTorch and onnxruntime (CPU)",
        {"spec": EXAMPLE.name + (" (quick overrides)" if args.quick else ""), "rounds": rounds,
         "runs_per_row_per_round": runs, "threads": args.threads},
        [
            (f"Latency per forward pass, CPU, {args.threads} threads; median and p90 over the {rounds} round "
             "medians; speed-up = PyTorch / onnxruntime median within a round, median over rounds",
             headers, table(timings, metrics, params)),
            ("File sizes (bytes) and the ONNX check (max |logit difference| vs PyTorch on the test set)",
             ["model", "safetensors", "onnx", "check"], size_rows),
        ],
        {"per_round_ms": {"/".join(map(str, k)): v for k, v in timings["per_round"].items()},
         "job_seconds": metrics["seconds"], "export_seconds": onnx.get("export_seconds")},
        notes=["demo job stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["seconds"].items()),
               f"student top-1 {metrics['student_accuracy']:.4f}, teacher top-1 {metrics['teacher_accuracy']:.4f}"],
    )


if __name__ == "__main__":
    main()
