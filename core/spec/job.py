"""The job spec: the public contract shared by `POST /v1/jobs` and `distill run`.

One pydantic model validates both, so a spec that the CLI accepts is a spec the
service accepts (minus server paths, which the API refuses on its own).
Methods are presets: a preset is only a dict of loss weights, and explicit
`loss` fields override it, so `oracle + e2kd + at` is just a spec that sets
three terms. The `loss` block and the presets are declared by the loss units
themselves (core.terms); this module only assembles them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.explain import explainer_problem
from core.models import UnknownArchitecture, check_arch, input_problem
from core.strict import StrictModel
from core.terms import ExplanationSpec, XDistillSpec
from core.terms import registry as term_registry

# The loss block, its presets and the method choices come from the registered loss units (core.terms).
LossSpec = term_registry.loss_spec_model()
PRESETS: dict[str, dict[str, Any]] = term_registry.presets()  # method -> plain dict of loss settings
Method = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


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


_Strict = StrictModel  # unknown keys are an error: a typo in a spec must not silently train the wrong thing


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
    augment: bool | Literal["none", "crop-flip", "random-resized-crop"] = Field(
        False, description="Augmentation recipe: 'none', 'crop-flip' (4-pixel padded crop + flip, small images), "
        "'random-resized-crop' (+ flip, photos); true = crop-flip up to 64 px, random-resized-crop above. "
        "Any recipe but none disables the teacher-map cache.")
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
    "name: resnet8/14/20/32/56/110 (x4 for 4x width), cnn, and the aliases resnet18, resnet34, mobilenet_v3_small; "
    "or 'bcos/<name>', a B-cos network of the bcos package (e.g. bcos/cifar10_resnet20, bcos/resnet18)."
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


class NormalizeSpec(_Strict):
    """A teacher's own input normalisation: per channel, (pixel in [0, 1] - mean) / std."""

    mean: list[float] = Field(min_length=1, max_length=4, examples=[[0.485, 0.456, 0.406]])
    std: list[float] = Field(min_length=1, max_length=4, examples=[[0.229, 0.224, 0.225]])

    @model_validator(mode="after")
    def _same_channels(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if any(value <= 0 for value in self.std):
            raise ValueError("std values must be > 0")
        return self


class TeacherSpec(_Strict):
    arch: str = Field("resnet20", max_length=200, description=f"Teacher architecture: {ARCH_DESCRIPTION}")
    weights: str | None = Field(
        None, description="Uploaded model id (API) or weights path (CLI: .safetensors, or a .pt/.pth state dict "
        "read weights-only); null trains the teacher first."
    )
    layer: str | None = Field(None, min_length=1, max_length=200, description=LAYER_DESCRIPTION)
    epochs: int = Field(15, ge=0, le=1000, description="Epochs to train the teacher when weights is null.")
    class_names: list[str] | None = Field(
        None, min_length=2, max_length=100_000, examples=[["airplane", "automobile", "bird"]],
        description="The given teacher's output order (output k is class_names[k]); the job maps them to the "
        "dataset's classes by name (KD, DKD, DIST, maps, agreement and accuracy use the mapped logits). Classes "
        "the dataset lacks are dropped; a dataset class missing here is refused. null: output k is the dataset's "
        "k-th class (sorted folder names).",
    )

    normalize: NormalizeSpec | Literal["model"] | None = Field(
        None, examples=[{"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "model"],
        description="The teacher's own input normalisation, applied on the device to the dataset-normalised "
        "batch (the student keeps the dataset's). 'model': the timm model's default config. null: the teacher "
        "is fed the dataset's normalisation, as the student.",
    )

    _arch = field_validator("arch")(classmethod(lambda cls, v: _check_arch(v)))

    @field_validator("class_names")
    @classmethod
    def _distinct_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(set(names)) != len(names):
                raise ValueError("class names must be distinct")
            if any(not name or len(name) > 200 or has_control_characters(name) for name in names):
                raise ValueError("class names are 1-200 printable characters")
        return names


class StudentSpec(_Strict):
    arch: str = Field("resnet8", max_length=200, description=f"Student architecture: {ARCH_DESCRIPTION}")
    layer: str | None = Field(None, min_length=1, max_length=200, description=LAYER_DESCRIPTION)
    weights: str | None = Field(
        None, description="Starting weights of the student: an uploaded model id (API) or a weights path (CLI), "
        "read by the teachers' rules (.safetensors, or a .pt/.pth state dict read weights-only); null starts random."
    )
    head: Literal["keep", "reset"] = Field(
        "keep", description="'reset' keeps every tensor of `weights` but the classifier, which starts fresh "
        "(weights made for another class count, e.g. ImageNet's 1000); 'keep' loads the weights as they are.",
    )

    _arch = field_validator("arch")(classmethod(lambda cls, v: _check_arch(v)))

    @model_validator(mode="after")
    def _head_needs_weights(self) -> StudentSpec:
        """A head reset without weights would do nothing: refused on `student.head`."""
        if self.head == "reset" and self.weights is None:
            detail = InitErrorDetails(
                type=PydanticCustomError("value_error", "'reset' re-initialises the head of given weights: "
                                         "set student.weights too"), loc=("head",), input=self.head)
            raise ValidationError.from_exception_data("StudentSpec", [detail])
        return self


class TrainingSpec(_Strict):
    epochs: int = Field(15, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    scheduler: Literal["cosine", "none", "multistep", "step"] = Field(
        "cosine", description="Learning-rate schedule, stepped per batch: 'cosine' anneals to 0 over the run; "
        "'multistep' multiplies by `gamma` at each epoch of `milestones`; 'step' every `step_size` epochs; "
        "'none' keeps it."
    )
    milestones: list[int] = Field(
        default_factory=list, max_length=100, validate_default=True,
        description="'multistep' only: increasing epochs after which the rate is multiplied by `gamma` (e.g. "
        "[150, 180, 210]); a milestone past the stage's last epoch never fires.",
    )
    step_size: int | None = Field(
        None, ge=1, le=1000, validate_default=True, description="'step' only: epochs between two decays."
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="'multistep' and 'step': the factor of each decay.")
    warmup_epochs: int = Field(
        0, ge=0, le=1000, description="Linear warm-up over this many epochs, for any scheduler: the rate rises from "
        "lr/(n+1) on the first of the n warm-up steps to the schedule's rate, which it multiplies.",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Label smoothing of the student's cross-entropy term (torch's "
        "label_smoothing); a teacher trained by the job keeps plain cross-entropy."
    )
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks CUDA when present.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training arithmetic: autocast to bf16 or fp16 (loss scaling for fp16 on CUDA); "
        "explanation maps stay float32."
    )
    devices: int = Field(
        1, ge=1, le=64, description="Ranks of torch.distributed the job trains on (one GPU each on CUDA, NCCL; "
        "gloo on the CPU). batch_size stays the global batch: each rank takes batch_size / devices per step."
    )

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainingSpec:
        if self.batch_size % self.devices:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by devices {self.devices} "
                             "(each rank takes batch_size / devices samples per step)")
        return self

    @field_validator("milestones")
    @classmethod
    def _milestones_fit(cls, milestones: list[int], info: ValidationInfo) -> list[int]:
        """Milestones belong to 'multistep', which needs them; a setting that would do nothing is a mistake."""
        scheduler = info.data.get("scheduler")
        if scheduler == "multistep" and not milestones:
            raise ValueError("the 'multistep' scheduler needs at least one milestone epoch")
        if milestones and scheduler != "multistep":
            raise ValueError(f"only the 'multistep' scheduler takes milestones (scheduler is {scheduler!r})")
        if any(m < 1 for m in milestones) or any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError("milestones must be epochs >= 1 in strictly increasing order")
        return milestones

    @field_validator("step_size")
    @classmethod
    def _step_size_fits(cls, step_size: int | None, info: ValidationInfo) -> int | None:
        """`step_size` belongs to 'step', which needs it."""
        scheduler = info.data.get("scheduler")
        if scheduler == "step" and step_size is None:
            raise ValueError("the 'step' scheduler needs step_size (epochs between two decays)")
        if step_size is not None and scheduler != "step":
            raise ValueError(f"only the 'step' scheduler takes step_size (scheduler is {scheduler!r})")
        return step_size


class ReportSpec(_Strict):
    heatmaps: int = Field(16, ge=0, le=256, description=(
        "Test images rendered as PNGs: input, then teacher and student maps of the job's explainer "
        "(and of Grad-CAM beside them when that is another one)."))
    latency_runs: int = Field(20, ge=1, le=1000, description="Timed forward passes per latency table row.")


class ExportSpec(_Strict):
    """Deployment outputs besides the safetensors weights."""

    onnx: bool = Field(
        True,
        description="Write student.onnx (dynamic batch axis), kept only when onnxruntime matches PyTorch on the "
        "test images; a model that cannot be exported gives a warning, not a failed job.",
    )


class JobSpec(_Strict):
    name: str = Field("job", min_length=1, max_length=200)
    dataset: DatasetSpec
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    method: Method | None = Field("kd", description="Preset; null means `loss` alone defines the terms.")
    loss: LossSpec = Field(default_factory=LossSpec)  # type: ignore[valid-type]
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    _plain_name = field_validator("name")(classmethod(lambda cls, v: check_plain_text(v)))

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Merge the preset's loss under the explicit `loss` fields (explicit wins, key by key)."""
        if not isinstance(data, dict):
            return data
        method = data.get("method", "kd")
        if not isinstance(method, str) or method not in PRESETS:
            return data  # unknown or not a name (a list, a number): the Literal check reports it on `method`
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
        for field in ("class_names", "normalize"):
            if self.teacher.weights is None and getattr(self.teacher, field) is not None:
                raise ValueError(f"teacher.{field} describes given teacher weights; set teacher.weights or drop it")
        return self

    @model_validator(mode="after")
    def _image_size_fits(self) -> JobSpec:
        """Both networks take the dataset's image size (a plain B-cos ViT needs whole patches).

        The error names `dataset.image_size`, the field a user changes to make the pairing work.
        """
        for role, arch in (("teacher", self.teacher.arch), ("student", self.student.arch)):
            if (problem := input_problem(arch, self.dataset.image_size)) is not None:
                detail = InitErrorDetails(
                    type=PydanticCustomError("value_error", "{problem} ({role}.arch)", {"problem": problem, "role": role}),
                    loc=("dataset", "image_size"),
                    input=self.dataset.image_size,
                )
                raise ValidationError.from_exception_data("JobSpec", [detail])
        return self

    @model_validator(mode="after")
    def _explainer_fits(self) -> JobSpec:
        """The explainer explains both networks (in training and in the evaluation, whatever its weight).

        The error names `loss.explanation.explainer` (its pydantic location), so the API's 422 and
        the CLI both point at the field to change.
        """
        explainer = self.loss.explanation.explainer  # type: ignore[attr-defined]
        for role, arch in (("teacher", self.teacher.arch), ("student", self.student.arch)):
            if (problem := explainer_problem(explainer, arch)) is not None:
                detail = InitErrorDetails(
                    type=PydanticCustomError("value_error", "{problem} ({role}.arch)", {"problem": problem, "role": role}),
                    loc=("loss", "explanation", "explainer"),
                    input=explainer,
                )
                raise ValidationError.from_exception_data("JobSpec", [detail])
        return self


__all__ = [
    "PRESETS", "DatasetSpec", "ExplanationSpec", "NormalizeSpec", "ExportSpec", "JobSpec", "LossSpec", "Method", "ReportSpec", "StudentSpec",
    "TeacherSpec", "TrainingSpec", "XDistillSpec", "check_plain_text", "control_character_field",
    "has_control_characters",
]
