"""Errors the engine raises on purpose; anything else is a bug.

Each carries a stable `code` a client can branch on and, where one input is to
blame, the spec `field` (dotted path), so the worker and the API can report it
without parsing messages.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class: a failure the user can act on."""

    code = "distill_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class SpecError(DistillError):
    """The spec is valid JSON but cannot run (e.g. teacher class count != dataset class count)."""

    code = "invalid_spec"


class DataError(DistillError):
    """The dataset is missing, unreadable or unusable (one class, undecodable images...)."""

    code = "invalid_dataset"


class WeightsError(DistillError):
    """Weights do not load into the named architecture, or are not safetensors."""

    code = "invalid_weights"


class JobCancelled(Exception):
    """Raised between steps when the callbacks ask to stop; not a failure."""
