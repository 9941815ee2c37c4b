"""The job spec: the public contract shared by `POST /v1/jobs` and `python -m core.run`.

One pydantic model validates both, so a spec that the CLI accepts is a spec the
service accepts (minus server paths, which the API refuses on its own).
Methods are presets: a preset is only a dict of loss weights, and explicit
`loss` fields override it, so `oracle + e2kd + at` is just a spec that sets
three terms.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.models import UnknownArchitecture, check_arch

Explainer = Literal["gradcam", "input_gradient", "input_x_gradient"]
Distance = Literal["cosine", "mse"]
Method = Literal["scratch", "kd", "e2kd", "xai-mse", "oracle", "xdistill", "at", "fitnet"]


def has_control_characters(text: str) -> bool:
    """C0/C1 control characters (NUL, newline, escape, ...): never part of a name, id or key.

    They break logs and headers, and PostgreSQL cannot store NUL; every text field of a spec,
    an upload form or a header is checked with this one rule.
    """
    return any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text)


def check_plain_text(text: str | None) -> str | None:
    """A field validator: refuse a name holding control characters (pydantic reports it on the field)."""
    if text is not None and has_control_characters(text):
        raise ValueError("text must not contain control characters")
    return text


def control_character_field(value: Any, path: str = "") -> str | None:
    """Dotted path of the first string (value or key) in a JSON document holding a control character, or None."""
    if isinstance(value, str):
        return path if has_control_characters(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and has_control_characters(key):
            return where
        found = control_character_field(item, where)
        if found is not None:
            return found
    return None


class _Strict(BaseModel):
    """Unknown keys are an error: a typo in a spec must not silently train the wrong thing."""

    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """Where the data comes from: exactly one of `name`, `id`, `path`."""

    name: str | None = Field(None, description="Registered dataset name: 'digits' is built in.")
    id: str | None = Field(None, description="Id of a dataset uploaded through POST /v1/datasets.")
    path: str | None = Field(None, description="CLI only: an ImageFolder tree or a .npz file.")
    image_size: int = Field(32, ge=8, le=512, description="Images are resized to this square side.")
    shots_per_class: int | None = Field(
        None, ge=1, description="Keep this many seeded training images per class (limited-data regime)."
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Seeded held-out share when the source has no test split."
    )
    augment: bool = Field(False, description="Random crop + flip; disables the teacher-map cache.")
    split_seed: int = Field(
        0,
        ge=0,
        description="Seed of the held-out split and of the shots_per_class subset. Independent of training.seed, "
        "so runs with different training seeds are scored on the same images, and a teacher trained by one job "
        "is never scored on its own training images by another.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DatasetSpec:
        given = [key for key in ("name", "id", "path") if getattr(self, key)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'name', 'id' or 'path'")
        return self


ARCH_DESCRIPTION = (
    "'timm/<name>' or 'torchvision/<name>' (any classifier of those libraries, never pretrained), or a short "
    "name: resnet8/14/20/32/56/110 (x4 for 4x width), cnn, and the aliases resnet18, resnet34, mobilenet_v3_small."
)
LAYER_DESCRIPTION = (
    "Module path of the explained layer (Grad-CAM, AT, FitNet), e.g. 'layer4' or 'stages.3'; "
    "null = automatic (the last feature stage of the family)."
)


def _check_arch(arch: str) -> str:
    try:
        return check_arch(arch)
    except UnknownArchitecture as exc:
        raise ValueError(str(exc)) from None


class TeacherSpec(_Strict):
    arch: str = Field("resnet20", max_length=200, description=f"Teacher architecture: {ARCH_DESCRIPTION}")
    weights: str | None = Field(
        None, description="Uploaded model id (API) or weights path (CLI: .safetensors, or a .pt/.pth state dict "
        "read weights-only); null trains the teacher first."
    )
    layer: str | None = Field(None, min_length=1, max_length=200, description=LAYER_DESCRIPTION)
    epochs: int = Field(15, ge=0, le=1000, description="Epochs to train the teacher when weights is null.")

    _arch = field_validator("arch")(classmethod(lambda cls, v: _check_arch(v)))


class StudentSpec(_Strict):
    arch: str = Field("resnet8", max_length=200, description=f"Student architecture: {ARCH_DESCRIPTION}")
    layer: str | None = Field(None, min_length=1, max_length=200, description=LAYER_DESCRIPTION)

    _arch = field_validator("arch")(classmethod(lambda cls, v: _check_arch(v)))


class ExplanationSpec(_Strict):
    """Explanation alignment L_exp(E_S(x), E_T(x)), target class = teacher top-1."""

    weight: float = Field(0.0, ge=0.0, description="Coefficient of the explanation term.")
    explainer: Explainer = "gradcam"
    distance: Distance = Field("cosine", description="'cosine' (e2KD) or 'mse' on min-max normalised maps.")
    every: int = Field(1, ge=1, description="Apply the term every N-th step (guided-step interval).")
    target: Literal["teacher", "autoencoder"] = Field(
        "teacher", description="'autoencoder' = XDistillation: an autoencoder predicts the teacher's maps."
    )


class XDistillSpec(_Strict):
    """The XDistillation explainer autoencoder, fitted before distillation."""

    epochs: int = Field(5, ge=1, le=200)
    lr: float = Field(1e-3, gt=0.0)


class LossSpec(_Strict):
    """Loss terms; every field left out keeps the preset's value."""

    ce: float = Field(1.0, ge=0.0, description="Cross-entropy with the labels.")
    kd: float = Field(0.0, ge=0.0, description="Hinton KD, T^2 * KL(teacher || student).")
    temperature: float = Field(4.0, gt=0.0)
    explanation: ExplanationSpec = Field(default_factory=ExplanationSpec)
    oracle_gamma: float | None = Field(
        None, ge=0.0, description="Teacher sees x* = x - gamma*|x|*grad_x CE(T(x), y); null = off."
    )
    at: float = Field(0.0, ge=0.0, description="Attention transfer (Zagoruyko & Komodakis) at the last stage.")
    fitnet: float = Field(0.0, ge=0.0, description="FitNet hint (MSE through a 1x1 regressor) at the last stage.")
    xdistill: XDistillSpec = Field(default_factory=XDistillSpec)


# A preset is only a dict of loss settings, merged under the spec's explicit `loss` fields.
PRESETS: dict[str, dict[str, Any]] = {
    "scratch": {"ce": 1.0},
    "kd": {"ce": 1.0, "kd": 1.0},
    "e2kd": {"ce": 1.0, "kd": 1.0, "explanation": {"weight": 1.0, "explainer": "gradcam", "distance": "cosine"}},
    "xai-mse": {"ce": 1.0, "kd": 1.0, "explanation": {"weight": 1.0, "explainer": "gradcam", "distance": "mse"}},
    "oracle": {"ce": 1.0, "kd": 1.0, "oracle_gamma": 1.0},
    "xdistill": {
        "ce": 1.0,
        "kd": 1.0,
        "explanation": {"weight": 1.0, "explainer": "gradcam", "distance": "cosine", "target": "autoencoder"},
    },
    "at": {"ce": 1.0, "at": 1000.0},
    "fitnet": {"ce": 1.0, "fitnet": 1.0},
}


class TrainingSpec(_Strict):
    epochs: int = Field(15, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    scheduler: Literal["cosine", "none"] = "cosine"
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when present.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training arithmetic: autocast to bf16 or fp16 (loss scaling for fp16 on CUDA); "
        "explanation maps stay float32."
    )


class ReportSpec(_Strict):
    heatmaps: int = Field(16, ge=0, le=256, description="Test images rendered as input|teacher|student PNGs.")
    latency_runs: int = Field(20, ge=1, le=1000, description="Batch-1 CPU forward passes timed for latency.")


class JobSpec(_Strict):
    name: str = Field("job", min_length=1, max_length=200)
    dataset: DatasetSpec
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    method: Method | None = Field("kd", description="Preset; null means `loss` alone defines the terms.")
    loss: LossSpec = Field(default_factory=LossSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    _plain_name = field_validator("name")(classmethod(lambda cls, v: check_plain_text(v)))

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Merge the preset's loss under the explicit `loss` fields (explicit wins, key by key)."""
        if not isinstance(data, dict):
            return data
        method = data.get("method", "kd")
        if method is None or method not in PRESETS:
            return data  # unknown method: the Literal check reports it on `method`
        explicit = data.get("loss") or {}
        if not isinstance(explicit, dict):
            return data
        merged: dict[str, Any] = {**PRESETS[method]}
        for key, value in explicit.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return {**data, "loss": merged}

    @model_validator(mode="after")
    def _teacher_available(self) -> JobSpec:
        # Every run has a teacher, even `scratch`: it is the yardstick for agreement and explanation cosine.
        if self.teacher.weights is None and self.teacher.epochs == 0:
            raise ValueError("teacher.epochs must be >= 1 when teacher.weights is null")
        return self
