"""`README.md` next to the weights: a Hugging Face style model card written from the job's own numbers.

The front matter uses the Hub's model-card fields (`library_name`, `tags`, `datasets`,
`metrics`, `base_model` = the teacher) so the folder can be pushed as is; the body says
what the student is for, how it was trained (the spec), how well it does, and where it
falls short, every sentence computed from metrics.json rather than written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.explain import EXPLAINERS
from core.publish.manifest import HEATMAP_FOLDER, METRICS, MODEL_CARD, REPORT, STUDENT_ONNX, STUDENT_WEIGHTS, summary_of

WEAK_CLASS_MARGIN = 0.10  # a class the student gets this much worse than the teacher is called out


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(value)}" for value in values]


def starting_weights(spec: dict[str, Any]) -> str | None:
    """What the student started from, in words: the uploaded model id, or a CLI file's name (never its folder),
    and whether its classifier started fresh; None for a random start."""
    student = spec.get("student") or {}
    weights = student.get("weights")
    if not weights:
        return None
    name = str(weights).replace("\\", "/").rpartition("/")[2]
    return f"{name} (classifier re-initialised)" if student.get("head") == "reset" else name


def front_matter(result: dict[str, Any]) -> str:
    spec = result.get("spec", {})
    dataset = spec.get("dataset", {})
    dataset_name = dataset.get("name") or dataset.get("id") or "custom-imagefolder"
    teacher = spec.get("teacher", {})
    base_model = teacher.get("weights") if teacher.get("weights") and not dataset.get("path") else teacher.get("arch")
    if teacher.get("weights") and "/" in str(teacher.get("weights")):
        base_model = teacher.get("arch")  # a CLI file path is no model name, and must not leak a path
    if (student_weights := (spec.get("student") or {}).get("weights")):
        base_model = str(student_weights).replace("\\", "/").rpartition("/")[2]  # the weights it was fine-tuned from
    tags = ["knowledge-distillation", "image-classification", "pytorch", "safetensors"]
    if result.get("method"):
        tags.append(str(result["method"]))
    if (spec.get("loss", {}).get("explanation") or {}).get("weight", 0) > 0:
        tags.append("explanation-guided")
    if result.get("onnx"):
        tags.append("onnx")
    lines = ["---", "library_name: pytorch", "pipeline_tag: image-classification"]
    lines += _yaml_list("tags", tags)
    lines += _yaml_list("datasets", [dataset_name])
    lines += _yaml_list("metrics", ["accuracy", "agreement", "explanation_cosine", "ece"])
    lines += [f"base_model: {json.dumps(str(base_model))}", "---"]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _limitations(result: dict[str, Any]) -> list[str]:
    """Shortcomings stated with the job's numbers: accuracy gap, weak classes, calibration, test size, export."""
    notes = []
    gap = (result.get("teacher_accuracy") or 0) - (result.get("student_accuracy") or 0)
    notes.append(f"The student is {100 * gap:.1f} points {'below' if gap >= 0 else 'above'} the teacher's top-1 "
                 f"accuracy and agrees with the teacher on {_pct(result.get('agreement'))} of test images.")
    names = result.get("class_names") or []
    per_class = result.get("per_class_accuracy") or {}
    weak = [
        f"{names[i] if i < len(names) else i} ({_pct(s)} vs teacher {_pct(t)})"
        for i, (t, s) in enumerate(zip(per_class.get("teacher", []), per_class.get("student", []), strict=False))
        if t is not None and s is not None and t - s >= WEAK_CLASS_MARGIN
    ]
    if weak:
        notes.append("Classes where the student trails the teacher by 10 points or more: " + ", ".join(weak) + ".")
    ece = result.get("ece")
    if ece is not None:
        quality = "well calibrated" if ece < 0.05 else "not well calibrated; do not read its softmax as a probability"
        notes.append(f"Expected calibration error is {ece:.3f} (15 bins): {quality}.")
    shots = (result.get("spec", {}).get("dataset") or {}).get("shots_per_class")
    tested = (result.get("onnx") or {}).get("images")
    if shots:
        notes.append(f"Trained on {shots} images per class (limited-data regime).")
    if tested:
        notes.append(f"All numbers come from {tested} held-out test images of the same dataset; they say nothing "
                     "about images from another distribution.")
    if not result.get("onnx"):
        notes.append("No ONNX file: the export was off or did not reproduce PyTorch within tolerance.")
    return notes


def _explainer_label(result: dict[str, Any]) -> str:
    """The job's explainer as people name it ("Grad-CAM", "B-cos"); an unknown name is kept as it is."""
    explainer = result.get("explainer") or "gradcam"
    known = EXPLAINERS.get(explainer)
    return known.label if known is not None else str(explainer)


def _beside(result: dict[str, Any]) -> str:
    return "" if (result.get("explainer") or "gradcam") == "gradcam" else " | teacher | student Grad-CAM maps"


def _cosine_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"explanation cosine ({_explainer_label(result)})", "", f"{result.get('explanation_cosine', 0):.3f}")]
    if (result.get("explainer") or "gradcam") != "gradcam" and result.get("explanation_cosine_gradcam") is not None:
        rows.append(("explanation cosine (Grad-CAM)", "", f"{result['explanation_cosine_gradcam']:.3f}"))
    return rows


def _metrics_table(result: dict[str, Any]) -> list[str]:
    sizes = result.get("sizes") or {}
    rows = [
        ("top-1 accuracy", _pct(result.get("teacher_accuracy")), _pct(result.get("student_accuracy"))),
        ("agreement with the teacher", "", _pct(result.get("agreement"))),
        *_cosine_rows(result),
        ("ECE", f"{result.get('teacher_ece', 0):.3f}", f"{result.get('ece', 0):.3f}"),
        ("parameters", f"{result.get('teacher_params', 0):,}", f"{result.get('student_params', 0):,}"),
        ("safetensors bytes", f"{sizes.get('teacher_safetensors_bytes') or 0:,}",
         f"{sizes.get('student_safetensors_bytes') or 0:,}"),
        ("CPU latency, batch 1 (ms)", f"{result.get('teacher_latency_ms') or 0:.2f}",
         f"{result.get('student_latency_ms') or 0:.2f}"),
    ]
    return ["| metric | teacher | student |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def _file_line(name: str, detail: str = "") -> str:
    """One entry of the card's file list, worded by the artifact manifest."""
    return f"- `{name}`: {summary_of(name)}{detail}."


def _start_words(spec: dict[str, Any]) -> str:
    start = starting_weights(spec)
    return f"the weights {start}" if start else "random weights"


def fed_line(role: str, fed: dict[str, Any]) -> str:
    """What one model was fed, in words (the report page uses it too)."""
    source = "its own normalisation (teacher.normalize)" if fed.get("source") == "own" else "the dataset's normalisation"
    numbers = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(fed.get("mean", []), fed.get("std", []), strict=False))
    return f"The {role} was fed {source}: per-channel mean/std {numbers}."


def _inputs_lines(result: dict[str, Any]) -> list[str]:
    inputs = result.get("inputs") or {}
    if not inputs:
        return []
    return ["## Inputs", "", *[f"- {fed_line(role, inputs[role])}" for role in ("student", "teacher") if role in inputs],
            ""]


def write_model_card(out_dir: Path, result: dict[str, Any]) -> Path:
    spec = result.get("spec", {})
    student, teacher = spec.get("student", {}).get("arch"), spec.get("teacher", {}).get("arch")
    onnx = result.get("onnx")
    files = [_file_line(STUDENT_WEIGHTS)]
    if onnx:
        files.append(_file_line(STUDENT_ONNX, f" (dynamic batch axis, opset {onnx['opset']}); logits within "
                                f"{onnx['max_abs_diff']:.2g} of PyTorch on every test image"))
    files += [_file_line(METRICS), _file_line(REPORT, f" (`{HEATMAP_FOLDER}/*.png`: input | teacher | student "
                                                       f"{_explainer_label(result)} maps{_beside(result)})")]
    body = [
        front_matter(result),
        "",
        f"# {spec.get('name', 'student')}: {student} distilled from {teacher}",
        "",
        "## Intended use",
        "",
        f"A small {student} image classifier for the {len(result.get('class_names') or [])} classes of its "
        f"training data ({', '.join(result.get('class_names') or [])}), distilled from a {teacher} teacher with the "
        f"`{result.get('method') or 'custom'}` method, so that it decides like the teacher and, where an explanation "
        f"term was used, looks at the same evidence ({_explainer_label(result)}). It started from "
        f"{_start_words(spec)}. Inputs are "
        f"{spec.get('dataset', {}).get('image_size')} px images normalised as in training. It is not meant for "
        "images unlike its training data, nor for decisions about people.",
        "",
        *_inputs_lines(result),
        "## Files",
        "",
        *files,
        "",
        "## Metrics (held-out test split)",
        "",
        *_metrics_table(result),
        "",
        "## Limitations",
        "",
        *[f"- {note}" for note in _limitations(result)],
        "",
        "## Training spec",
        "",
        "```json",
        json.dumps(spec, indent=2),
        "```",
        "",
    ]
    path = out_dir / MODEL_CARD
    path.write_text("\n".join(body), encoding="utf-8")
    return path
