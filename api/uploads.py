"""Receiving an uploaded file over HTTP: the multipart body streamed to disk with a size cap.

FastAPI's own form parsing spools the whole upload to the system temp folder
before a route runs, so a size cap could only act after the fact. Here the
multipart body is parsed as it arrives and the file part is written in chunks
to its own folder under DISTILL_HOME/tmp, stopping (413) as soon as it passes the cap; the temp file
folder is removed on every failure path (and swept if the process dies: store.temp_files).

What the file must contain, and how it is kept, is not HTTP and lives in the
services (api.services.model_uploads, api.services.dataset_uploads); every upload
route runs the same `handle_upload`: receive, validate the text fields, check and
store in the thread pool, answer.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.ratelimit import write_route
from api.schemas import ERROR_RESPONSES, UPLOAD_ERROR_RESPONSES, ErrorResponse
from api.services.upload_staging import MIB, ReceivedUpload, new_upload_folder
from core.redact import exception_text
from store import repository
from store.settings import Settings

log = logging.getLogger(__name__)

MAX_FIELD_BYTES = 64 * 1024  # a text field (arch, name, ...) is tiny; anything bigger is abuse
MAX_FIELDS = 20
# Headroom for boundaries, part headers and text fields when judging Content-Length against the cap.
MULTIPART_OVERHEAD_BYTES = MIB

FormModel = TypeVar("FormModel", bound=BaseModel)
Stored = TypeVar("Stored")
Answer = TypeVar("Answer")


def _too_large(settings: Settings) -> ApiError:
    """413 naming `file`, the same whether the declared length or the streamed bytes gave it away."""
    return ApiError(413, "upload_too_large", f"the upload exceeds the {settings.max_upload_mb} MB limit", "file")


# --- streaming ------------------------------------------------------------------------------------------


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


class _StreamingForm:
    """Callbacks for python-multipart's MultipartParser: text fields in memory, the file part to disk."""

    def __init__(self, settings: Settings, file_field: str) -> None:
        self.settings = settings
        self.file_field = file_field
        self.cap_bytes = settings.max_upload_mb * MIB
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.file_handle: IO[bytes] | None = None
        self.file_path: Path | None = None
        self.folder: Path | None = None  # the upload's own folder under DISTILL_HOME/tmp
        self.filename = ""
        self.size_bytes = 0
        self.digest = hashlib.sha256()
        self.writing_file = False
        self.ended = False

    # Local-disk writes of one network chunk are short; doing them inline keeps the parser simple.
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise ApiError(400, "invalid_multipart", "a multipart part has no name in its Content-Disposition")
        self.part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self.part.name != self.file_field:
                raise ApiError(422, "validation_error", f"unexpected file field '{self.part.name}'", self.part.name)
            if self.file_handle is not None:
                raise ApiError(422, "validation_error", f"send exactly one '{self.file_field}'", self.file_field)
            self.filename = options[b"filename"].decode("utf-8", "replace").replace("\x00", "")
            self.folder = new_upload_folder(self.settings)
            self.file_path = self.folder / "file.part"
            self.file_handle = self.file_path.open("xb")  # noqa: SIM115 - closed in on_part_end / close()
            self.writing_file = True
        elif len(self.fields) >= MAX_FIELDS:
            raise ApiError(422, "validation_error", f"too many form fields (max {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.writing_file:
            assert self.file_handle is not None
            self.size_bytes += len(chunk)
            if self.size_bytes > self.cap_bytes:
                raise _too_large(self.settings)
            self.file_handle.write(chunk)
            self.digest.update(chunk)
            return
        if len(self.part.data) + len(chunk) > MAX_FIELD_BYTES:
            raise ApiError(422, "validation_error", f"form field '{self.part.name}' is too long", self.part.name)
        self.part.data += chunk

    def on_part_end(self) -> None:
        if self.writing_file:
            assert self.file_handle is not None
            self.file_handle.close()
            self.writing_file = False
        else:
            value = self.part.data.decode("utf-8", "replace")
            if "\x00" in value:  # PostgreSQL text cannot hold it; no legitimate field needs it
                raise ApiError(422, "validation_error", f"form field '{self.part.name}' contains NUL", self.part.name)
            self.fields[self.part.name] = value

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.file_handle is not None and not self.file_handle.closed:
            self.file_handle.close()

    def discard(self) -> None:
        self.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


async def receive_upload(request: Request, settings: Settings, file_field: str = "file") -> ReceivedUpload:
    """Parse a multipart/form-data body as it streams in; the caller must `discard()` the file when done."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, "unsupported_media_type", "send the upload as multipart/form-data", file_field)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_mb * MIB + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(settings)  # refuse before reading a byte

    form = _StreamingForm(settings, file_field)
    callbacks = {name: getattr(form, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_end")}
    try:
        parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if not form.ended:
            raise ApiError(400, "invalid_multipart", "the multipart body is truncated")
    except FormParserError as exc:
        form.discard()
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exception_text(exc)}") from exc
    except BaseException:
        form.discard()
        raise
    form.close()
    if form.file_path is None:
        raise ApiError(422, "validation_error", f"the form needs a file field '{file_field}'", file_field)
    log.info("received upload %r (%d bytes) into %s", form.filename, form.size_bytes, form.file_path.name)
    return ReceivedUpload(fields=form.fields, path=form.file_path, filename=form.filename,
                          size_bytes=form.size_bytes, sha256=form.digest.hexdigest(), folder=form.folder)


# --- form fields ----------------------------------------------------------------------------------------


def parse_fields(form_model: type[FormModel], fields: dict[str, str]) -> FormModel:
    """Validate the text fields with a pydantic model; errors come out like any other 422, naming the field."""
    try:
        return form_model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def multipart_openapi(form_model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """The request body as OpenAPI sees it: the form model's fields plus the binary `file` part.

    Needed because the body is parsed by hand (to stream it), so FastAPI cannot derive it.
    """
    schema = form_model.model_json_schema()
    properties = {"file": {"type": "string", "format": "binary", "description": "The file to upload."},
                  **schema.get("properties", {})}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties,
                               "required": ["file", *schema.get("required", [])]},
                    "example": example,
                }
            },
        }
    }


def upload_route(
    form_model: type[BaseModel], example: dict[str, Any], *, summary: str, description: str
) -> dict[str, Any]:
    """The decorator options of an upload route: 201, rate-limited, its multipart body (`multipart_openapi`)
    and the upload errors, the same for every upload so their documents cannot drift apart."""
    return write_route(
        201, summary=summary, description=description, openapi_extra=multipart_openapi(form_model, example),
        responses=UPLOAD_ERROR_RESPONSES,
    )


# --- the upload routes' one path ------------------------------------------------------------------------


async def handle_upload(
    request: Request, settings: Settings, *, form_model: type[FormModel], store: Callable[..., Stored],
    present: Callable[[Stored], Answer],
) -> Answer:
    """Receive -> validate the text fields -> check and store -> answer, for every upload route.

    `store` is a service's keyword-only function with everything but `upload` and `form` bound;
    it does file and database work, so it runs in the thread pool. The received file is removed
    whatever happens (one that was kept has already been moved or converted away)."""
    upload = await receive_upload(request, settings)
    try:
        form = parse_fields(form_model, upload.fields)
        stored = await run_in_threadpool(store, upload=upload, form=form)
    finally:
        upload.discard()
    return present(stored)


# --- reading one upload back ----------------------------------------------------------------------------


def upload_not_found(noun: str) -> dict[int | str, dict[str, Any]]:
    """The documented answers of a route that reads one `noun` upload: 404 `<noun>_not_found`, then the common ones."""
    return {404: {"model": ErrorResponse, "description": f"`{noun}_not_found`."}, **ERROR_RESPONSES}


def owned_upload(
    read: Callable[[Session, str, str | None], Stored], noun: str, session: Session, upload_id: str, owner: str | None
) -> Stored:
    """`read`'s row for `upload_id` if `owner` may see it, else 404 `<noun>_not_found` naming `<noun>_id`:
    another key's upload answers exactly like a missing one, so its id stays unconfirmed."""
    try:
        return read(session, upload_id, owner)
    except repository.NotFound:
        raise ApiError(404, f"{noun}_not_found", f"no {noun} with id '{upload_id}'", f"{noun}_id") from None
