"""One training loop for every stage: the teacher (CE only), the explanation autoencoder, the student.

What differs between stages is the `Objective` (core.train.objective): it turns a batch into a
loss. `train` only loops, steps, checkpoints and reports progress; `epoch_batches` is the
one piece that knows where batches come from: an image set (uint8 in memory, or streamed
from files by a DataLoader; see core.data.images), one batch at a time to the device.

Each epoch's order is drawn from (seed, epoch) alone and every epoch end writes a
checkpoint, so an interrupted stage resumes bit-identically: model, optimizer, scheduler,
objective state (term parameters such as the FitNet regressor, signal caches such as the
teacher-map cache) and the RNG streams are all restored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import distributed
from core.distributed.shard import rank_share
from core.train.callbacks import NullCallbacks, Progress, RunCallbacks
from core.train.checkpoint import CheckpointFile, restore_rng_state, rng_state
from core.data import ImageSet, TensorImages
from core.errors import JobCancelled
from core.train.objective import DistillationObjective, Objective, StepOutput
from core.train.precision import Precision
from core.train.schedule import make_scheduler
from core.signals import Batch
from core.spec import TrainingSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    """How one stage optimises: the spec's `training` block, or the explainer's own settings."""

    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # cosine | none | multistep | step (core.train.schedule)
    milestones: tuple[int, ...] = ()  # multistep: epochs after which the rate is multiplied by gamma
    step_size: int | None = None  # step: epochs between decays
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up, multiplying any schedule
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (core.train.precision)
    # One multi-tensor kernel per update step instead of a Python loop over parameters; the same
    # arithmetic per element, so the same weights bit for bit (False: torch's per-tensor loop on the CPU).
    foreach: bool = True

    @classmethod
    def from_training(cls, training: TrainingSpec, epochs: int) -> OptimConfig:
        return cls(
            epochs=epochs,
            batch_size=training.batch_size,
            optimizer=training.optimizer,
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
            scheduler=training.scheduler,
            milestones=tuple(training.milestones),
            step_size=training.step_size,
            gamma=training.gamma,
            warmup_epochs=training.warmup_epochs,
            seed=training.seed,
            precision=training.precision,
        )


def make_optimizer(parameters: list[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    foreach = config.foreach
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               foreach=foreach)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay, foreach=foreach)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, foreach=foreach)
    raise ValueError(f"unknown optimizer '{config.optimizer}'")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch's order and augmentation: a function of (seed, epoch) only, so resuming needs no state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def image_set(train_x: torch.Tensor | ImageSet, train_y: torch.Tensor | None) -> ImageSet:
    """The batches' source: an image set (in memory or streamed), or normalised tensors given directly."""
    if isinstance(train_x, torch.Tensor):
        if train_y is None:
            raise ValueError("train_y is needed with a tensor of training images")
        return TensorImages(train_x, train_y)
    return train_x


def epoch_batches(
    images: ImageSet, config: OptimConfig, epoch: int, device: torch.device, augment: bool | str = False
) -> Iterator[Batch]:
    """One epoch's batches, in the order (seed, epoch) draws: the loop's only contact with the data.

    The order and the augmentation both read one generator, in that order, so a resumed
    epoch is the same epoch. Where batches come from (memory or files) is the image set's business.
    On several ranks each takes its slice of every global batch (core.distributed.shard).
    """
    generator = epoch_generator(config.seed, epoch)
    steps = math.ceil(len(images) / config.batch_size)
    order = torch.randperm(len(images), generator=generator)
    world = distributed.current()
    weights: list[float] = [1.0] * steps
    batch_size = config.batch_size
    if world.active:
        share = rank_share(order, config.batch_size, world.rank, world.size)
        order, batch_size, weights = share.order, share.per_rank_batch, share.weights
    batches = images.batches(order, batch_size, device, augment, generator)
    for step, (x, y, index) in enumerate(batches):
        yield Batch(x, y, index, index.to(device, non_blocking=True), epoch * steps + step, steps, weights[step])


@dataclass
class _EpochStats:
    """Running sums of one epoch, kept on the device (reading them forces a sync, so only at the end)."""

    device: torch.device
    loss_sum: torch.Tensor | None = None
    term_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    term_counts: dict[str, int] = field(default_factory=dict)
    correct: torch.Tensor | None = None
    classifier: bool = False

    def add(self, output: StepOutput, batch: Batch) -> None:
        if batch.weight == 0:
            return  # a rank's padding step (core.distributed.shard): no sample of its own
        size = len(batch.index)
        loss = output.loss.detach() * size
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        for name, value in output.values.items():
            self.term_sums[name] = self.term_sums.get(name, 0) + value * size
            self.term_counts[name] = self.term_counts.get(name, 0) + size
        self.classifier = output.logits is not None
        if output.logits is not None:
            hits = (output.logits.detach().argmax(dim=1) == batch.y).sum()
            self.correct = hits if self.correct is None else self.correct + hits

    def sum_ranks(self) -> None:
        """On several ranks, the sums over all ranks' samples (a collective), so the history is the global batch's."""
        if not distributed.current().active:
            return
        names = sorted(self.term_sums)
        values = [float(self.loss_sum or 0.0), float(self.correct or 0)]
        values += [float(self.term_sums[name]) for name in names] + [float(self.term_counts[name]) for name in names]
        summed = distributed.sum_ranks(values)
        self.loss_sum = torch.tensor(summed[0])
        self.correct = torch.tensor(summed[1]) if self.correct is not None else None
        for i, name in enumerate(names):
            self.term_sums[name] = torch.tensor(summed[2 + i])
            self.term_counts[name] = int(summed[2 + len(names) + i])

    def entry(self, epoch: int, samples: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(self.loss_sum) / samples if self.loss_sum is not None else 0.0,
            "losses": {name: float(total) / self.term_counts[name] for name, total in self.term_sums.items()},
        }
        if self.classifier and self.correct is not None:
            entry["train_accuracy"] = int(self.correct) / samples
        return entry


class _Stage:
    """The state of one `train` call: model, objective, optimizer, schedule, checkpoint, progress."""

    def __init__(self, model: nn.Module, objective: Objective, config: OptimConfig, samples: int, stage: str,
                 device: torch.device, checkpoint_path: Path | None, callbacks: RunCallbacks,
                 span: tuple[float, float]) -> None:
        self.model, self.objective, self.config, self.samples = model, objective, config, samples
        self.stage, self.device, self.callbacks, self.span = stage, device, callbacks, span
        self.checkpoint = CheckpointFile(checkpoint_path) if checkpoint_path is not None else None
        self.amp = Precision(config.precision, device)
        self.models = [model.to(device), *objective.frozen_models()]
        for module in self.models:
            self.amp.prepare_model(module)
        self.world = distributed.current()
        self.optimizer = make_optimizer(list(model.parameters()) + objective.extra_parameters(), config)
        self.steps = math.ceil(samples / config.batch_size)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        # Reading a loss value forces a GPU sync; on the CPU it is free, on a GPU report it now and then.
        self.sync_every = 1 if device.type == "cpu" else 25

    def release(self) -> None:
        """The models back in the default layout (Precision.release_model), however the stage ended."""
        distributed.unwrap(self.model, self.objective)
        for module in self.models:
            self.amp.release_model(module)

    def wrap(self) -> None:
        """On several ranks, after the restore: the trained model in DDP (core.distributed.ranks)."""
        distributed.wrap(self.model, self.objective, self.device)

    def restore(self) -> None:
        """Continue after the checkpoint's last finished epoch, if there is a checkpoint."""
        if self.checkpoint is None or (state := self.checkpoint.load()) is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.objective.load_state_dict(state["objective"])
        self.amp.load_state_dict(state.get("grad_scaler"))
        self.history, self.start_epoch = list(state["history"]), int(state["epoch"])
        restore_rng_state(state["rng"])
        log.info("%s: resuming after epoch %d of %d from %s", self.stage, self.start_epoch, self.config.epochs,
                 self.checkpoint.path)

    def save(self, epoch: int) -> None:
        if self.checkpoint is None or not self.world.is_main:
            return  # on several ranks rank 0 writes the checkpoint: every rank holds the same state
        self.checkpoint.save({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "objective": self.objective.state_dict(),
            "grad_scaler": self.amp.state_dict(),
            "epoch": epoch + 1,
            "history": self.history,
            "rng": rng_state(),
        })

    def fraction(self, done_steps: int) -> float:
        return self.span[0] + (self.span[1] - self.span[0]) * done_steps / max(1, self.config.epochs * self.steps)

    def report(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Progress after `step` steps of the 1-based `epoch`."""
        done = (epoch - 1) * self.steps + step
        self.callbacks.on_progress(Progress(self.stage, epoch, self.config.epochs, step, self.steps,
                                            self.fraction(done), dict(metrics)))

    def step(self, batch: Batch) -> StepOutput:
        """Forward (under the precision's autocast), backward, optimiser and schedule step."""
        batch.x = self.amp.prepare_input(batch.x)
        with self.amp.autocast():
            output = self.objective.step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = output.loss if batch.weight == 1 else output.loss * batch.weight
        self.amp.step(loss, self.optimizer, after_backward=self._average_extras)
        if self.scheduler is not None:
            self.scheduler.step()
        return output

    def _average_extras(self) -> None:
        """On several ranks: the objective's own trainable parameters (not in DDP) get the ranks' mean gradient."""
        if self.world.active:
            distributed.average_gradients(self.objective.extra_parameters())

    def close_epoch(self, epoch: int, stats: _EpochStats, started: float) -> None:
        stats.sum_ranks()
        distributed.merge_objective(self.objective)
        entry = stats.entry(epoch, self.samples)
        if self.world.is_main:  # held-out numbers go to the history, which rank 0 keeps
            entry.update(self.objective.held_out())
        entry["lr"] = float(self.optimizer.param_groups[0]["lr"])
        entry["seconds"] = time.perf_counter() - started
        self.history.append(entry)
        self.save(epoch)
        metrics = {"loss": entry["loss"], **{f"loss_{k}": v for k, v in entry["losses"].items()}}
        metrics.update({k: v for k, v in entry.items() if k.endswith("accuracy") or k.startswith("test_")})
        self.report(epoch + 1, self.steps, metrics)
        log.debug("%s epoch %d/%d: %s (%.1fs)", self.stage, epoch + 1, self.config.epochs,  # hosts show epochs
                  ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), entry["seconds"])


def train(
    model: nn.Module,
    objective: Objective,
    train_x: torch.Tensor | ImageSet,
    train_y: torch.Tensor | None,
    config: OptimConfig,
    *,
    stage: str,
    device: torch.device,
    checkpoint_path: Path | None = None,
    callbacks: RunCallbacks | None = None,
    augment: bool | str = False,
    span: tuple[float, float] = (0.0, 1.0),
    evaluate_start: bool = False,
) -> list[dict[str, Any]]:
    """Train `model` on `objective` for `config.epochs`; returns the history (one dict per epoch).

    `span` is the part of the whole run's progress this stage covers. If `checkpoint_path`
    holds a checkpoint, training continues after its last finished epoch. Between steps the
    callbacks may cancel: JobCancelled is raised and the last epoch's checkpoint stays.
    With `evaluate_start`, the history opens with an epoch-0 entry: the objective's held-out numbers
    before the first step (a resumed stage keeps the one its checkpoint holds).
    """
    images = image_set(train_x, train_y)
    run = _Stage(model, objective, config, len(images), stage, device, checkpoint_path,
                 callbacks or NullCallbacks(), span)
    try:
        run.restore()
        if evaluate_start and run.start_epoch == 0:  # held-out numbers: rank 0's history, as at epoch ends
            run.history.append({"epoch": 0, "losses": {}, **(run.objective.held_out() if run.world.is_main else {})})
        run.wrap()
        run.callbacks.on_progress(Progress(stage, run.start_epoch, config.epochs, 0, run.steps,
                                           run.fraction(run.start_epoch * run.steps)))
        for epoch in range(run.start_epoch, config.epochs):
            _train_epoch(run, images, epoch, augment)
    finally:
        run.release()
    return run.history


def _train_epoch(run: _Stage, images: ImageSet, epoch: int, augment: bool | str) -> None:
    """One epoch of `train`: cancellation is checked before every step, progress reported after it."""
    started, stats, metrics = time.perf_counter(), _EpochStats(run.device), {}
    run.model.train()
    for batch in epoch_batches(images, run.config, epoch, run.device, augment):
        step = batch.step - epoch * run.steps
        if distributed.main_decides(run.callbacks.should_cancel()):
            raise JobCancelled(f"{run.stage} cancelled at epoch {epoch + 1}, step {step + 1}")
        output = run.step(batch)
        stats.add(output, batch)
        if step % run.sync_every == 0 or step == run.steps - 1:
            metrics = {"loss": float(output.loss.detach())}
        run.report(epoch + 1, step + 1, metrics)
    run.close_epoch(epoch, stats, started)


__all__ = ["DistillationObjective", "Objective", "OptimConfig", "StepOutput", "epoch_batches", "train"]
