"""This engine against torchdistill on the same models, weights, images, batches and schedule, side by side.

    python bench/peer.py                          # 3 alternating pairs of 3 epochs (quiet machine)
    python bench/peer.py --ablation               # plus this engine with its speed changes off (before)
    python bench/peer.py --ablation --each-change # and with each change off alone
    python bench/peer.py --quick                  # smoke test: 500 images, one pair

torchdistill (https://github.com/yoshitomo-matsubara/torchdistill) is the KD framework an ML
engineer would otherwise pick. The bench installs it from PyPI into `bench/.cache/peer-site`
with `pip install --no-deps --target` (its other requirements, numpy, scipy, pyyaml, torchvision,
come with this project already), so torch and torchvision stay the project's own; it is not a
dependency of the service.

What is the same on both sides, by construction:
- the teacher: one ResNet-20 state dict (`--teacher`), loaded into this engine's resnet20 and,
  through `torchdistill_state` (keys `shortcut.` -> `downsample.`), into torchdistill's CIFAR
  ResNet; the child asserts both give the same logits on a batch before it trains;
- the student's initial weights: this engine's resnet8 from the pair's seed (pair 1: seed 0, pair
  2: seed 1, ...), mapped the same way into torchdistill's `resnet(8)`;
- the images: a seeded 500-per-class share of CIFAR-10's train split (5,000) and 1,000 test
  images at 32 px, normalised by the engine's own function; no augmentation;
- the batches: torchdistill's DataLoader draws each epoch's order from the engine's own
  (seed, epoch) generator (a sampler passed through its config), batch 64, the pair's seed;
- the loss: CE + T^2 KL at T = 4, weights 1 and 1 (torchdistill's `KDLoss` with alpha = beta = 1
  in a `WeightedSumLoss`); SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine per step;
- the teacher frozen in eval mode; `--threads` torch threads; an epoch's seconds are its steps
  plus top-1 on the test images (the engine's `train` scores every epoch; torchdistill's side
  runs its validation loader over the same images).

torchdistill's side is its own training loop API: `get_distillation_box`, then per epoch
`pre_epoch_process`, `forward_process` + `post_forward_process` per batch (with the
`loss.item()` its example script logs), `post_epoch_process`. This engine's side is what a job
runs for the distillation stage: `DistillationObjective` + `core.train.loop.train`, with the
per-epoch checkpoint (written after the epoch's clock stops, as the engine times it).
Every run is a fresh process; a pair runs torchdistill and this engine's rows one after the
other, alternating which side goes first, and each ratio is taken within a pair.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

PEER_SITE = common.CACHE_DIR / "peer-site"
PEER_PACKAGE, PEER_VERSION = "torchdistill", "1.1.5"
PEER_IMPORTS = ("numpy", "scipy", "yaml", "torchvision", "PIL")  # what torchdistill imports besides torch
TEACHER_ARCH, STUDENT_ARCH, STUDENT_DEPTH = "resnet20", "resnet8", 8

# Engine rows: name -> (preset, in-place model, foreach optimiser, channels_last on the CPU). "kd" and "e2kd"
# are the rows; the ablation rows turn this engine's speed changes off (the same code, a switch each).
ENGINE_ROWS: dict[str, tuple[str, bool, bool, bool]] = {
    "kd": ("kd", True, True, True),
    "e2kd": ("e2kd", True, True, True),
    "kd, NCHW": ("kd", True, True, False),
    "kd, out-of-place model": ("kd", False, True, True),
    "kd, single-tensor SGD": ("kd", True, False, True),
    "kd, all off (before)": ("kd", False, False, False),
}
BEFORE = "kd, all off (before)"
EACH_CHANGE = ["kd, NCHW", "kd, out-of-place model", "kd, single-tensor SGD"]
PEER = "torchdistill kd"


# --- torchdistill, installed for the bench only ----------------------------------------------------------


def install_peer() -> None:
    """torchdistill into bench/.cache/peer-site, without its dependencies (torch stays the project's)."""
    import torch

    torch_before = torch.__version__
    if not (PEER_SITE / PEER_PACKAGE).is_dir():
        PEER_SITE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PEER_SITE),
                        f"{PEER_PACKAGE}=={PEER_VERSION}"], check=True)
    missing = [name for name in PEER_IMPORTS if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"torchdistill needs {', '.join(missing)}: install the project's requirements first")
    use_peer()
    import torchdistill  # noqa: F401 - fails here, not mid-run, if the install is broken

    assert torch.__version__ == torch_before, f"installing {PEER_PACKAGE} changed torch ({torch.__version__})"


def use_peer() -> None:
    """Put the bench's torchdistill on the path, after everything else (it can never shadow torch)."""
    if str(PEER_SITE) not in sys.path:
        sys.path.append(str(PEER_SITE))
    import logging

    logging.getLogger("torchdistill").setLevel(logging.WARNING)


def torchdistill_state(state: dict[str, Any]) -> dict[str, Any]:
    """An engine CIFAR ResNet state dict in torchdistill's (torchvision's BasicBlock) names.

    The blocks are the same layers in the same order; only the projection shortcut has another
    name (`layerN.M.shortcut.{0,1}` here, `layerN.M.downsample.{0,1}` in torchvision's block).
    """
    return {key.replace(".shortcut.", ".downsample."): value for key, value in state.items()}


# --- the child: one run, one process ---------------------------------------------------------------------


def load_inputs(args: argparse.Namespace):  # noqa: ANN201 - (data bundle, teacher, student) of this engine
    import torch

    from core.data import load_dataset
    from core.models import build_model, load_weights
    from core.spec import DatasetSpec

    npz = common.small_npz(args.train_per_class, args.test_size)
    data = load_dataset(DatasetSpec(path=str(npz)), seed=0)
    teacher = build_model(TEACHER_ARCH, data.num_classes, data.in_channels)
    if args.teacher:
        load_weights(teacher, Path(args.teacher))
    torch.manual_seed(args.seed)
    student = build_model(STUDENT_ARCH, data.num_classes, data.in_channels)
    return data, teacher.eval().requires_grad_(False), student


def engine_child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from core.models.cifar import set_inplace
    from core.spec import JobSpec
    from core.terms import build_terms
    from core.train.loop import DistillationObjective, OptimConfig, train

    preset, inplace, foreach, channels_last = ENGINE_ROWS[args.child]
    if not channels_last:  # the ablation: core.train.precision's rule, answered "no" for this process
        import core.train.precision

        core.train.precision.uses_channels_last = lambda precision, device: False
    data, teacher, student = load_inputs(args)
    set_inplace(teacher, inplace)
    set_inplace(student, inplace)
    spec = JobSpec.model_validate({
        "dataset": {"path": "peer.npz"}, "method": preset,
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05, "seed": args.seed},
    })
    assert spec.loss.ce == 1.0 and spec.loss.kd == 1.0 and spec.loss.temperature == 4.0
    device = torch.device("cpu")
    channels = 64  # the explained layer (layer3) of both CIFAR ResNets
    explanation = spec.loss.explanation if spec.loss.explanation.weight > 0 else None
    objective = DistillationObjective(student, build_terms(spec.loss, channels, channels), data, device,
                                      teacher=teacher, explanation=explanation, cache_maps=True)
    config = OptimConfig.from_training(spec.training, spec.training.epochs)
    if not foreach:
        config = OptimConfig(**{**config.__dict__, "foreach": False})
    folder = Path(tempfile.mkdtemp(prefix="peer-", dir=common.CACHE_DIR))
    try:
        history = train(student, objective, data.train, None, config, stage="distilling", device=device,
                        checkpoint_path=folder / "distilling.pt")
    finally:
        objective.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"epoch_seconds": [e["seconds"] for e in history], "top1": history[-1]["test_accuracy"]}


class EngineOrder:
    """torchdistill's sampler: each epoch's order from the engine's (seed, epoch) generator, so batches match."""

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = len(dataset), seed, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):  # noqa: ANN204
        import torch

        from core.train.loop import epoch_generator

        order = torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch))
        self.epoch += 1
        return iter(order.tolist())


def torchdistill_models(args: argparse.Namespace, data: Any, teacher: Any, student: Any):  # noqa: ANN001,ANN201
    """torchdistill's CIFAR ResNets holding this engine's teacher and initial student weights."""
    import torch
    from torchdistill.models.classification.resnet import resnet

    peer_teacher = resnet(20, data.num_classes, False, False)
    peer_teacher.load_state_dict(torchdistill_state(teacher.state_dict()))
    peer_student = resnet(STUDENT_DEPTH, data.num_classes, False, False)
    peer_student.load_state_dict(torchdistill_state(student.state_dict()))
    peer_teacher.eval().requires_grad_(False)
    probe = data.test_x[:64]
    with torch.no_grad():
        ours, theirs = teacher(probe), peer_teacher(probe)
    difference = float((ours - theirs).abs().max())
    assert difference < 1e-4, f"the mapped teacher's logits differ by {difference}"
    assert torch.equal(ours.argmax(1), theirs.argmax(1)), "the mapped teacher predicts other classes"
    return peer_teacher, peer_student, difference


def torchdistill_config(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """The train_config a torchdistill user writes in YAML, as a dict: plain KD, SGD, cosine per step."""
    return {
        "num_epochs": args.epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": EngineOrder, "kwargs": {"seed": args.seed}},
                              "kwargs": {"batch_size": args.batch_size, "num_workers": 0, "drop_last": False}},
        "val_data_loader": {"dataset_id": "test", "sampler": {"class_or_func": _sequential(), "kwargs": {}},
                            "kwargs": {"batch_size": 256, "num_workers": 0}},
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only"},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": args.epochs * steps}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output",
                "teacher_module_path": ".", "teacher_module_io": "output",
                "temperature": 4.0, "alpha": 1.0, "beta": 1.0, "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }


def _sequential():  # noqa: ANN202
    from torch.utils.data import SequentialSampler

    return SequentialSampler


def torchdistill_child(args: argparse.Namespace) -> dict[str, Any]:
    import math

    import torch
    from torch.utils.data import TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    data, teacher, student = load_inputs(args)
    peer_teacher, peer_student, difference = torchdistill_models(args, data, teacher, student)
    datasets = {"train": TensorDataset(data.train_x, data.train_y), "test": TensorDataset(data.test_x, data.test_y)}
    device = torch.device("cpu")
    steps = math.ceil(len(data.train_y) / args.batch_size)
    box = get_distillation_box(peer_teacher, peer_student, datasets, torchdistill_config(args, steps), device,
                               None, False, 1.0)
    seconds, top1 = [], 0.0
    for epoch in range(args.epochs):
        started = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            loss.item()  # what torchdistill's example logs every step (its MetricLogger)
        box.post_epoch_process()
        top1 = evaluate_peer(box.student_model, box.val_data_loader)
        seconds.append(time.perf_counter() - started)
    return {"epoch_seconds": seconds, "top1": top1, "teacher_logit_difference": difference}


def evaluate_peer(model: Any, loader: Any) -> float:
    """Top-1 over torchdistill's validation loader, as its example scripts score (eval mode, no grad)."""
    import torch

    was_training, correct, total = model.training, 0, 0
    model.eval()
    with torch.inference_mode():
        for sample_batch, targets, *_ in loader:
            correct += int((model(sample_batch).argmax(1) == targets).sum())
            total += len(targets)
    model.train(was_training)
    return correct / total


def child(args: argparse.Namespace) -> None:
    common.set_threads(args.threads)
    from core.train.runtime import configure_torch

    configure_torch(args.threads)  # both sides: the optimiser's one-time imports before anything is timed
    if args.child == PEER:
        use_peer()
        result = torchdistill_child(args)
    else:
        result = engine_child(args)
    print(json.dumps({"row": args.child, **result}))


def import_cost_child() -> None:
    """Seconds of the first optimiser construction in a fresh process, without and after configure_torch."""
    import torch

    from core.train.runtime import configure_torch

    model = torch.nn.Linear(2, 2)
    if os.environ.get("PEER_CONFIGURE") == "1":
        configure_torch()
    started = time.perf_counter()
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    print(json.dumps({"first_optimizer_s": time.perf_counter() - started}))


# --- the parent: pairs, ratios, tables -------------------------------------------------------------------


def run_child(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", row, "--seed", str(seed), "--threads", str(args.threads),
               "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--train-per-class", str(args.train_per_class),
               "--test-size", str(args.test_size), "--teacher", args.teacher]
    env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT)}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise SystemExit(f"{row} failed:\n{output.stderr[-3000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    print(f"  {row}: {epoch_seconds(result):.2f} s/epoch, top-1 {100 * result['top1']:.1f} %",
          flush=True)
    return result


def import_cost(configure: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT), "PEER_CONFIGURE": "1" if configure else "0"}
    output = subprocess.run([sys.executable, __file__, "--import-cost-child"], env=env, capture_output=True,
                            text=True, check=True)
    return float(json.loads(output.stdout.strip().splitlines()[-1])["first_optimizer_s"])


def run_pairs(args: argparse.Namespace, rows: list[str]) -> list[dict[str, dict[str, Any]]]:
    pairs = []
    for index in range(args.pairs):
        order = [PEER, *rows] if index % 2 == 0 else [*rows, PEER]
        print(f"pair {index + 1}/{args.pairs}: {' -> '.join(order)}", flush=True)
        pairs.append({row: run_child(args, row, seed=args.first_seed + index) for row in order})
    return pairs


def epoch_seconds(run: dict[str, Any]) -> float:
    """A run's seconds per epoch: their mean, which is what a job pays (e2KD's first epoch also fills its map cache)."""
    return sum(run["epoch_seconds"]) / len(run["epoch_seconds"])


def top1_table(top1: dict[str, list[float]], rows: list[str], test_images: int
               ) -> tuple[str, list[str], list[list[Any]]]:
    """Top-1 per seed (pair) and its mean: the target compares torchdistill's and this engine's kd means.

    One seed's top-1 is not the method's: a different order of floating-point operations (even
    this engine in NCHW against itself in channels_last) sends a few-epoch run elsewhere by
    points, so the means over the seeds are compared, next to their spread.
    """
    import statistics

    body = []
    for row in rows:
        values = top1[row]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        gap = statistics.mean(values) - statistics.mean(top1[PEER])
        verdict = f"{gap:+.2f} ({'met' if abs(gap) <= 0.5 else 'missed'})" if row == "kd" else f"{gap:+.2f}"
        body.append([row, f"{statistics.mean(values):.2f} ± {spread:.2f}", " ".join(f"{v:.1f}" for v in values),
                     verdict])
    return (f"top-1 % on the {test_images:,} test images: mean ± std over the pairs' seeds; gap = mean - torchdistill kd's "
            "mean (points; target for kd: within 0.5)", ["run", "mean ± std", "per seed", "gap"], body)


def tables(args: argparse.Namespace, rows: list[str], pairs: list[dict[str, dict[str, Any]]],
           imports: dict[str, float]) -> list[tuple[str, list[str], list[list[Any]]]]:
    seconds = {row: [epoch_seconds(p[row]) for p in pairs] for row in [PEER, *rows]}
    top1 = {row: [100 * p[row]["top1"] for p in pairs] for row in [PEER, *rows]}
    ratio = {row: [s / p for s, p in zip(seconds[row], seconds[PEER])] for row in rows}
    main_rows = [[PEER, f"{common.median(seconds[PEER]):.2f}", f"{sum(top1[PEER]) / len(top1[PEER]):.1f}", "1.00", "", ""]]
    targets = {"kd": 0.95, "e2kd": 1.1}
    for row in rows:
        target = targets.get(row)
        verdict = "" if target is None else ("met" if common.median(ratio[row]) <= target else "missed")
        main_rows.append([f"this engine: {row}", f"{common.median(seconds[row]):.2f}", f"{sum(top1[row]) / len(top1[row]):.1f}",
                          f"{common.median(ratio[row]):.3f}", " ".join(f"{r:.2f}" for r in ratio[row]),
                          f"<= {target} ({verdict})" if target else ""])
    caption = (f"s/epoch (a run's seconds / its {args.epochs} epochs; median over {len(pairs)} alternating pairs) "
               f"and final top-1 (mean over the pairs' seeds); ratio = this row's s/epoch / torchdistill's kd s/epoch "
               f"in the same pair")
    out = [(caption, ["run", "s/epoch", "top-1 %", "x torchdistill kd", "per pair", "target"], main_rows)]
    out.append(top1_table(top1, [PEER, *rows], args.test_size))
    changed = [row for row in rows if row.startswith("kd, ")]
    if changed:
        out.append(("what the engine changes bought: kd epoch with all changes / with the named change(s) off, same pair",
                    ["change(s) off", "median", "per pair"],
                    [[row.removeprefix("kd, "), f"{common.median([a / b for a, b in zip(seconds['kd'], seconds[row])]):.3f}",
                      " ".join(f"{a / b:.2f}" for a, b in zip(seconds["kd"], seconds[row]))] for row in changed]))
    out.append(("first optimiser construction in a fresh process (the torch._dynamo import)",
                ["when", "seconds"], [["no start-up setup (before)", f"{imports['before']:.2f}"],
                                      ["after configure_torch() at process start", f"{imports['after']:.3f}"]]))
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (s/epoch is their mean)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--teacher", default=str(common.CACHE_DIR / "teacher.safetensors"),
                        help="resnet20 weights (.safetensors); '' = a random teacher (timing only)")
    parser.add_argument("--rows", nargs="+", default=["kd", "e2kd"], choices=["kd", "e2kd"],
                        help="this engine's rows besides torchdistill's (kd is always compared)")
    parser.add_argument("--first-seed", type=int, default=0, help="pair k uses seed first-seed + k - 1")
    parser.add_argument("--ablation", action="store_true", help="also this engine with its speed changes off (before)")
    parser.add_argument("--each-change", action="store_true", help="with --ablation: also each change off alone")
    parser.add_argument("--quick", action="store_true", help="smoke test: 50 images/class, 200 test, one pair")
    parser.add_argument("--name", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's: its pair's index
    parser.add_argument("--import-cost-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.train_per_class, args.test_size = 1, 50, 200
    args.rows = ["kd", *(row for row in args.rows if row != "kd")]  # every ratio and gap is taken against kd
    if args.teacher and not args.import_cost_child and not Path(args.teacher).exists():
        raise SystemExit(f"no teacher at {args.teacher}: train it (bench/teacher.py) or pass --teacher ''")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.import_cost_child:
        return import_cost_child()
    if args.child:
        return child(args)
    common.setup_logging()
    install_peer()
    rows = [*args.rows, *([BEFORE] if args.ablation else []), *(EACH_CHANGE if args.each_change else [])]
    started = time.perf_counter()
    imports = {"before": import_cost(False), "after": import_cost(True)}
    pairs = run_pairs(args, rows)
    result_tables = tables(args, rows, pairs, imports)
    import torch

    settings = {"teacher": TEACHER_ARCH, "student": STUDENT_ARCH, "train_images": 10 * args.train_per_class,
                "test_images": args.test_size, "batch_size": args.batch_size, "epochs_per_run": args.epochs,
                "pairs": args.pairs, "torch_threads": args.threads, "teacher_weights": Path(args.teacher).name
                if args.teacher else "random", "torchdistill": PEER_VERSION, "torch": torch.__version__,
                "wall_minutes": round((time.perf_counter() - started) / 60, 1)}
    notes = [
        "Both sides: resnet20 teacher (eval, frozen) -> resnet8 student, identical weights, images and batch order; "
        "CE + T^2 KL (T=4, weights 1, 1); SGD 0.05 momentum 0.9 wd 5e-4, cosine per step; no augmentation.",
        "An epoch's seconds: its training steps plus top-1 on the test images; every run is a fresh process.",
        f"Mapped teacher: max |logit difference| vs this engine's = "
        f"{max(p[PEER].get('teacher_logit_difference', 0.0) for p in pairs):.2e} on a test batch.",
    ]
    name = args.name or ("peer_quick" if args.quick else "peer")
    common.write_results(name, "This engine vs torchdistill: KD epoch, side by side", settings, result_tables,
                         {"pairs": pairs, "import_cost_s": imports}, notes)


if __name__ == "__main__":
    main()
