"""The domain errors the services raise beyond `core.errors`' own, one class per client-visible `code`.

A client branches on `code`, so every code a service can produce is a class here (or in
`core.errors`); `api.errors` renders any `DistillError` as 422 `{code, message, field}`, which keeps
the mapping to HTTP in one place and the services free of status codes.
"""

from __future__ import annotations

from core.errors import DataError, DistillError, SpecError


class UnsafeArchive(DataError, code="unsafe_archive"):
    """An archive member could land outside its folder, or the archive unpacks past the size caps."""


class InvalidFormValue(DistillError, code="validation_error"):
    """A form or spec value the request validation could not judge alone (e.g. a count the weights do not say)."""


class PathNotAllowed(SpecError, code="path_not_allowed"):
    """A spec named a server path: the API only reads data uploaded to it or configured by the operator."""


class UnknownDataset(SpecError, code="unknown_dataset"):
    """The spec's dataset is neither built in, nor configured, nor an upload the caller may use."""


class UnknownModel(SpecError, code="unknown_model"):
    """The spec's teacher or student weights are not an upload the caller may use."""


class InvalidSweep(SpecError, code="invalid_sweep"):
    """A sweep grid that cannot become child specs (an unknown path, an empty list, a bad value)."""


class TooManyChildren(InvalidSweep, code="too_many_children"):
    """The grid's combinations exceed the configured child limit (DISTILL_SWEEP_MAX_CHILDREN)."""


class UploadChecksBusy(Exception):
    """Every upload-check slot (DISTILL_UPLOAD_CHECKS) is taken: the server is busy, not the input wrong (503)."""

    def __init__(self, slots: int, retry_after_s: int) -> None:
        super().__init__(f"{slots} uploads are being checked already; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s
