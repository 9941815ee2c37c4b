"""The explanation target: teacher maps computed live, cached per training sample, or predicted by an autoencoder.

Every provider here gives `target_maps` and `target_classes` (the teacher's top-1 on x,
the class both the target and the student's map explain).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.train.checkpoint import SIDE_REVISION
from core.explain import ForwardPass, explanation_maps
from core.signals.base import GRAPH, NO_PASS, PASS, Batch, Provider, TeacherPass
from core.terms.base import TARGET_CLASSES, TARGET_MAPS


class LiveTeacherMaps(Provider):
    """The teacher's maps from its forward on x (which keeps its graph for them), detached."""

    provides = (TARGET_MAPS, TARGET_CLASSES)

    def __init__(self, explainer: str) -> None:
        self.explainer = explainer

    def plan(self, batch: Batch) -> int:
        return GRAPH

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        assert teacher is not None and teacher.graph
        forward = ForwardPass(teacher.model, teacher.inputs, teacher.logits, teacher.explained)
        maps = explanation_maps(self.explainer, forward, teacher.classes)
        return {TARGET_MAPS: maps.detach(), TARGET_CLASSES: teacher.classes}


class MapCache:
    """Teacher maps and their target class, per training-sample index.

    Exact, not an approximation: used only when the teacher sees the same input every epoch
    (no augmentation, no oracle) and is frozen in eval mode. An entry keeps the value first
    computed, so a run's maps do not depend on when the cache filled.

    Its state carries a revision that changes only when entries are added, so a checkpoint
    stores it in a side file written once it is full (core.train.checkpoint), not at every epoch end.
    """

    def __init__(self, size: int) -> None:
        self.filled = torch.zeros(size, dtype=torch.bool)  # on the CPU: checking it never syncs a GPU
        self.maps: torch.Tensor | None = None
        self.classes: torch.Tensor | None = None
        self.revision = 0  # how many stores added entries: the content's version

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
        self.revision += 1

    def merge_ranks(self) -> None:
        """Every rank's cache becomes the union of all ranks' (a collective: every rank calls it at the same point).

        Each rank fills the entries of its own shard, so without this a rank would compute maps
        again for samples another rank already has, and rank 0's checkpoint would hold part of
        the cache. Where several ranks hold a sample the lowest rank's entry wins (all are the
        same teacher's map of the same input). Nothing moves when no rank added an entry since
        the last merge (after the first epoch of a run without augmentation).
        """
        from core.distributed.merge import merge_map_cache

        merge_map_cache(self)

    def state_dict(self) -> dict[str, Any]:
        """The cache's tensors as they are (no copy, like `nn.Module.state_dict`): saving an unchanged
        revision writes nothing, so it must not cost a device-to-host copy either."""
        state: dict[str, Any] = {"filled": self.filled, SIDE_REVISION: self.revision}
        if self.maps is not None and self.classes is not None:
            state.update(maps=self.maps, classes=self.classes)
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.filled = state["filled"].clone()
        if "maps" in state:
            self.maps, self.classes = state["maps"].to(device), state["classes"].to(device)
        self.revision = int(state.get(SIDE_REVISION, 0))


class CachedTeacherMaps(Provider):
    """Live teacher maps, computed once per training sample and then read from a `MapCache`.

    A batch whose samples are all cached needs no teacher forward for its maps (nor a graph).
    The cache is this provider's state, checkpointed with the objective.
    """

    provides = (TARGET_MAPS, TARGET_CLASSES)

    def __init__(self, explainer: str, num_samples: int) -> None:
        self.live = LiveTeacherMaps(explainer)
        self.cache = MapCache(num_samples)
        self._hit: tuple[int, tuple[torch.Tensor, torch.Tensor] | None] | None = None

    def _lookup(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._hit is None or self._hit[0] != batch.step:
            self._hit = (batch.step, self.cache.lookup(batch.index, batch.device_index))
        return self._hit[1]

    def plan(self, batch: Batch) -> int:
        return NO_PASS if self._lookup(batch) is not None else GRAPH

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        cached, self._hit = self._lookup(batch), None
        if cached is not None:
            return {TARGET_MAPS: cached[0], TARGET_CLASSES: cached[1]}
        signals = self.live.compute(batch, teacher)
        self.cache.store(batch.index, batch.device_index, signals[TARGET_MAPS], signals[TARGET_CLASSES])
        return signals

    def merge_ranks(self) -> None:
        self.cache.merge_ranks()

    def state_dict(self) -> dict[str, Any]:
        return self.cache.state_dict()

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if state:
            self.cache.load_state_dict(state, device)


class AutoencoderMaps(Provider):
    """XDistillation: the fitted explanation autoencoder's prediction of the teacher's map on x.

    The class explained is still the teacher's top-1, from the shared forward (no graph).
    """

    provides = (TARGET_MAPS, TARGET_CLASSES)

    def __init__(self, autoencoder: nn.Module) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)

    def plan(self, batch: Batch) -> int:
        return PASS

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        assert teacher is not None
        with torch.no_grad():
            maps = self.autoencoder(batch.x)
        return {TARGET_MAPS: maps, TARGET_CLASSES: teacher.classes}
