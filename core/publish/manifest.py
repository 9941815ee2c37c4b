"""The artifact manifest: every file a job publishes, declared once.

The engine writes these names, the store records exactly these patterns (anything else in a
job folder, such as checkpoints, stays private), experiment tracking uploads the tracked ones,
the model card lists them and the download route documents them. Declaring them here means a
new artifact is one line, and no reader can list a file that nothing writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class ArtifactKind:
    """One published file (or family of files, when `pattern` holds a glob)."""

    pattern: str  # a name relative to the job folder, or a glob such as `heatmaps/*.png`
    content_type: str
    summary: str  # what a person finds in it (model card, route docs)
    tracked: bool = True  # uploaded to the experiment tracker as a file of its own


STUDENT_WEIGHTS = "student.safetensors"
STUDENT_ONNX = "student.onnx"
TEACHER_WEIGHTS = "teacher.safetensors"
METRICS = "metrics.json"
REPORT = "report.html"
MODEL_CARD = "README.md"
HEATMAP_FOLDER = "heatmaps"
HEATMAP_GRID = f"{HEATMAP_FOLDER}/grid.png"

# In the order clients see them.
MANIFEST: tuple[ArtifactKind, ...] = (
    ArtifactKind(STUDENT_WEIGHTS, "application/octet-stream", "the weights (load with `safetensors`, no pickle)"),
    ArtifactKind(STUDENT_ONNX, "application/octet-stream", "the same network for onnxruntime"),
    ArtifactKind(TEACHER_WEIGHTS, "application/octet-stream", "the teacher, when the job trained it",
                 tracked=False),
    ArtifactKind(METRICS, "application/json", "every number below, the per-epoch history and the latency table"),
    ArtifactKind(REPORT, "text/html", "curves, calibration, per-class accuracy and the heatmap gallery"),
    ArtifactKind(MODEL_CARD, "text/markdown", "this model card"),
    ArtifactKind(f"{HEATMAP_FOLDER}/*.png", "image/png", "input | teacher | student maps, one tile per image",
                 tracked=False),  # uploaded as one folder
)

PATTERNS: tuple[str, ...] = tuple(kind.pattern for kind in MANIFEST)
TRACKED_FILES: tuple[str, ...] = tuple(kind.pattern for kind in MANIFEST if kind.tracked)
_TYPE_BY_SUFFIX = {PurePosixPath(kind.pattern).suffix: kind.content_type for kind in MANIFEST}


def content_type_for(name: str) -> str:
    """The media type a published file is served with (by suffix; unknown suffixes are opaque bytes)."""
    return _TYPE_BY_SUFFIX.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


def summary_of(pattern: str) -> str:
    """What a person finds in the published file `pattern` (a manifest entry's own pattern)."""
    return next(kind.summary for kind in MANIFEST if kind.pattern == pattern)


def example_names() -> str:
    """The published names and patterns as the route documentation lists them."""
    return ", ".join(f"`{kind.pattern}`" for kind in MANIFEST)
