"""The domain errors the services raise beyond `core.errors`' own, one class per client-visible `code`.

A client branches on `code`, so every code a service can produce is a class here (or in
`core.errors`); `api.errors` renders any `DistillError` as 422 `{code, message, field}`, which keeps
the mapping to HTTP in one place and the services free of status codes.
"""

from __future__ import annotations

from core.errors import DataError, DistillError, SpecError


class UnsafeArchive(DataError):
    """An archive member could land outside its folder, or the archive unpacks past the size caps."""

    code = "unsafe_archive"


class InvalidFormValue(DistillError):
    """A form or spec value the request validation could not judge alone (e.g. a count the weights do not say)."""

    code = "validation_error"


class PathNotAllowed(SpecError):
    """A spec named a server path: the API only reads data uploaded to it or configured by the operator."""

    code = "path_not_allowed"


class UnknownDataset(SpecError):
    """The spec's dataset is neither built in, nor configured, nor an upload the caller may use."""

    code = "unknown_dataset"


class UnknownModel(SpecError):
    """The spec's teacher weights are not an upload the caller may use."""

    code = "unknown_model"


class InvalidSweep(SpecError):
    """A sweep grid that cannot become child specs (an unknown path, an empty list, a bad value)."""

    code = "invalid_sweep"


class TooManyChildren(InvalidSweep):
    """The grid's combinations exceed the configured child limit (DISTILL_SWEEP_MAX_CHILDREN)."""

    code = "too_many_children"
