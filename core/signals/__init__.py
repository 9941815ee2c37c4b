"""Teacher signals: what loss terms read of the teacher, each from a small provider with its own state.

`TeacherSignals` holds one provider per signal name and, for each batch, computes only
the signals the active terms ask for: the providers first say what they need of the
teacher's forward on x (nothing, the forward, or the forward with its graph), the forward
runs once accordingly, and each provider reads it. Provider state (the teacher-map cache)
is saved and restored through `state_dict`, with the rest of the objective.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.explain import map_source
from core.signals.base import GRAPH, NO_PASS, PASS, Batch, Provider, TeacherForward, TeacherPass
from core.signals.maps import AutoencoderMaps, CachedTeacherMaps, LiveTeacherMaps, MapCache
from core.signals.teacher import OracleTeacherLogits, TeacherFeatures, TeacherLogits
from core.terms.base import TARGET_MAPS, TEACHER_FEATURES, TEACHER_LOGITS
from core.terms.explanation import ExplanationSpec

__all__ = [
    "GRAPH", "NO_PASS", "PASS", "AutoencoderMaps", "Batch", "CachedTeacherMaps", "LiveTeacherMaps", "MapCache",
    "OracleTeacherLogits", "Provider", "TeacherFeatures", "TeacherForward", "TeacherLogits", "TeacherPass",
    "TeacherSignals", "build_signals",
]


class TeacherSignals:
    """The teacher-side providers of one objective, by the signal name each answers."""

    def __init__(self, forward: TeacherForward, providers: dict[str, Provider]) -> None:
        self.forward = forward
        self.providers = providers

    def provider(self, signal: str) -> Provider | None:
        return self.providers.get(signal)

    def compute(self, batch: Batch, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        """The wanted signals this object provides, for `batch`; one teacher forward at most."""
        active: list[Provider] = []
        for name, provider in self.providers.items():
            if name in wanted and provider not in active:
                active.append(provider)
        need = max((provider.plan(batch) for provider in active), default=NO_PASS)
        teacher = self.forward.run(batch.x, graph=need == GRAPH) if need > NO_PASS else None
        signals: dict[str, torch.Tensor] = {}
        for provider in active:
            signals.update(provider.compute(batch, teacher))
        return signals

    def state_dict(self) -> dict[str, Any]:
        return {name: provider.state_dict() for name, provider in self.providers.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        for name, provider in self.providers.items():
            if name in state:
                provider.load_state_dict(state[name], device)

    def merge_ranks(self) -> None:
        """Each provider's per-rank state shared by all ranks, at an epoch end (core.distributed)."""
        for provider in dict.fromkeys(self.providers[name] for name in sorted(self.providers)):
            provider.merge_ranks()

    def close(self) -> None:
        self.forward.close()


def _map_provider(
    explanation: ExplanationSpec, autoencoder: nn.Module | None, cache_size: int | None, oracle: bool
) -> Provider:
    """Autoencoder when the spec asks for it; else the teacher's maps, cached when the input never changes."""
    if explanation.target == "autoencoder":
        if autoencoder is None:
            raise ValueError("explanation.target 'autoencoder' needs the fitted autoencoder")
        return AutoencoderMaps(autoencoder)
    if cache_size is not None and not oracle:
        return CachedTeacherMaps(explanation.explainer, cache_size)
    return LiveTeacherMaps(explanation.explainer)


def build_signals(
    teacher: nn.Module,
    layer: nn.Module,
    *,
    explanation: ExplanationSpec | None = None,
    oracle_gamma: float | None = None,
    autoencoder: nn.Module | None = None,
    cache_size: int | None = None,
) -> TeacherSignals:
    """The providers a spec's settings call for.

    `cache_size` (the number of training samples) turns on the teacher-map cache; pass it
    only when the teacher sees the same input every epoch (no augmentation). The oracle
    turns it off as well (maps are computed from the same forward as x* anyway).
    """
    source = map_source(teacher, explanation.explainer) if explanation is not None else None
    forward = TeacherForward(teacher.eval().requires_grad_(False), layer, source)
    logits = OracleTeacherLogits(forward, oracle_gamma) if oracle_gamma is not None else TeacherLogits()
    providers: dict[str, Provider] = {TEACHER_LOGITS: logits, TEACHER_FEATURES: TeacherFeatures()}
    if explanation is not None:
        providers[TARGET_MAPS] = _map_provider(explanation, autoencoder, cache_size, oracle_gamma is not None)
    return TeacherSignals(forward, providers)
