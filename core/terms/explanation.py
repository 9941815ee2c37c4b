"""Explanation alignment: the student explains the teacher's top-1 class with the teacher's evidence.

Turned on by `{"loss": {"explanation": {"weight": 1.0, "explainer": "gradcam", "distance": "cosine"}}}`
(e2KD, `{"method": "e2kd"}`), `"distance": "mse"` (`{"method": "xai-mse"}`) or
`"target": "autoencoder"` (XDistillation, `{"method": "xdistill"}`), on top of any KD base.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from core.explain import EXPLAINERS, ExplainerSettings, minmax_normalize, resize_to_larger
from core.strict import StrictModel
from core.terms.base import STUDENT_MAPS, TARGET_MAPS, BatchContext, Term
from core.terms.registry import TermUnit, register

# Every registered explainer (core.explain imports them all before this line runs, so the choice is complete).
ExplainerName = Literal[tuple(EXPLAINERS)]  # type: ignore[valid-type]
Distance = Literal["cosine", "mse"]
# The sampling/masking settings came after run folders existed: at their defaults they stay out of the dump,
# so a spec's identity (core.resume) and a stored spec read back are those of before.
_LATE_SETTINGS = {"samples": None, "noise": None, "batch": 32}


class ExplanationSpec(StrictModel):
    """Explanation alignment L_exp(E_S(x), E_T(x)), target class = teacher top-1."""

    weight: float = Field(0.0, ge=0.0, description="Coefficient of the explanation term.")
    explainer: ExplainerName = "gradcam"  # type: ignore[valid-type]
    distance: Distance = Field("cosine", description="'cosine' (e2KD) or 'mse' on min-max normalised maps.")
    every: int = Field(1, ge=1, description="Apply the term every N-th step (guided-step interval): the bound on "
                       "a costly explainer's cost (the score-based CAMs run a teacher forward per channel).")
    target: Literal["teacher", "autoencoder"] = Field(
        "teacher", description="'autoencoder' = XDistillation: an autoencoder predicts the teacher's maps."
    )
    samples: int | None = Field(
        None, ge=1, le=256, description="Noisy/scaled copies per map: smoothgradcampp (default 4), sscam (35), "
        "iscam (10); null = the method's default.")
    noise: float | None = Field(
        None, gt=0.0, le=100.0, description="Noise std: smoothgradcampp on the input (default 0.3), sscam on the "
        "masks (2.0); null = the method's default.")
    batch: int = Field(32, ge=1, le=4096, description="Masked images per forward of scorecam/sscam/iscam "
                       "(bounds their memory).")

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        dumped = handler(self)
        for name, default in _LATE_SETTINGS.items():
            if dumped.get(name, default) == default:
                dumped.pop(name, None)
        return dumped

    def settings(self, seed: int) -> ExplainerSettings:
        """What the explainers read (core.explain.settings); `seed` (the job's) seeds their noise."""
        return ExplainerSettings(samples=self.samples, noise=self.noise, batch=self.batch, seed=seed)


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
