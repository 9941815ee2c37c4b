"""What signal providers share: the batch they work on, the one teacher forward, the provider interface.

A provider computes one or more named teacher signals (core.terms.base names them) for a
batch. Several providers read the same teacher forward on x; each says in `plan` whether
it needs that forward at all and whether it needs its graph (input grad: explanation maps,
the oracle's grad_x), so the forward runs once per batch, with a graph only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.explain import FeatureTap

# What a provider needs of the teacher forward on one batch, in increasing cost.
NO_PASS, PASS, GRAPH = 0, 1, 2


@dataclass
class Batch:
    """One training step's inputs: tensors on the device, the sample indices, where the step sits."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # training-sample indices, on the CPU (cache bookkeeping never syncs a GPU)
    device_index: torch.Tensor  # the same indices on the device
    step: int  # global step within the stage, 0-based
    steps_per_epoch: int
    # the loss's share of the global batch on this rank (core.distributed.shard); 1 in one process, 0 for padding
    weight: float = 1.0

    @property
    def epoch(self) -> float:
        """Epochs done at the end of this step, fractional: what warm-ups read."""
        return (self.step + 1) / self.steps_per_epoch


@dataclass
class TeacherPass:
    """The teacher's forward on x: with `graph`, `inputs` required grad and `logits`/`features` keep the graph."""

    model: nn.Module  # the teacher that ran, for explainers that read more than the gradient of its logits
    inputs: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor  # the explained layer's output
    classes: torch.Tensor  # teacher top-1 on x, no graph: the class every map explains
    graph: bool
    mapped: torch.Tensor | None = None  # what the explainer reads when not `features` (`Explainer.layer`'s output)

    @property
    def explained(self) -> torch.Tensor:
        """The tensor the explainer's maps are computed from."""
        return self.mapped if self.mapped is not None else self.features


class TeacherForward:
    """Runs the frozen teacher on a batch, tapping its explained layer (a forward hook; the model stays as is)."""

    def __init__(self, teacher: nn.Module, layer: nn.Module, map_source: nn.Module | None = None) -> None:
        self.teacher = teacher
        self.tap = FeatureTap(layer)
        # the module the explainer reads when not the explained layer (`core.explain.map_source`)
        self.map_tap = FeatureTap(map_source) if map_source is not None else None

    def _mapped(self) -> torch.Tensor | None:
        return self.map_tap.take() if self.map_tap is not None else None

    def run(self, x: torch.Tensor, graph: bool) -> TeacherPass:
        if graph:
            with torch.enable_grad():
                inputs = x.detach().requires_grad_()
                logits = self.teacher(inputs)
                features = self.tap.take()
            return TeacherPass(self.teacher, inputs, logits, features, logits.detach().argmax(dim=1), True,
                               self._mapped())
        with torch.no_grad():
            logits = self.teacher(x)
            features = self.tap.take()
        return TeacherPass(self.teacher, x, logits, features, logits.argmax(dim=1), False, self._mapped())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits alone, no graph (e.g. on the oracle input x*)."""
        with torch.no_grad():
            logits = self.teacher(x)
            self.tap.take()
            self._mapped()
        return logits

    def close(self) -> None:
        self.tap.remove()
        if self.map_tap is not None:
            self.map_tap.remove()


class Provider:
    """Computes the signals named in `provides`; stateless unless it overrides the state methods."""

    provides: tuple[str, ...] = ()

    def plan(self, batch: Batch) -> int:
        """NO_PASS, PASS or GRAPH: what this provider needs of the teacher forward on `batch`."""
        return PASS

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        pass

    def merge_ranks(self) -> None:
        """Share state filled per rank with the other ranks (a collective; nothing for a stateless provider)."""
