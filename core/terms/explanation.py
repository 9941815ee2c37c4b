"""Explanation alignment: the student explains the teacher's top-1 class with the teacher's evidence.

Turned on by `{"loss": {"explanation": {"weight": 1.0, "explainer": "gradcam", "distance": "cosine"}}}`
(e2KD, `{"method": "e2kd"}`), `"distance": "mse"` (`{"method": "xai-mse"}`) or
`"target": "autoencoder"` (XDistillation, `{"method": "xdistill"}`), on top of any KD base.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from core.explain import EXPLAINERS, minmax_normalize, resize_to_larger
from core.strict import StrictModel
from core.terms.base import STUDENT_MAPS, TARGET_MAPS, BatchContext, Term
from core.terms.registry import TermUnit, register

ExplainerName = Literal[tuple(EXPLAINERS)]  # type: ignore[valid-type]
Distance = Literal["cosine", "mse"]


class ExplanationSpec(StrictModel):
    """Explanation alignment L_exp(E_S(x), E_T(x)), target class = teacher top-1."""

    weight: float = Field(0.0, ge=0.0, description="Coefficient of the explanation term.")
    explainer: ExplainerName = "gradcam"  # type: ignore[valid-type]
    distance: Distance = Field("cosine", description="'cosine' (e2KD) or 'mse' on min-max normalised maps.")
    every: int = Field(1, ge=1, description="Apply the term every N-th step (guided-step interval).")
    target: Literal["teacher", "autoencoder"] = Field(
        "teacher", description="'autoencoder' = XDistillation: an autoencoder predicts the teacher's maps."
    )


class XDistillSpec(StrictModel):
    """The XDistillation explainer autoencoder, fitted before distillation (explanation.target 'autoencoder')."""

    epochs: int = Field(5, ge=1, le=200)
    lr: float = Field(1e-3, gt=0.0)


class ExplanationAlignment(Term):
    """L_exp(E_S(x), E_T(x)) for the teacher's top-1 class, maps resized to the larger.

    - `cosine`: mean_i 1 - cos(flatten(E_S,i), flatten(E_T,i)) (e2KD: Parchami-Araghi et al.,
      "Good Teachers Explain", ECCV 2024).
    - `mse`: MSE(minmax(E_S), minmax(E_T)), maps min-max normalised per sample (the VISAPP 2026
      explanation-guided distillation paper's choice).
    Reads maps only on guided steps (every `every`-th global step), so the maps cost nothing
    on the other steps.
    """

    name = "explanation"
    needs = frozenset({STUDENT_MAPS, TARGET_MAPS})

    def __init__(self, distance: str, every: int = 1) -> None:
        super().__init__()
        if distance not in ("cosine", "mse"):
            raise ValueError(f"unknown explanation distance '{distance}'")
        self.distance, self.every = distance, every

    def needs_at(self, step: int) -> frozenset[str]:
        return self.needs if step % self.every == 0 else frozenset()

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.student_maps is not None and ctx.target_maps is not None
        student_maps, target_maps = resize_to_larger(ctx.student_maps, ctx.target_maps)
        if self.distance == "cosine":
            cosine = F.cosine_similarity(student_maps.flatten(1), target_maps.flatten(1), dim=1, eps=1e-8)
            return (1.0 - cosine).mean()
        return F.mse_loss(minmax_normalize(student_maps), minmax_normalize(target_maps))


_GRADCAM_COSINE = {"weight": 1.0, "explainer": "gradcam", "distance": "cosine"}

UNIT = register(TermUnit(
    name="explanation",
    fields={
        "explanation": (ExplanationSpec, Field(default_factory=ExplanationSpec)),
        "xdistill": (XDistillSpec, Field(default_factory=XDistillSpec)),
    },
    weight=lambda loss: loss.explanation.weight,
    factory=lambda loss, sizes: ExplanationAlignment(loss.explanation.distance, loss.explanation.every),
    presets={
        "e2kd": {"ce": 1.0, "kd": 1.0, "explanation": dict(_GRADCAM_COSINE)},
        "xai-mse": {"ce": 1.0, "kd": 1.0, "explanation": {**_GRADCAM_COSINE, "distance": "mse"}},
        "xdistill": {"ce": 1.0, "kd": 1.0, "explanation": {**_GRADCAM_COSINE, "target": "autoencoder"}},
        # e2KD's own setting (Parchami-Araghi et al., ECCV 2024, B-cos ImageNet runs): KL at T=1 without CE,
        # 1 - cos of the B-cos contribution maps of the teacher's top-1 class, weight 1 (their configs'
        # default explanation coefficient). Their B-cos students train with Adam (lr 1e-3) and a cosine
        # schedule, which the spec's `training` must set: presets only hold loss settings.
        "e2kd-bcos": {"ce": 0.0, "kd": 1.0, "temperature": 1.0,
                      "explanation": {"weight": 1.0, "explainer": "bcos", "distance": "cosine"}},
    },
    new=False,  # part of the spec before the registry: always in a spec's identity
))
