"""Quality: do explanation-guided students learn better, and for the right reasons? (CIFAR-10, few-shot)

    python bench/teacher.py --minutes 25                  # once: the cached resnet20 teacher
    python bench/quality.py --paper-rows --epochs-50 10 --epochs-200 5    # the table (resumable)
    python bench/quality.py --quick                       # smoke test: 2 epochs, 1 seed, 200 test images
    python bench/quality.py --shots 50 --rows kd e2kd dkd "dkd + gradcam cosine" dist --name quality_kd_bases
    python bench/quality.py --bcos                        # the e2KD paper's B-cos comparison (needs the B-cos teacher)

`--bcos` runs the e2KD paper's headline setting instead: a B-cos teacher (bcos/cifar10_resnet20,
`bench/.cache/teacher-bcos.safetensors`) distilled into a B-cos student (bcos/cifar10_resnet8) at 50
shots/class, kd vs e2kd-bcos (KL at T=1 without CE; e2kd-bcos adds 1 - cos of the B-cos contribution
maps), Adam lr 1e-3 with a cosine schedule as the paper's B-cos runs. Its kd row is the e2kd-bcos preset
with explanation weight 0 (the paper's coefficient-0 run), so both rows train the B-cos student the same
way (dynamic weights detached). It writes `quality_bcos.{json,md}` with both explanation cosines.

`--paper-rows` adds, at 50 shots/class, the e2KD paper's own settings (KL at T=1 without CE,
explanation weight 1 and 5, guidance on every 4th step only) next to kd at the same T.

Every row is one `core.run.run_distillation` per (shots, seed): the cached teacher's weights, a fresh
resnet8 student, `report.heatmaps = 0`. The seed is both `training.seed` (initialisation, order)
and `dataset.split_seed` (which `shots_per_class` images per class), so rows with the same seed
see the same images, and the e2kd - kd differences are paired by seed. Evaluation uses a fixed,
class-stratified test subset (the same images for every row) when `--test-size` < 10,000.
Both shot counts run the same number of optimiser steps (the e2KD paper's few-shot recipe:
50 shots at batch 32 for 2E epochs, 200 shots at batch 64 for E epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

TEACHER_WEIGHTS = common.CACHE_DIR / "teacher.safetensors"
TEACHER_INFO = common.CACHE_DIR / "teacher.json"
BCOS_TEACHER_WEIGHTS = common.CACHE_DIR / "teacher-bcos.safetensors"
RUNS_DIR = common.CACHE_DIR / "quality"


@dataclass(frozen=True)
class Row:
    """One table row: a preset plus explicit `loss` overrides (the spec's own mechanism)."""

    name: str
    method: str | None
    loss: dict[str, Any] = field(default_factory=dict)


ROWS = [
    Row("scratch", "scratch"),
    Row("kd", "kd"),
    Row("at", "at"),
    Row("e2kd", "e2kd"),
    Row("xai-mse", "xai-mse"),
    Row("oracle", "oracle"),
    Row("xdistill", "xdistill"),
    Row("oracle+e2kd", "e2kd", {"oracle_gamma": 1.0}),
]
# The e2KD paper (Parchami-Araghi et al.) distils with KL at T=1 and no CE term, and sweeps the
# explanation weight; it also offers guidance on every 16th step only. Shown next to kd at the same T.
PAPER_ROWS = [
    Row("kd (T=1, no CE)", "kd", {"ce": 0.0, "temperature": 1.0}),
    Row("e2kd (T=1, no CE, w=1)", "e2kd", {"ce": 0.0, "temperature": 1.0}),
    Row("e2kd (T=1, no CE, w=5)", "e2kd", {"ce": 0.0, "temperature": 1.0, "explanation": {"weight": 5.0}}),
    Row("e2kd (w=5)", "e2kd", {"explanation": {"weight": 5.0}}),
    Row("e2kd (T=1, no CE, w=5, every 4th step)", "e2kd",
        {"ce": 0.0, "temperature": 1.0, "explanation": {"weight": 5.0, "every": 4}}),
]
# Other logit-based KD bases, alone and with the e2KD explanation term on top (the VISAPP 2026 idea).
BASE_ROWS = [
    Row("dkd", "dkd"),
    Row("dkd + gradcam cosine", "dkd", {"explanation": {"weight": 1.0, "explainer": "gradcam", "distance": "cosine"}}),
    Row("dist", "dist"),
]
# The e2KD paper's B-cos comparison (`--bcos`): the same preset with and without the explanation term.
BCOS_ROWS = [
    Row("kd (B-cos, T=1, no CE)", "e2kd-bcos", {"explanation": {"weight": 0.0}}),
    Row("e2kd-bcos", "e2kd-bcos"),
]
# The VISAPP 2026 paper (Conforti et al.): an MSE between min-max normalised teacher and student CAMs on top
# of KD or FitNet, weight in 10-150 (here 50); `--cam` adds the Grad-CAM and per-step columns these rows need.
CAM_WEIGHT = 50.0


def _cam_mse(explainer: str) -> dict[str, Any]:
    return {"explanation": {"weight": CAM_WEIGHT, "explainer": explainer, "distance": "mse"}}


CAM_ROWS = [
    Row("kd + MSE Grad-CAM", "kd", _cam_mse("gradcam")),
    Row("kd + MSE Grad-CAM++ (gradcampp)", "kd", _cam_mse("gradcampp")),  # a name whose slug differs from Grad-CAM's
    Row("kd + MSE Layer-CAM", "kd", _cam_mse("layercam")),
    Row("kd + MSE Score-CAM", "kd", _cam_mse("scorecam")),
    Row("fitnet", "fitnet"),
    Row("fitnet + MSE Grad-CAM", "fitnet", _cam_mse("gradcam")),
]
ALL_ROWS = {row.name: row for row in ROWS + PAPER_ROWS + BASE_ROWS + BCOS_ROWS + CAM_ROWS}
BATCH_SIZE = {50: 32, 200: 64}  # the e2KD paper's few-shot batch sizes


def run_spec(row: Row, shots: int, seed: int, args: argparse.Namespace, dataset: Path) -> dict[str, Any]:
    epochs = args.epochs_50 if shots == 50 else args.epochs_200
    if shots not in (50, 200):  # other shot counts: keep the step count of 200 shots at batch 64
        epochs = max(1, round(args.epochs_200 * 200 / shots))
    return {
        "name": f"quality-{common.slug(row.name)}-{shots}shots-seed{seed}",
        "dataset": {"path": str(dataset), "shots_per_class": shots, "split_seed": seed},
        "teacher": {"arch": args.teacher_arch, "weights": str(args.teacher)},
        "student": {"arch": args.student_arch},
        "method": row.method,
        "loss": row.loss,
        "training": {"epochs": epochs, "batch_size": BATCH_SIZE.get(shots, 64), "seed": seed, "lr": args.lr,
                     **({"optimizer": args.optimizer, "weight_decay": args.weight_decay} if args.bcos else {})},
        "report": {"heatmaps": 0, "latency_runs": 5},
    }


def _apply_setting(args: argparse.Namespace) -> None:
    """Fill the setting-dependent defaults: the standard resnet20 -> resnet8 table, or the B-cos comparison."""
    if args.bcos:
        args.teacher = args.teacher or BCOS_TEACHER_WEIGHTS
        args.teacher_arch, args.student_arch = "bcos/cifar10_resnet20", "bcos/cifar10_resnet8"
        args.optimizer, args.weight_decay, args.lr = "adam", 0.0, args.lr or 1e-3
        if args.shots == [50, 200]:
            args.shots = [50]
    else:
        args.teacher = args.teacher or TEACHER_WEIGHTS
        args.teacher_arch, args.student_arch = "resnet20", "resnet8"
        args.optimizer, args.weight_decay, args.lr = "sgd", 5e-4, args.lr or 0.05


def _seconds_per_step(result: dict[str, Any]) -> float:
    """Wall seconds of the distilling stage per optimiser step (the teacher's maps cached after the first epoch)."""
    spec = result["spec"]
    steps = spec["training"]["epochs"] * -(-10 * spec["dataset"]["shots_per_class"] // spec["training"]["batch_size"])
    return result["seconds"]["distilling"] / steps


def run_one(task: tuple[dict[str, Any], str, int]) -> dict[str, Any]:
    """One student run in a worker process (its own torch threads); reuses a finished run's result."""
    spec_dict, out_dir, threads = task
    common.set_threads(threads)
    from core.run import run_distillation
    from core.spec import JobSpec

    out = Path(out_dir)
    result_path = out / "bench.json"
    if result_path.exists():
        saved = json.loads(result_path.read_text())
        if saved.get("spec") == spec_dict:
            return {**saved, "reused": True}
    if out.exists():
        shutil.rmtree(out)  # a different or unfinished spec: start clean
    started = time.perf_counter()
    metrics = run_distillation(JobSpec.model_validate(spec_dict), out)
    minutes = (time.perf_counter() - started) / 60
    keys = ("student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "explanation_cosine_gradcam",
            "ece", "seconds")
    result = {"spec": spec_dict, "minutes": minutes, "threads": threads, **{k: metrics[k] for k in keys}}
    result_path.write_text(json.dumps(result, indent=2))
    common.log.info("%s: top-1 %.4f, cosine %.3f, %.1f min", spec_dict["name"], metrics["student_accuracy"],
                    metrics["explanation_cosine"], minutes)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, 1 seed, 200 test images")
    parser.add_argument("--shots", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help=f"row names (default: the 8 main rows); "
                        f"known: {', '.join(ALL_ROWS)}")
    parser.add_argument("--paper-rows", action="store_true", help="add the e2KD paper's settings (T=1, no CE, w)")
    parser.add_argument("--paper-shots", type=int, nargs="+", default=[50], help="shots that get the paper rows")
    parser.add_argument("--epochs-50", type=int, default=10, help="epochs at 50 shots/class (batch 32)")
    parser.add_argument("--epochs-200", type=int, default=5, help="epochs at 200 shots/class (batch 64)")
    parser.add_argument("--bcos", action="store_true", help="the e2KD paper's B-cos comparison (see above)")
    parser.add_argument("--cam", action="store_true", help="the VISAPP 2026 CAM rows: Grad-CAM cosine and s/step "
                        "columns, paired differences against kd and fitnet")
    parser.add_argument("--lr", type=float, default=None, help="default 0.05 (SGD), 1e-3 with --bcos (Adam)")
    parser.add_argument("--test-size", type=int, default=2000, help="fixed test subset (10000 = the full split)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--teacher", type=Path, default=None, help="default: the cached teacher of the setting")
    parser.add_argument("--tag", default=None, help="cache folder name (default: from the settings)")
    parser.add_argument("--fresh", action="store_true", help="rerun every run even if a finished one is cached")
    parser.add_argument("--name", default="quality", help="results file name under bench/results/")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs_50, args.epochs_200, args.test_size = args.seeds[:1], 2, 1, 200
    _apply_setting(args)
    common.setup_logging(args.verbose)
    if not args.teacher.exists():
        raise SystemExit(f"no teacher at {args.teacher}: run python bench/teacher.py first")
    teacher_info = json.loads(args.teacher.with_suffix(".json").read_text()) if args.teacher.with_suffix(
        ".json").exists() else {}

    common.cifar_npz()
    dataset = common.CIFAR_NPZ if args.test_size >= 10_000 else common.test_subset_npz(args.test_size)
    rows = [ALL_ROWS[name] for name in args.rows] if args.rows else list(BCOS_ROWS if args.bcos else ROWS)
    paper_rows = [row for row in PAPER_ROWS if row not in rows] if args.paper_rows and not args.bcos else []
    if paper_rows and ALL_ROWS["kd"] not in rows:
        rows.insert(0, ALL_ROWS["kd"])
    tag = args.tag or ("bcos-" if args.bcos else "") + f"e{args.epochs_50}-{args.epochs_200}-test{args.test_size}-lr{args.lr}" + (
        "-quick" if args.quick else "")
    if args.fresh:
        shutil.rmtree(RUNS_DIR / tag, ignore_errors=True)

    def rows_for(shots: int) -> list[Row]:
        return rows + (paper_rows if shots in args.paper_shots else [])

    tasks, keys = [], []
    for seed in args.seeds:  # seed-major order: a partial run still has whole seeds for every row
        for shots in args.shots:
            for row in rows_for(shots):
                spec = run_spec(row, shots, seed, args, dataset)
                tasks.append((spec, str(RUNS_DIR / tag / spec["name"]), args.threads))
                keys.append((row.name, shots, seed))
    common.log.info("%d runs on %d workers x %d threads", len(tasks), args.workers, args.threads)
    started = time.perf_counter()
    if args.workers > 1:
        env_threads = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = env_threads
        os.environ["MKL_NUM_THREADS"] = env_threads
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_one, tasks))
    else:
        results = [run_one(task) for task in tasks]
    wall_minutes = (time.perf_counter() - started) / 60
    by_key = dict(zip(keys, results))

    tables, data = [], {"runs": [{"row": k[0], "shots": k[1], "seed": k[2], **r} for k, r in by_key.items()]}
    headers = ["method", "top-1 %", "agreement %", "expl. cosine", "ECE", "minutes/run"]
    if args.bcos:
        headers[3:4] = ["expl. cosine (B-cos maps)", "expl. cosine (Grad-CAM)"]
    if args.cam:
        headers[3:4] = ["expl. cosine (job's explainer)", "expl. cosine (Grad-CAM)"]
        headers.append("s/step")
    for shots in args.shots:
        table_rows = []
        for row in rows_for(shots):
            runs = [by_key[(row.name, shots, seed)] for seed in args.seeds]
            table_rows.append([
                row.name,
                common.pm([r["student_accuracy"] for r in runs], 100, 1),
                common.pm([r["agreement"] for r in runs], 100, 1),
                common.pm([r["explanation_cosine"] for r in runs], 1, 3),
                *([common.pm([r["explanation_cosine_gradcam"] for r in runs], 1, 3)] if args.bcos or args.cam else []),
                common.pm([r["ece"] for r in runs], 1, 3),
                f"{common.mean([r['minutes'] for r in runs]):.1f}",
                *([f"{common.mean([_seconds_per_step(r) for r in runs]):.3f}"] if args.cam else []),
            ])
        epochs = run_spec(rows[0], shots, 0, args, dataset)["training"]["epochs"]
        tables.append((f"{shots} shots/class ({10 * shots} training images), {epochs} epochs at batch "
                       f"{BATCH_SIZE.get(shots, 64)}; mean ± std over seeds {args.seeds}", headers, table_rows))

    claim_rows, notes = [], []
    compare = [("e2kd", "kd")] + [(r.name, "kd (T=1, no CE)") for r in PAPER_ROWS if r.name.startswith("e2kd (T=1")]
    compare += [(row.name, "kd") for row in CAM_ROWS if row.method == "kd"] + [("fitnet + MSE Grad-CAM", "fitnet")]
    compare += [("e2kd (w=5)", "kd"), ("dkd + gradcam cosine", "dkd"), ("dkd", "kd"), ("dist", "kd"), ("e2kd-bcos", "kd (B-cos, T=1, no CE)")]
    for shots in args.shots:
        for better, base in compare:
            if (better, shots, args.seeds[0]) not in by_key or (base, shots, args.seeds[0]) not in by_key:
                continue
            top1 = [100 * (by_key[(better, shots, s)]["student_accuracy"] - by_key[(base, shots, s)]["student_accuracy"])
                    for s in args.seeds]
            cosine = [by_key[(better, shots, s)]["explanation_cosine"] - by_key[(base, shots, s)]["explanation_cosine"]
                      for s in args.seeds]
            holds = common.mean(top1) >= 1.0 and common.mean(cosine) >= 0.10
            claim_rows.append([f"{better} - {base}", shots, f"{common.mean(top1):+.2f} ± {common.spread(top1):.2f}",
                               f"{common.mean(cosine):+.3f} ± {common.spread(cosine):.3f}",
                               "holds" if holds else "does not hold"])
    if claim_rows:
        tables.append(("Paired by seed (mean ± std of the differences); the claim: the guided row beats its base "
                       "by >= 1 point top-1 and >= 0.10 explanation cosine",
                       ["comparison", "shots", "Δ top-1 (points)", "Δ expl. cosine", "claim (>= 1 pt, >= 0.10)"],
                       claim_rows))
    teacher_acc = [r["teacher_accuracy"] for r in results]
    reused = sum(1 for r in results if r.get("reused"))
    train_images = teacher_info.get("train_images", 50_000)
    notes += [
        f"Teacher: {teacher_info.get('arch', 'resnet20')} trained {teacher_info.get('epochs', '?')} epochs on "
        f"{train_images:,} train images ({teacher_info.get('train_minutes', '?')} min); top-1 {100 * teacher_info.get('test_accuracy', float('nan')):.2f} % on "
        f"{teacher_info.get('test_images', 10_000):,} test images, {100 * common.mean(teacher_acc):.2f} % on the evaluation images of these runs.",
        f"Evaluation: {'the full 10,000-image test split' if args.test_size >= 10_000 else f'a fixed, class-stratified {args.test_size}-image subset of the test split (the same images for every row)'}.",
        ("Student bcos/cifar10_resnet8 (78k parameters); Adam lr %.3g, cosine schedule, no weight decay, no augmentation "
         "(so teacher maps are cached); e2kd-bcos at its defaults (KL at T=1, no CE, B-cos map weight 1); explanation "
         "cosine of the B-cos contribution maps, Grad-CAM cosine beside it." % args.lr) if args.bcos else
        ("Student resnet8 (78k parameters); SGD momentum 0.9, lr %.3g, cosine schedule, weight decay 5e-4, no augmentation "
         "(so teacher maps are cached); presets at their defaults (T=4, explanation weight 1, AT weight 1000, oracle gamma 1)." % args.lr),
        f"Minutes per run: wall time of one run_distillation at {args.threads} torch thread(s), {args.workers} runs in parallel; "
        f"total wall time {wall_minutes:.1f} min for {len(tasks)} runs, {reused} of them reused from an earlier "
        "invocation (they count their original minutes).",
    ]
    if args.cam:
        notes.append(f"CAM rows: MSE on min-max normalised maps, weight {CAM_WEIGHT:g} (the paper's range 10-150); "
                     "s/step: distilling seconds per step, the first epoch's teacher maps included.")
    settings = {
        "shots": args.shots, "seeds": args.seeds, "epochs_50shots": args.epochs_50, "epochs_200shots": args.epochs_200,
        "test_images": min(args.test_size, 10_000), "workers": args.workers, "threads_per_run": args.threads,
        "teacher_epochs": teacher_info.get("epochs"), "wall_minutes": round(wall_minutes, 1),
    }
    name = args.name + ("_bcos" if args.bcos and args.name == "quality" else "") + ("_quick" if args.quick else "")
    title = ("Quality: e2KD's B-cos setting on few-shot CIFAR-10 (bcos/cifar10_resnet20 -> bcos/cifar10_resnet8)"
             if args.bcos else "Quality: explanation-guided distillation on few-shot CIFAR-10 (resnet20 -> resnet8)")
    common.write_results(name, title,
                         settings, tables, data, notes)


if __name__ == "__main__":
    main()
