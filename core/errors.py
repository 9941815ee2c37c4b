"""Errors the engine raises on purpose; anything else is a bug.

Each carries a stable `code` a client can branch on and, where one input is to
blame, the spec `field` (dotted path), so the worker and the API can report it
without parsing messages.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class: a failure the user can act on."""

    code = "distill_error"

    def __init_subclass__(cls, code: str | None = None, **kwargs: object) -> None:
        """Take the subclass's `code` as a class keyword, so each error is its name, base and docstring
        on a few lines; a subclass without one keeps its base's code."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        """Pickle with the field too: a check run in a child process raises it back to the API."""
        return type(self), (self.message, self.field)


class SpecError(DistillError, code="invalid_spec"):
    """The spec is valid JSON but cannot run (e.g. teacher class count != dataset class count)."""


class DataError(DistillError, code="invalid_dataset"):
    """The dataset is missing, unreadable or unusable (one class, undecodable images...)."""


class WeightsError(DistillError, code="invalid_weights"):
    """Weights do not load into the named architecture, or are not safetensors."""


class JobCancelled(Exception):
    """Raised between steps when the callbacks ask to stop; not a failure."""


class StorageFull(DistillError, code="storage_full"):
    """The data folder ran out of space (ENOSPC or a quota) while the job wrote its files."""


_STORAGE_FULL_ERRNOS = frozenset({28, 122})  # ENOSPC, EDQUOT (Linux numbers; errno names them below)


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether `exc` or anything in its cause chain is a full disk or an exceeded quota.

    torch and safetensors re-raise write failures as their own RuntimeError types with the
    OS message inside, so the message is read too, not only `errno`.
    """
    import errno

    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", 122)} | _STORAGE_FULL_ERRNOS
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
