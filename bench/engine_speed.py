"""Engine speed: seconds per distillation epoch of each method, against a bare PyTorch loop, and peak RSS.

    python bench/engine_speed.py                   # the full run (quiet machine): 3 rounds, 2 threads
    python bench/engine_speed.py --quick           # smoke test: tiny data, 1 round, 1 thread
    python bench/engine_speed.py --profile e2kd    # torch.profiler's top entries for one method
    python bench/engine_speed.py --against COMMIT  # e2kd and kd: this engine vs the one at COMMIT, side by side
    python bench/engine_speed.py --data-path       # data-path table: uint8 in memory vs streamed JPEG

Every method runs in its own fresh process (so its peak RSS is its own), one warm-up epoch
then `--epochs` timed epochs; a round runs every method once, in turn, and the rounds are
repeated, so slow phases of the machine hit all methods alike. Each ratio is taken within a
round (side by side) and the table gives its median over the rounds. The engine rows run the
engine's own pieces (`DistillationObjective` + `train`, what a job runs); the bare rows are a
hand-written loop with the same math (CE + T^2 KL, Grad-CAM with create_graph, 1 - cos) and
none of the engine's abstractions (terms, context, callbacks, per-step bookkeeping).
Both include the same per-epoch held-out accuracy on a small test split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

TEACHER_ARCH, STUDENT_ARCH = "resnet20", "resnet8"


@dataclass(frozen=True)
class Method:
    """One row: an engine configuration (a spec's loss) or the bare loop."""

    name: str
    loss: dict[str, Any] = field(default_factory=dict)
    preset: str | None = "kd"
    cache_maps: bool = True
    bare: bool = False


METHODS = [
    Method("kd", preset="kd"),
    Method("e2kd (Grad-CAM), cached maps", preset="e2kd"),
    Method("e2kd (Grad-CAM), no cache", preset="e2kd", cache_maps=False),
    Method("xai-mse, cached maps", preset="xai-mse"),
    Method("xai-mse, no cache", preset="xai-mse", cache_maps=False),
    Method("input-gradient alignment, cached maps", preset="e2kd", loss={"explanation": {"explainer": "input_gradient"}}),
    Method("input-gradient alignment, no cache", preset="e2kd", loss={"explanation": {"explainer": "input_gradient"}},
           cache_maps=False),
    Method("oracle", preset="oracle"),
    Method("bare loop: kd", preset="kd", bare=True),
    Method("bare loop: e2kd, cached maps", preset="e2kd", bare=True),
    Method("bare loop: e2kd, no cache", preset="e2kd", bare=True, cache_maps=False),
]
BY_NAME = {m.name: m for m in METHODS}
SHORT = {"kd": "kd", "e2kd": "e2kd (Grad-CAM), cached maps", "e2kd-nocache": "e2kd (Grad-CAM), no cache",
         "xai-mse": "xai-mse, cached maps", "input-gradient": "input-gradient alignment, cached maps",
         "oracle": "oracle", "bare-kd": "bare loop: kd", "bare-e2kd": "bare loop: e2kd, cached maps"}

# (numerator, denominator, target ratio or None): the comparisons the issue asks for
RATIOS = [
    ("e2kd (Grad-CAM), cached maps", "kd", 1.2),
    ("e2kd (Grad-CAM), no cache", "kd", None),
    ("xai-mse, cached maps", "kd", None),
    ("input-gradient alignment, cached maps", "kd", None),
    ("input-gradient alignment, no cache", "kd", None),
    ("oracle", "kd", None),
    ("kd", "bare loop: kd", 1.1),
    ("e2kd (Grad-CAM), cached maps", "bare loop: e2kd, cached maps", 1.1),
    ("e2kd (Grad-CAM), no cache", "bare loop: e2kd, no cache", 1.1),
]


# --- the child: one method, one process ------------------------------------------------------------------


def vm_kib(field_name: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


RSS_AT_RESET_MB: list[float] = []


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak seen next is training's own."""
    RSS_AT_RESET_MB.append(vm_kib("VmRSS") / 1024)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def engine_module(name: str, before_regrouping: str):  # noqa: ANN201 - a module
    """An engine module by its name in this checkout or, when `--against` runs an engine from before core/ was
    regrouped into sub-packages, by its name there (the child code is the same on both sides).

    Decided by the layout of the `core` package this process imported, not by trying the new name: the
    installed checkout would otherwise lend the old engine the new modules it lacks."""
    import importlib

    import core

    regrouped = (Path(core.__file__).parent / "train").is_dir()
    return importlib.import_module(name if regrouped else before_regrouping)


def build(args: argparse.Namespace, method: Method):  # noqa: ANN201 - returns a tuple of engine objects
    import torch

    from core.data import load_dataset
    from core.models import build_model, load_weights
    from core.spec import DatasetSpec, JobSpec

    torch.manual_seed(0)
    npz = common.small_npz(args.shots, args.test_size)
    data = load_dataset(DatasetSpec(path=str(npz)), seed=0)
    teacher = build_model(TEACHER_ARCH, data.num_classes, data.in_channels)
    weights = common.CACHE_DIR / "teacher.safetensors"
    if weights.exists():  # speed does not depend on the weights, but a trained teacher makes it the real case
        load_weights(teacher, weights)
    student = build_model(STUDENT_ARCH, data.num_classes, data.in_channels)
    spec = JobSpec.model_validate({
        "dataset": {"path": str(npz)}, "method": method.preset, "loss": method.loss,
        "training": {"epochs": 1 + args.epochs, "batch_size": args.batch_size, "seed": 0},
    })
    return data, teacher, student, spec


def layer_channels(model, in_channels: int) -> int:  # noqa: ANN001
    import torch

    from core.explain import FeatureTap
    from core.models import explained_layer

    tap = FeatureTap(explained_layer(model))
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_channels, 32, 32))
    channels = tap.take().shape[1]
    tap.remove()
    return int(channels)


class EpochClock:
    """Wall and CPU seconds of each epoch: a mark at every epoch end, epochs are the differences.

    CPU seconds (this process, every thread) count the work an epoch does, not the time it
    waited for a core, so on a loaded machine they move far less than wall seconds.
    """

    def __init__(self) -> None:
        self.marks = [(time.perf_counter(), time.process_time())]

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def epochs(self) -> list[tuple[float, float]]:
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:])]


def epoch_end_callbacks(clock: EpochClock):  # noqa: ANN201 - a core.train.callbacks object, imported late
    """Engine callbacks that mark the clock at each epoch's last report: after held-out accuracy and checkpoint."""
    callbacks = engine_module("core.train.callbacks", "core.callbacks")

    class EpochEnds(callbacks.NullCallbacks):
        def on_progress(self, progress) -> None:  # noqa: ANN001
            if "test_accuracy" in progress.metrics:
                clock.mark()

    return EpochEnds()


def engine_epochs(args: argparse.Namespace, method: Method) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each epoch of the engine's `train`, per-epoch checkpoint included."""
    import torch

    from core.terms import build_terms

    loop = engine_module("core.train.loop", "core.trainer")
    DistillationObjective, OptimConfig, train = loop.DistillationObjective, loop.OptimConfig, loop.train  # noqa: N806
    data, teacher, student, spec = build(args, method)
    device = torch.device("cpu")
    terms = build_terms(spec.loss, layer_channels(student, data.in_channels), layer_channels(teacher, data.in_channels))
    explanation = spec.loss.explanation if spec.loss.explanation.weight > 0 else None
    objective = DistillationObjective(
        student=student, terms=terms, data=data, device=device, teacher=teacher, explanation=explanation,
        oracle_gamma=spec.loss.oracle_gamma, cache_maps=method.cache_maps,
    )
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="engine-speed-", dir=common.CACHE_DIR))
    checkpoint = checkpoint_dir / "distilling.pt" if args.checkpoints else None  # a job checkpoints every epoch
    reset_peak_rss()
    clock = EpochClock()
    try:
        train(student, objective, data.train_x, data.train_y,
              OptimConfig.from_training(spec.training, spec.training.epochs), stage="distilling",
              device=device, checkpoint_path=checkpoint, callbacks=epoch_end_callbacks(clock))
    finally:
        objective.close()
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return clock.epochs()


def bare_epochs(args: argparse.Namespace, method: Method) -> list[tuple[float, float]]:
    """The same math as the engine's kd / e2kd objective, written straight: the yardstick for its overhead."""
    import torch
    import torch.nn.functional as F

    from core.models import explained_layer, predict_logits

    data, teacher, student, spec = build(args, method)
    loss_spec, training = spec.loss, spec.training
    explaining = loss_spec.explanation.weight > 0
    temperature = loss_spec.temperature
    activations: dict[str, torch.Tensor] = {}
    hooks = [
        explained_layer(student).register_forward_hook(lambda m, i, o: activations.__setitem__("student", o)),
        explained_layer(teacher).register_forward_hook(lambda m, i, o: activations.__setitem__("teacher", o)),
    ]
    teacher.eval().requires_grad_(False)
    train_x, train_y = data.train_x, data.train_y
    samples, batch_size = len(train_x), training.batch_size
    steps = math.ceil(samples / batch_size)
    optimizer = torch.optim.SGD(student.parameters(), lr=training.lr, momentum=training.momentum,
                                weight_decay=training.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.epochs * steps)
    cached_maps: torch.Tensor | None = None
    cached_classes = torch.zeros(samples, dtype=torch.long)
    filled = torch.zeros(samples, dtype=torch.bool)

    def gradcam(logits: torch.Tensor, acts: torch.Tensor, classes: torch.Tensor, graph: bool) -> torch.Tensor:
        (grads,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), acts, create_graph=graph)
        return F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))

    reset_peak_rss()
    clock = EpochClock()
    for epoch in range(training.epochs):
        student.train()
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(training.seed * 1_000_003 + epoch))
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            x, y = train_x[index], train_y[index]
            teacher_maps = classes = None
            if explaining and not (method.cache_maps and bool(filled[index].all())):
                inputs = x.detach().requires_grad_()
                teacher_logits = teacher(inputs)
                classes = teacher_logits.detach().argmax(dim=1)
                teacher_maps = gradcam(teacher_logits, activations["teacher"], classes, False).detach()
                teacher_logits = teacher_logits.detach()
                if method.cache_maps:
                    if cached_maps is None:
                        cached_maps = teacher_maps.new_zeros((samples, *teacher_maps.shape[1:]))
                    cached_maps[index], cached_classes[index] = teacher_maps, classes
                    filled[index] = True
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                if explaining:
                    assert cached_maps is not None
                    teacher_maps, classes = cached_maps[index], cached_classes[index]
            student_logits = student(x)
            loss = loss_spec.ce * F.cross_entropy(student_logits, y) + loss_spec.kd * temperature**2 * F.kl_div(
                F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                reduction="batchmean", log_target=True)
            if explaining:
                assert teacher_maps is not None and classes is not None
                student_maps = gradcam(student_logits, activations["student"], classes, True)
                if student_maps.shape[-2:] != teacher_maps.shape[-2:]:
                    size = max(student_maps.shape[-2:], teacher_maps.shape[-2:])
                    student_maps = F.interpolate(student_maps, size=size, mode="bilinear", align_corners=False)
                    teacher_maps = F.interpolate(teacher_maps, size=size, mode="bilinear", align_corners=False)
                cosine = F.cosine_similarity(student_maps.flatten(1), teacher_maps.flatten(1), dim=1, eps=1e-8)
                loss = loss + loss_spec.explanation.weight * (1.0 - cosine).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        logits = predict_logits(student, data.test_x, torch.device("cpu"))  # the engine's held-out accuracy
        _ = float((logits.argmax(dim=1) == data.test_y).float().mean())
        clock.mark()
    for hook in hooks:
        hook.remove()
    return clock.epochs()


def child(args: argparse.Namespace) -> None:
    import core

    common.set_threads(args.threads)
    method = BY_NAME[args.child]
    epochs = (bare_epochs if method.bare else engine_epochs)(args, method)
    timed = epochs[1:] or epochs  # epoch 1 is the warm-up (and fills the map cache)
    print(json.dumps({
        "method": method.name,
        "engine": str(Path(core.__file__).resolve().parent.parent),  # which checkout's core/ ran
        "epoch_seconds": common.median([wall for wall, _ in timed]),
        "epoch_cpu_seconds": common.median([cpu for _, cpu in timed]),
        "all_epoch_seconds": [wall for wall, _ in epochs],
        "all_epoch_cpu_seconds": [cpu for _, cpu in epochs],
        "peak_rss_mb": vm_kib("VmHWM") / 1024,
        "rss_before_training_mb": RSS_AT_RESET_MB[-1] if RSS_AT_RESET_MB else 0.0,
    }))


# --- the data-path table: uint8 in memory vs streamed from JPEG files -------------------------------------


@dataclass(frozen=True)
class DataRow:
    """One data-path row: which images, at what size, through which path, and whether models train on them."""

    name: str
    images: int
    image_size: int
    streamed: bool
    train: bool = False  # False: a data epoch (every batch produced and moved to the device, no model)
    teacher: str = "torchvision/resnet18"
    student: str = "torchvision/mobilenet_v3_small"


def data_rows(args: argparse.Namespace) -> list[DataRow]:
    """The rows of the data-path table; image counts are whole per-class shares of CIFAR-10's 10 classes."""
    paths = ((False, "uint8 in memory"), (True, "streamed JPEG"))
    per_class = lambda count: max(1, count // 10) * 10  # noqa: E731 - what cifar_files really takes
    args.data_images, args.data_images_224, args.train_images_224 = (
        per_class(args.data_images), per_class(args.data_images_224), per_class(args.train_images_224))
    rows = [DataRow(f"CIFAR-10 32px, {args.data_images:,} images, {label}, data epoch", args.data_images, 32, s)
            for s, label in paths]
    rows += [DataRow(f"224px, {args.data_images_224:,} images, {label}, data epoch", args.data_images_224, 224, s)
             for s, label in paths]
    rows += [DataRow(f"224px, {args.train_images_224} images, {label}, kd epoch resnet18 -> mobilenet_v3_small",
                     args.train_images_224, 224, s, train=True) for s, label in paths]
    return rows


class RssSampler:
    """Peak memory of this process plus its children (DataLoader workers), sampled every 50 ms.

    Proportional set size (PSS): pages a forked worker shares with its parent count once,
    split between them, so the sum is the memory the job really holds (plain RSS would count
    the parent's copy-on-write pages again for every worker).
    """

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss_kib(pid: int) -> int:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        found: list[int] = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                found += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
        return found

    def total_kib(self) -> int:
        pids, seen = [os.getpid()], set()
        while pids:
            pid = pids.pop()
            if pid not in seen:
                seen.add(pid)
                pids += self._children(pid)
        return sum(self._rss_kib(pid) for pid in seen)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, self.total_kib())

    def __enter__(self) -> RssSampler:
        self.peak_kib = self.total_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cifar_files(count: int) -> tuple[list[Path], list[int]]:
    """The first `count` / 10 training JPEGs of each CIFAR-10 class (sorted names): a fixed, balanced set."""
    names = sorted(p.name for p in (common.CIFAR_TREE / "train").iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(names):
        chosen = sorted((common.CIFAR_TREE / "train" / name).glob("*.jpg"))[: max(1, count // len(names))]
        files += chosen
        labels += [label] * len(chosen)
    return files, labels


def data_child(args: argparse.Namespace) -> None:
    import torch

    from core.data import MemoryImages, StreamImages
    from core.data.sources import decode_images

    common.set_threads(args.threads)
    row = next(r for r in data_rows(args) if r.name == args.data_child)
    files, labels = cifar_files(row.images)
    label_tensor = torch.tensor(labels)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    with RssSampler() as sampler:
        started = time.perf_counter()
        if row.streamed:
            images = StreamImages(files, label_tensor, "RGB", row.image_size, mean, std, workers=args.data_workers)
        else:
            images = MemoryImages(torch.from_numpy(decode_images(files, "RGB", row.image_size)), label_tensor, mean,
                                  std)
        load_seconds = time.perf_counter() - started
        if row.train:
            epoch_seconds = _kd_epoch(row, images, args.batch_size)
        else:
            started = time.perf_counter()
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
            for _x, _y, _index in images.batches(order, args.batch_size, torch.device("cpu"), False,
                                                 torch.Generator().manual_seed(0)):
                pass
            epoch_seconds = time.perf_counter() - started
    print(json.dumps({
        "row": row.name, "epoch_seconds": epoch_seconds, "load_seconds": load_seconds,
        "peak_pss_mb": sampler.peak_kib / 1024, "pixels_mb": len(files) * 3 * row.image_size**2 / 2**20,
    }))


def _kd_epoch(row: DataRow, images, batch_size: int) -> float:  # noqa: ANN001
    import torch

    from core.models import build_model
    from core.spec import JobSpec
    from core.terms import build_terms
    from core.train.loop import DistillationObjective, OptimConfig, train

    torch.manual_seed(0)
    teacher = build_model(row.teacher, 10, 3, image_size=row.image_size)
    student = build_model(row.student, 10, 3, image_size=row.image_size)
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "kd",
                                   "training": {"epochs": 1, "batch_size": batch_size, "seed": 0}})
    objective = DistillationObjective(student, build_terms(spec.loss, 1, 1), _DataStub(images, row.image_size),  # type: ignore[arg-type]
                                      torch.device("cpu"), teacher=teacher)
    history = train(student, objective, images, None, OptimConfig.from_training(spec.training, 1),
                    stage="distilling", device=torch.device("cpu"))
    objective.close()
    return float(history[0]["seconds"])


class _DataStub:
    """The DataBundle fields the kd objective reads: the train set, and a one-image held-out split (timing only)."""

    def __init__(self, train, image_size: int) -> None:  # noqa: ANN001
        import torch

        from core.data import TensorImages

        self.train = train
        self.test = TensorImages(torch.zeros(1, 3, image_size, image_size), torch.zeros(1, dtype=torch.long))
        self.test_x, self.test_y = self.test.x, self.test.labels


def data_path_table(args: argparse.Namespace) -> None:
    if not (common.CIFAR_TREE / "train").is_dir():
        raise SystemExit("extract cifar10-jpeg.tar.gz into var/datasets/ first (see bench/README.md)")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results = []
    for row in data_rows(args):
        command = [sys.executable, __file__, "--data-child", row.name, "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size), "--data-images", str(args.data_images),
                   "--data-images-224", str(args.data_images_224), "--train-images-224", str(args.train_images_224),
                   "--data-workers", str(args.data_workers)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=common.REPO_ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{row.name} failed:\n{done.stderr[-4000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        common.log.info("%-55s %.1f s/epoch, peak PSS %.0f MB", row.name, results[-1]["epoch_seconds"],
                        results[-1]["peak_pss_mb"])
    rows = [[r["row"], f"{r['epoch_seconds']:.1f}", f"{r['load_seconds']:.1f}", f"{r['pixels_mb']:.0f}",
             f"{r['peak_pss_mb']:.0f}"] for r in results]
    common.write_results(
        "engine_data_path",
        "Engine data path: uint8 in memory vs streamed JPEG (one epoch per row, fresh process each)",
        {"cifar_images_32px": args.data_images, "data_epoch_images_224px": args.data_images_224,
         "kd_epoch_images_224px": args.train_images_224, "batch_size": args.batch_size, "torch_threads": args.threads,
         "dataloader_workers": args.data_workers, "device": "cpu"},
        [("Data epoch = every batch produced and moved to the device (no model); kd epoch = the engine's train() "
          "with a kd objective. Peak memory = PSS of the process and its DataLoader workers, sampled every 50 ms",
          ["row", "s/epoch", "load s", "uint8 pixels MB", "peak PSS MB"], rows)],
        {"rows": results},
        notes=["In memory, memory grows with the pixel bytes (images x 3 x size^2: 10,000 images at 224px are "
               "1,435 MB of uint8, 5,742 MB as float32); streamed, it stays at the models' working set plus "
               "workers x prefetch x batch decoded images, whatever the set's size.",
               "'load s' is decoding into memory (in-memory rows) or building the file list (streamed rows)."],
    )


# --- the parent: rounds of fresh processes ----------------------------------------------------------------


def run_method(args: argparse.Namespace, method: Method, engine_root: Path | None = None) -> dict[str, Any]:
    """One method in a fresh process; `engine_root` puts another checkout's `core` first on its path."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if engine_root is not None:  # the repo root after it, so common.py does not put this checkout first
        env["PYTHONPATH"] = os.pathsep.join([str(engine_root), str(common.REPO_ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--child", method.name, "--threads", str(args.threads),
               "--epochs", str(args.epochs), "--shots", str(args.shots), "--test-size", str(args.test_size),
               "--batch-size", str(args.batch_size)] + ([] if args.checkpoints else ["--no-checkpoints"])
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=common.REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{method.name} failed:\n{result.stderr[-4000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    expected = Path(engine_root or common.REPO_ROOT).resolve()
    if Path(measured["engine"]) != expected:  # a before/after run that timed one engine twice would say nothing
        raise SystemExit(f"{method.name} ran the engine in {measured['engine']}, not {expected}")
    return measured


def against(args: argparse.Namespace) -> None:
    """This engine vs the one at `args.against`, same child code and settings, alternating which runs first.

    The old engine is checked out into a temporary git worktree; each round runs both sides
    of every compared row back to back, so the per-round ratio new/old is robust to load.
    """
    old_root = Path(tempfile.mkdtemp(prefix="engine-old-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(old_root), args.against], cwd=common.REPO_ROOT,
                   check=True, capture_output=True)
    try:
        names = args.methods or ["e2kd (Grad-CAM), cached maps", "kd"]
        rounds: list[dict[str, dict[str, float]]] = []
        for round_index in range(args.rounds):
            result: dict[str, dict[str, float]] = {}
            for name in names:
                sides = [("after", None), ("before", old_root)]
                for side, root in sides if round_index % 2 == 0 else sides[::-1]:
                    measured = run_method(args, BY_NAME[name], root)
                    result.setdefault(name, {}).update({side: measured["epoch_seconds"],
                                                        f"{side}_cpu": measured["epoch_cpu_seconds"]})
                common.log.info("round %d/%d %-32s after %.2f s (%.2f s CPU), before %.2f s (%.2f s CPU)",
                                round_index + 1, args.rounds, name, result[name]["after"], result[name]["after_cpu"],
                                result[name]["before"], result[name]["before_cpu"])
            rounds.append(result)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_root)], cwd=common.REPO_ROOT, check=False)
    settings = {"before": args.against, "train_images": 10 * args.shots,
                "steps_per_epoch": math.ceil(10 * args.shots / args.batch_size), "batch_size": args.batch_size,
                "timed_epochs_per_process": args.epochs, "rounds": args.rounds, "torch_threads": args.threads,
                "engine_checkpoints": args.checkpoints}
    common.write_results(
        "engine_before_after" if not args.quick else "engine_before_after_quick",
        "Engine speed after the engine restructuring vs before (same child code, old engine in a git worktree)",
        settings,
        [("Seconds per epoch, wall and CPU (median over rounds), and the per-round ratio after/before (median, spread)",
          ["method", "before s", "after s", "after / before", "spread", "before CPU s", "after CPU s",
           "CPU after / before", "CPU spread", "<= 1.05 (wall, CPU)"],
          [before_after_row(name, rounds) for name in names])],
        {"rounds": rounds},
        notes=["Each side runs in a fresh process; the side that runs first alternates between rounds.",
               "An epoch is timed from the end of the previous one to the engine's epoch-end report, so it "
               "includes the held-out accuracy and the checkpoint; CPU seconds are the process's, all threads."],
    )


def before_after_row(name: str, rounds: list[dict[str, dict[str, float]]]) -> list[str]:
    """One row of the before/after table: medians of both sides and of the per-round ratios, wall and CPU."""
    row, verdicts = [name], []
    for suffix in ("", "_cpu"):
        before = [r[name][f"before{suffix}"] for r in rounds]
        after = [r[name][f"after{suffix}"] for r in rounds]
        ratios = [a / b for a, b in zip(after, before)]
        row += [f"{common.median(before):.2f}", f"{common.median(after):.2f}", f"{common.median(ratios):.3f}",
                f"{common.spread(ratios):.3f}"]
        verdicts.append("met" if common.median(ratios) <= 1.05 else "MISSED")
    return [*row, ", ".join(verdicts)]


def profile(args: argparse.Namespace) -> None:
    """torch.profiler over the timed epochs of one method, in this process: the top entries by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    common.set_threads(args.threads)
    method = BY_NAME.get(SHORT.get(args.profile, args.profile))
    if method is None:
        raise SystemExit(f"unknown method '{args.profile}'; known: {', '.join(SHORT)} or a full row name")
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = (bare_epochs if method.bare else engine_epochs)(args, method)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
    print(f"profile of '{method.name}' ({args.epochs + 1} epochs, {seconds}):\n{table}")
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    slug = args.profile.replace(" ", "_").replace(",", "").replace(":", "").replace("(", "").replace(")", "")
    out = common.RESULTS_DIR / f"engine_profile_{slug}.txt"
    out.write_text(f"python bench/engine_speed.py --profile {args.profile} --epochs {args.epochs} "
                   f"--threads {args.threads}\nepoch seconds (with profiler overhead): {seconds}\n\n{table}\n")
    print(f"wrote {out.relative_to(common.REPO_ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 shots/class, 1 round, 1 thread")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per process (after 1 warm-up epoch)")
    parser.add_argument("--shots", type=int, default=200, help="training images per class (10 classes)")
    parser.add_argument("--test-size", type=int, default=200, help="held-out images scored after each epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="subset of row names (default: all)")
    parser.add_argument("--profile", default=None, help=f"profile one method: {', '.join(SHORT)}")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--no-checkpoints", dest="checkpoints", action="store_false",
                        help="engine rows without the per-epoch checkpoint a job writes")
    parser.add_argument("--against", default=None, metavar="COMMIT",
                        help="compare this engine with the one at COMMIT (e2kd and kd rows, or --methods)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-path", action="store_true", help="the data-path table (needs the CIFAR JPEG tree)")
    parser.add_argument("--data-images", type=int, default=10_000, help="CIFAR images of the 32px data-path rows")
    parser.add_argument("--data-images-224", type=int, default=2000, help="images of the 224px data-epoch rows")
    parser.add_argument("--train-images-224", type=int, default=64, help="images of the 224px kd-epoch rows")
    parser.add_argument("--data-workers", type=int, default=2, help="DataLoader worker processes when streaming")
    parser.add_argument("--data-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.data_child:
        data_child(args)
        return
    if args.quick:
        args.rounds, args.epochs, args.shots, args.test_size, args.threads = 1, 1, 20, 50, 1
    if args.child:
        child(args)
        return
    common.setup_logging()
    if args.data_path:
        data_path_table(args)
        return
    if args.profile:
        profile(args)
        return
    if args.against:
        against(args)
        return

    methods = [BY_NAME[name] for name in args.methods] if args.methods else METHODS
    rounds: list[dict[str, dict[str, Any]]] = []
    for round_index in range(args.rounds):
        results = {}
        for method in methods:
            results[method.name] = run_method(args, method)
            common.log.info("round %d/%d %-40s %.2f s/epoch, peak RSS %.0f MB", round_index + 1, args.rounds,
                            method.name, results[method.name]["epoch_seconds"], results[method.name]["peak_rss_mb"])
        rounds.append(results)

    def per_round(name: str, key: str) -> list[float]:
        return [r[name][key] for r in rounds]

    kd_ratio = lambda name: [r[name]["epoch_seconds"] / r["kd"]["epoch_seconds"] for r in rounds]  # noqa: E731
    rows = []
    for method in methods:
        seconds = per_round(method.name, "epoch_seconds")
        rows.append([
            method.name,
            f"{common.median(seconds):.2f} ± {common.spread(seconds):.2f}",
            f"{common.median(kd_ratio(method.name)):.2f}" if "kd" in rounds[0] else "",
            f"{common.median(per_round(method.name, 'peak_rss_mb')):.0f}",
        ])
    ratio_rows, ratio_data = [], {}
    for numerator, denominator, target in RATIOS:
        if numerator not in rounds[0] or denominator not in rounds[0]:
            continue
        ratios = [r[numerator]["epoch_seconds"] / r[denominator]["epoch_seconds"] for r in rounds]
        value = common.median(ratios)
        ratio_data[f"{numerator} / {denominator}"] = ratios
        verdict = "" if target is None else ("met" if value <= target else "MISSED")
        ratio_rows.append([f"{numerator} / {denominator}", f"{value:.2f}", f"{common.spread(ratios):.2f}",
                           "" if target is None else f"<= {target}", verdict])
    steps = math.ceil(10 * args.shots / args.batch_size)
    settings = {
        "teacher": TEACHER_ARCH, "student": STUDENT_ARCH, "train_images": 10 * args.shots,
        "batch_size": args.batch_size, "steps_per_epoch": steps, "test_images": args.test_size,
        "timed_epochs_per_process": args.epochs, "warmup_epochs": 1, "rounds": args.rounds,
        "torch_threads": args.threads, "device": "cpu", "engine_checkpoints": args.checkpoints,
    }
    common.write_results(
        "engine_speed" if not args.quick else "engine_speed_quick",
        "Engine speed: seconds per distillation epoch (CIFAR-10 32x32)",
        settings,
        [
            ("Per-epoch seconds (median ± spread over rounds), ratio to kd (median of per-round ratios), peak RSS",
             ["method", "s/epoch", "x kd", "peak RSS MB"], rows),
            ("Ratios, each taken within a round (median, spread over rounds)",
             ["ratio", "median", "spread", "target", "verdict"], ratio_rows),
        ],
        {"rounds": rounds, "ratios": ratio_data},
        notes=[
            "Each method runs in a fresh process: 1 warm-up epoch (fills the teacher-map cache), then the timed epochs.",
            "Peak RSS is the process's high-water mark during training (reset after loading data and models).",
            "Epoch seconds include the per-epoch held-out accuracy on the test images, in the engine and the bare loop.",
            "Engine rows write the per-epoch checkpoint a job writes (model, optimizer, map cache; off with "
            "--no-checkpoints); the bare loop writes none.",
        ],
    )


if __name__ == "__main__":
    main()
