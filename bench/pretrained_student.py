"""A pretrained student vs a random one: does explanation guidance still help? (CIFAR-10, 50 shots/class)

    python bench/pretrained_student.py --workers 2           # the table (resumable: finished runs are reused)
    python bench/pretrained_student.py --quick               # smoke test: tiny sets, 1 epoch, 1 seed

The setting teams use: a small deployable student (timm/mobilenetv3_small_050 at 64 px) that starts from
weights trained on more data, distilled on a few labelled images of the task. Here the "more data" is the
rest of the CIFAR-10 training set: the 50 images per class of the task are drawn first (seeded), and
the student's weights and the teacher are both trained, by the engine's own teacher stage
(`core.run.run_teacher`), on images outside them (`--pretrain-images` of them, seeded). The pretrained
student then starts with `student.head: "reset"` (every tensor but the classifier kept, the classifier
fresh), as a team starting from ImageNet weights would. Each (start, method, seed) is one
`core.run.run_distillation` on the 50-shot set; all are scored on one fixed 2,000-image test subset.
The seed is `training.seed` (student initialisation and batch order); the 500 images stay the same,
so differences are paired by seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import common
from quality import run_one

CACHE = common.CACHE_DIR / "pretrained_student"
STUDENT_ARCH = "timm/mobilenetv3_small_050"
METHODS = ("kd", "e2kd")
STARTS = ("random", "pretrained")


def split_npz(shots: int, pretrain_images: int, test_size: int, seed: int = 0) -> tuple[Path, Path]:
    """Two array files over the same test subset: the task's `shots` per class, and `pretrain_images` others."""
    import numpy as np

    few = CACHE / f"few-{shots}pc-test{test_size}-seed{seed}.npz"
    rest = CACHE / f"rest-{pretrain_images}-without-{shots}pc-test{test_size}-seed{seed}.npz"
    if few.exists() and rest.exists():
        return few, rest
    with np.load(common.test_subset_npz(test_size, seed), allow_pickle=False) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(data["y"] == c))[:shots] for c in np.unique(data["y"])])
    others = rng.permutation(np.setdiff1d(np.arange(len(data["y"])), chosen))[:pretrain_images]
    CACHE.mkdir(parents=True, exist_ok=True)
    for target, keep in ((few, np.sort(chosen)), (rest, np.sort(others))):
        arrays = {**data, "x": data["x"][keep], "y": data["y"][keep]}
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(target)
    return few, rest


def pretrain(task: tuple[str, str, int, int, float, int]) -> dict[str, Any]:
    """One network trained with cross-entropy on the rest of the training set (core.run.run_teacher)."""
    arch, rest, image_size, epochs, lr, threads = task
    common.set_threads(threads)
    from core.run import run_teacher
    from core.spec import JobSpec

    spec = JobSpec.model_validate({
        "name": f"pretrain-{common.slug(arch)}",
        "dataset": {"path": rest, "image_size": image_size, "augment": True},
        "teacher": {"arch": arch, "epochs": epochs},
        "training": {"batch_size": 64, "lr": lr, "seed": 0, "warmup_epochs": 1},
    })
    out = CACHE / f"pretrain-{common.slug(arch)}-{Path(rest).stem}-{image_size}px-{epochs}ep"
    started = time.perf_counter()
    metrics = run_teacher(spec, out)
    common.log.info("%s pretrained: %.4f top-1 (%.1f min)", arch, metrics["teacher_accuracy"],
                    (time.perf_counter() - started) / 60)
    return {"arch": arch, "weights": str(out / "teacher.safetensors"), "accuracy": metrics["teacher_accuracy"],
            "epochs": epochs, "minutes": sum(metrics["seconds"].values()) / 60}


def run_spec(start: str, method: str, seed: int, args: argparse.Namespace, few: Path,
             teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    given = {"weights": student["weights"], "head": "reset"} if start == "pretrained" else {}
    return {
        "name": f"pretrained-student-{start}-{method}-seed{seed}",
        "dataset": {"path": str(few), "image_size": args.image_size},
        "teacher": {"arch": teacher["arch"], "weights": teacher["weights"]},
        "student": {"arch": STUDENT_ARCH, **given},
        "method": method,
        "training": {"epochs": args.epochs, "batch_size": 32, "lr": args.lr, "seed": seed},
        "report": {"heatmaps": 0, "latency_runs": 1},
        "export": {"onnx": False},
    }


def _table(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[list[Any]]:
    rows = []
    for (start, method), runs in results.items():
        rows.append([start, method, common.pm([r["student_accuracy"] for r in runs], 100, 2),
                     common.pm([r["agreement"] for r in runs], 100, 2),
                     common.pm([r["explanation_cosine"] for r in runs]), len(runs)])
    return rows


def _gains(results: dict[tuple[str, str], list[dict[str, Any]]]) -> list[list[Any]]:
    """e2kd - kd per start, paired by seed."""
    rows = []
    for start in STARTS:
        kd, e2kd = results.get((start, "kd"), []), results.get((start, "e2kd"), [])
        pairs = list(zip(kd, e2kd))
        if pairs:
            rows.append([start, common.pm([b["student_accuracy"] - a["student_accuracy"] for a, b in pairs], 100, 2),
                         common.pm([b["agreement"] - a["agreement"] for a, b in pairs], 100, 2),
                         common.pm([b["explanation_cosine"] - a["explanation_cosine"] for a, b in pairs])])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=50)
    parser.add_argument("--pretrain-images", type=int, default=20000)
    parser.add_argument("--teacher-arch", default="resnet8")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15, help="Distillation epochs on the 50-shot set.")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    common.setup_logging()
    if args.quick:
        args.pretrain_images, args.teacher_epochs, args.pretrain_epochs, args.epochs = 500, 1, 1, 1
        args.seeds, args.test_size, args.shots = [0], 200, 5
    common.cifar_npz()
    few, rest = split_npz(args.shots, args.pretrain_images, args.test_size)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        teacher, student = pool.map(pretrain, [
            (args.teacher_arch, str(rest), args.image_size, args.teacher_epochs, args.lr, 1),
            (STUDENT_ARCH, str(rest), args.image_size, args.pretrain_epochs, args.lr, 1)])
        keys = [(start, method, seed) for seed in args.seeds for start in STARTS for method in METHODS]
        tasks = [(run_spec(*key, args, few, teacher, student), str(CACHE / "runs" / run_spec(
            *key, args, few, teacher, student)["name"]), 1) for key in keys]
        finished = list(pool.map(run_one, tasks))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (start, method, _), result in zip(keys, finished):
        results.setdefault((start, method), []).append(result)
    epoch0 = {start: [json.loads((CACHE / "runs" / f"pretrained-student-{start}-kd-seed{seed}" / "metrics.json")
                                 .read_text())["history"]["student"][0]["test_accuracy"] for seed in args.seeds]
              for start in STARTS}
    name = "pretrained_student_quick" if args.quick else "pretrained_student"
    settings = {"student": STUDENT_ARCH, "image_size": args.image_size, "shots": args.shots,
                "pretrain_images": args.pretrain_images, "teacher": args.teacher_arch,
                "teacher_epochs": args.teacher_epochs, "pretrain_epochs": args.pretrain_epochs,
                "epochs": args.epochs, "seeds": args.seeds, "test_images": args.test_size,
                "wall_minutes": round((time.perf_counter() - started) / 60, 1)}
    common.write_results(
        name, f"Pretrained vs random {STUDENT_ARCH} student, {args.shots} shots/class at {args.image_size} px",
        settings,
        [(f"mean ± std over seeds {args.seeds}", ["start", "method", "top-1 %", "agreement %", "expl. cosine", "runs"],
          _table(results)),
         ("e2kd - kd, paired by seed", ["start", "Δ top-1 pts", "Δ agreement pts", "Δ expl. cosine"],
          _gains(results))],
        {"teacher": teacher, "student_pretraining": student, "epoch0_accuracy": epoch0,
         "runs": {f"{s}/{m}": r for (s, m), r in results.items()}},
        notes=[f"teacher {args.teacher_arch}: {100 * teacher['accuracy']:.2f} % top-1; pretrained student before "
               f"distillation (its own head): {100 * student['accuracy']:.2f} %",
               f"epoch-0 accuracy (fresh head): pretrained {common.pm(epoch0['pretrained'], 100, 2)}, "
               f"random {common.pm(epoch0['random'], 100, 2)}"],
    )
    if args.quick:
        shutil.rmtree(CACHE / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
