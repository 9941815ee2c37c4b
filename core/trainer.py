"""One training loop for every stage: the teacher (CE only), the explainer autoencoder, the student.

What differs between stages is the `Objective`: it turns a batch into a loss. The
distillation objective computes the shared per-batch context once (student logits
and features, teacher logits and features, teacher maps from the cache or from the
teacher's own forward, student maps on guided steps) and lets each term read it.

The loop takes batches from an image set (uint8 in memory, or streamed from files by a
DataLoader; see core.data.images), one at a time to the device, draws each epoch's order from
(seed, epoch) alone, and checkpoints at every epoch end, so an interrupted stage
resumes bit-identically: model, optimizer, scheduler, objective state (FitNet
regressor), RNG streams and the teacher-map cache are all restored.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from core.callbacks import NullCallbacks, Progress, RunCallbacks
from core.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from core.data import DataBundle, ImageSet, TensorImages
from core.errors import JobCancelled
from core.evaluate import predict_logits
from core.explain import FeatureTap, explanation_maps
from core.models import explained_layer
from core.precision import Precision
from core.spec import ExplanationSpec, TrainingSpec
from core.terms import BatchContext, WeightedSum, oracle_inputs

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
    scheduler: str = "cosine"
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (core.precision)

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
            seed=training.seed,
            precision=training.precision,
        )


@dataclass
class StepOutput:
    loss: torch.Tensor  # the weighted total, with graph
    values: dict[str, torch.Tensor]  # each active term's unweighted value, detached
    logits: torch.Tensor | None = None  # for the train accuracy; None when the model is no classifier


class MapCache:
    """Teacher explanation maps and their target class (teacher top-1), per training-sample index.

    Exact, not an approximation: it is only used when the teacher sees the same input every
    epoch (no augmentation, no oracle) and the teacher is frozen in eval mode. An entry keeps
    the value first computed, so a run's maps do not depend on when the cache filled.
    """

    def __init__(self, size: int) -> None:
        self.filled = torch.zeros(size, dtype=torch.bool)  # on the CPU: checking it never syncs a GPU
        self.maps: torch.Tensor | None = None
        self.classes: torch.Tensor | None = None
        self.dirty = False

    def lookup(self, index: torch.Tensor, device_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.maps is None or self.classes is None or not bool(self.filled[index].all()):
            return None
        return self.maps[device_index], self.classes[device_index]

    def store(self, index: torch.Tensor, device_index: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor) -> None:
        if self.maps is None or self.classes is None:
            self.maps = maps.new_zeros((len(self.filled), *maps.shape[1:]))
            self.classes = classes.new_zeros(len(self.filled))
        new = ~self.filled[index]
        if not bool(new.any()):
            return
        new_device = new.to(device_index.device)
        self.maps[device_index[new_device]] = maps[new_device]
        self.classes[device_index[new_device]] = classes[new_device]
        self.filled[index[new]] = True
        self.dirty = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"filled": self.filled.clone()}
        if self.maps is not None and self.classes is not None:
            state.update(maps=self.maps.cpu(), classes=self.classes.cpu())
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.filled = state["filled"].clone()
        if "maps" in state:
            self.maps, self.classes = state["maps"].to(device), state["classes"].to(device)
        self.dirty = False


class Objective(Protocol):
    """Turns one batch into a loss; the loop knows nothing else about the stage."""

    map_cache: MapCache | None

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters beyond the model's (the FitNet regressor), optimised with it."""

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, device_index: torch.Tensor, global_step: int
    ) -> StepOutput: ...

    def held_out(self) -> dict[str, float]:
        """Cheap held-out numbers for the history (e.g. test accuracy), computed at each epoch end."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class _TeacherView:
    logits: torch.Tensor | None = None  # on x~ (x, or x* with the oracle)
    features: torch.Tensor | None = None  # on x
    maps: torch.Tensor | None = None
    classes: torch.Tensor | None = None  # teacher top-1 on x: the class both maps explain


@dataclass
class DistillationObjective:
    """The loss of DESIGN.md's engine for a student (and, with `teacher=None`, for teacher training).

    Choices worth knowing:
    - The oracle input x* feeds the teacher's soft targets (KD) only. Its features (AT, FitNet)
      and its explanation maps are taken on x, the student's input, from the same forward that
      gives grad_x CE for x*; explaining x* would ask the student to explain an image it never sees.
    - Teacher maps are cached per sample only when the input is the same every epoch (no
      augmentation) and the oracle is off; see `MapCache`.
    - With `explanation.target == "autoencoder"` the target maps come from the fitted
      XDistillation autoencoder on x; the class explained is still the teacher's top-1.
    - The student's map comes from its training forward (train mode, BatchNorm on batch
      statistics), so it costs no extra forward; the evaluation explains it in eval mode.
    """

    student: nn.Module  # the network being trained: the student, or the teacher in its own stage (CE only)
    terms: WeightedSum
    data: DataBundle
    device: torch.device
    teacher: nn.Module | None = None
    explanation: ExplanationSpec | None = None
    oracle_gamma: float | None = None
    autoencoder: nn.Module | None = None
    cache_maps: bool = False
    map_cache: MapCache | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        needs = self.terms.needs
        self._wants_student_features = "student_features" in needs
        self._wants_teacher_features = "teacher_features" in needs
        self._explaining = "maps" in needs
        if self._explaining and self.explanation is None:
            raise ValueError("an explanation term needs the explanation settings")
        if needs and self.teacher is None:
            raise ValueError(f"terms {sorted(needs)} need a teacher")
        if self.explanation is not None and self.explanation.target == "autoencoder" and self.autoencoder is None:
            raise ValueError("explanation.target 'autoencoder' needs the fitted autoencoder")
        self._uses_teacher = self.teacher is not None and (bool(needs) or self.oracle_gamma is not None)
        self.student_tap = FeatureTap(explained_layer(self.student))
        self.teacher_tap = FeatureTap(explained_layer(self.teacher)) if self.teacher is not None else None
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
        if self.autoencoder is not None:
            self.autoencoder.eval().requires_grad_(False)
        explaining_teacher = self._explaining and self.explanation is not None and self.explanation.target == "teacher"
        if self.cache_maps and explaining_teacher and self.oracle_gamma is None:
            self.map_cache = MapCache(len(self.data.train))

    def close(self) -> None:
        """Remove the forward hooks, leaving the models as they were."""
        self.student_tap.remove()
        if self.teacher_tap is not None:
            self.teacher_tap.remove()

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.terms.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"terms": self.terms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.terms.load_state_dict(state["terms"])

    def held_out(self) -> dict[str, float]:
        logits = predict_logits(self.student, self.data.test_x, self.device)
        return {"test_accuracy": float((logits.argmax(dim=1) == self.data.test_y).float().mean())}

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, device_index: torch.Tensor, global_step: int
    ) -> StepOutput:
        explanation = self.explanation
        guided = self._explaining and explanation is not None and global_step % explanation.every == 0
        teacher = self._teacher_view(x, y, index, device_index, guided) if self._uses_teacher else _TeacherView()

        input_maps = guided and explanation is not None and explanation.explainer != "gradcam"
        student_inputs = x.detach().requires_grad_() if input_maps else x
        student_logits = self.student(student_inputs)
        student_features = self.student_tap.take()
        student_maps = None
        if guided and explanation is not None:
            assert teacher.classes is not None
            student_maps = explanation_maps(
                explanation.explainer, student_logits, student_features, student_inputs, teacher.classes, True
            )
        context = BatchContext(
            labels=y,
            student_logits=student_logits,
            student_features=student_features if self._wants_student_features else None,
            teacher_logits=teacher.logits,
            teacher_features=teacher.features,
            student_maps=student_maps,
            target_maps=teacher.maps if guided else None,
        )
        loss, values = self.terms(context)
        return StepOutput(loss, values, student_logits)

    def _teacher_view(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, device_index: torch.Tensor, guided: bool
    ) -> _TeacherView:
        """One teacher forward on x (with input grad only if maps or the oracle need it), plus one on x*."""
        assert self.teacher is not None and self.teacher_tap is not None
        explanation = self.explanation
        from_teacher = guided and explanation is not None and explanation.target == "teacher"
        cached = None
        if from_teacher and self.map_cache is not None:
            cached = self.map_cache.lookup(index, device_index)
        compute_maps = from_teacher and cached is None
        view = _TeacherView()
        if compute_maps or self.oracle_gamma is not None:
            with torch.enable_grad():
                inputs = x.detach().requires_grad_()
                logits = self.teacher(inputs)
                features = self.teacher_tap.take()
                view.classes = logits.detach().argmax(dim=1)
                if compute_maps and explanation is not None:
                    view.maps = explanation_maps(
                        explanation.explainer, logits, features, inputs, view.classes, False
                    ).detach()
                view.logits = logits.detach()
                if self.oracle_gamma is not None:
                    oracle_x = oracle_inputs(inputs, logits, y, self.oracle_gamma)
                    with torch.no_grad():
                        view.logits = self.teacher(oracle_x)
                        self.teacher_tap.take()
            view.features = features.detach()
        else:
            with torch.no_grad():
                view.logits = self.teacher(x)
                view.features = self.teacher_tap.take()
                view.classes = view.logits.argmax(dim=1)
        if cached is not None:
            view.maps, view.classes = cached
        elif compute_maps and self.map_cache is not None:
            assert view.maps is not None and view.classes is not None
            self.map_cache.store(index, device_index, view.maps, view.classes)
        if guided and self.autoencoder is not None:
            with torch.no_grad():
                view.maps = self.autoencoder(x)
        if not self._wants_teacher_features:
            view.features = None
        return view


def make_optimizer(parameters: list[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer '{config.optimizer}'")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch's order and augmentation: a function of (seed, epoch) only, so resuming needs no state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _image_set(train_x: torch.Tensor | ImageSet, train_y: torch.Tensor | None) -> ImageSet:
    """The batches' source: an image set (in memory or streamed), or normalised tensors given directly."""
    if isinstance(train_x, torch.Tensor):
        if train_y is None:
            raise ValueError("train_y is needed with a tensor of training images")
        return TensorImages(train_x, train_y)
    return train_x


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
    augment: bool = False,
    span: tuple[float, float] = (0.0, 1.0),
) -> list[dict[str, Any]]:
    """Train `model` on `objective` for `config.epochs`; returns the history (one dict per epoch).

    `span` is the part of the whole run's progress this stage covers. If `checkpoint_path`
    holds a checkpoint, training continues after its last finished epoch. Between steps the
    callbacks may cancel: JobCancelled is raised and the last epoch's checkpoint stays.
    """
    callbacks = callbacks or NullCallbacks()
    amp = Precision(config.precision, device)
    amp.prepare_model(model.to(device))
    images = _image_set(train_x, train_y)
    optimizer = make_optimizer(list(model.parameters()) + objective.extra_parameters(), config)
    samples = len(images)
    steps = math.ceil(samples / config.batch_size)
    scheduler = None
    if config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps))

    start_epoch, history = 0, []
    maps_path = checkpoint_path.with_name(checkpoint_path.stem + ".maps.pt") if checkpoint_path else None
    state = load_checkpoint(checkpoint_path) if checkpoint_path else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        objective.load_state_dict(state["objective"])
        amp.load_state_dict(state.get("grad_scaler"))
        history, start_epoch = list(state["history"]), int(state["epoch"])
        restore_rng_state(state["rng"])
        maps_state = load_checkpoint(maps_path) if maps_path else None
        if objective.map_cache is not None and maps_state is not None:
            objective.map_cache.load_state_dict(maps_state, device)
        log.info("%s: resuming after epoch %d of %d from %s", stage, start_epoch, config.epochs, checkpoint_path)

    total_steps = max(1, config.epochs * steps)

    def fraction(done_steps: int) -> float:
        return span[0] + (span[1] - span[0]) * done_steps / total_steps

    callbacks.on_progress(Progress(stage, start_epoch, config.epochs, 0, steps, fraction(start_epoch * steps)))
    # Reading a loss value forces a GPU sync; on the CPU it is free, on a GPU report it now and then.
    sync_every = 1 if device.type == "cpu" else 25
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        generator = epoch_generator(config.seed, epoch)
        order = torch.randperm(samples, generator=generator)
        loss_sum = torch.zeros((), device=device)
        term_sums: dict[str, torch.Tensor] = {}
        term_counts: dict[str, int] = {}
        correct = torch.zeros((), device=device, dtype=torch.long)
        step_metrics: dict[str, float] = {}
        classifier = False
        for step, (x, y, index) in enumerate(images.batches(order, config.batch_size, device, augment, generator)):
            if callbacks.should_cancel():
                raise JobCancelled(f"{stage} cancelled at epoch {epoch + 1}, step {step + 1}")
            device_index = index.to(device, non_blocking=True)
            with amp.autocast():
                output = objective.step(amp.prepare_input(x), y, index, device_index, epoch * steps + step)
            optimizer.zero_grad(set_to_none=True)
            amp.step(output.loss, optimizer)
            if scheduler is not None:
                scheduler.step()

            batch = len(index)
            loss_sum += output.loss.detach() * batch
            for name, value in output.values.items():
                term_sums[name] = term_sums.get(name, 0) + value * batch
                term_counts[name] = term_counts.get(name, 0) + batch
            classifier = output.logits is not None
            if output.logits is not None:
                correct += (output.logits.detach().argmax(dim=1) == y).sum()
            if step % sync_every == 0 or step == steps - 1:
                step_metrics = {"loss": float(output.loss.detach())}
            done = epoch * steps + step + 1
            callbacks.on_progress(
                Progress(stage, epoch + 1, config.epochs, step + 1, steps, fraction(done), dict(step_metrics))
            )

        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / samples,
            "losses": {name: float(total) / term_counts[name] for name, total in term_sums.items()},
        }
        if classifier:
            entry["train_accuracy"] = int(correct) / samples
        entry.update(objective.held_out())
        entry["lr"] = float(optimizer.param_groups[0]["lr"])
        entry["seconds"] = time.perf_counter() - started
        history.append(entry)

        if checkpoint_path is not None:
            if maps_path is not None and objective.map_cache is not None and objective.map_cache.dirty:
                save_checkpoint(maps_path, objective.map_cache.state_dict())
                objective.map_cache.dirty = False
            save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "objective": objective.state_dict(),
                    "grad_scaler": amp.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "rng": rng_state(),
                },
            )
        epoch_metrics = {"loss": entry["loss"], **{f"loss_{k}": v for k, v in entry["losses"].items()}}
        epoch_metrics.update({k: v for k, v in entry.items() if k.endswith("accuracy") or k.startswith("test_")})
        callbacks.on_progress(
            Progress(stage, epoch + 1, config.epochs, steps, steps, fraction((epoch + 1) * steps), epoch_metrics)
        )
        log.debug(  # hosts show epochs through their callbacks; this is for debugging only
            "%s epoch %d/%d: %s (%.1fs)",
            stage,
            epoch + 1,
            config.epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in epoch_metrics.items()),
            entry["seconds"],
        )
    return history
