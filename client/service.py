"""`DistillClient`: the service's HTTP API as typed Python calls (used by the CLI; importable from a notebook).

    from client import DistillClient
    with DistillClient() as distill:                  # DISTILL_URL / DISTILL_API_KEY, or url=..., key=...
        job = distill.submit(spec)                     # a retry-safe POST (Idempotency-Key)
        job = distill.wait(job.id)                     # follows the event stream, reconnecting if it drops
        distill.download(job.id, "out/")               # every artifact (or only=["student.safetensors"])

It speaks only HTTP: nothing here imports the server's packages.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from client.errors import ApiError, ClientError, ConnectionFailed
from client.models import Dataset, Job, Model, Sweep
from client.sse import parse_events
from client.uploads import ProgressCallback, ProgressReader

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, KEY_ENV = "DISTILL_URL", "DISTILL_API_KEY"
_RETRYABLE_STATUS = {429, 502, 503, 504}  # rate-limited, or a proxy or server (re)starting


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event: `kind` is 'state' (status or stage changed) or 'progress'."""

    kind: str
    job: Job


def _error_from(response: httpx.Response) -> ApiError:
    """The server's `{"error": {code, message, field}}`, or a generic one when the body is not ours."""
    try:
        body = response.json()
        error = body["error"]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]), error.get("field"))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200]
        return ApiError(response.status_code, f"http_{response.status_code}", text or response.reason_phrase)


def _safe_relative(name: str) -> Path:
    """An artifact name as a path under the download folder; names that climb out are refused."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(part in ("..", "") for part in parts):
        raise ClientError(f"refusing artifact name {name!r}: not a relative path")
    return Path(*parts)


class DistillClient:
    """One connection pool to one service. Every call raises ApiError (server said no) or ConnectionFailed."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get(KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    def __enter__(self) -> DistillClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _post_retried_once(self, path: str, body: dict[str, Any], idempotency_key: str | None) -> httpx.Response:
        """POST `body` with an Idempotency-Key (a fresh one unless given), once more a second later if the
        connection dropped: safe, because the server answers a repeated key and body with what it already made."""
        key = idempotency_key or f"client-{uuid.uuid4()}"
        try:
            return self._request("POST", path, json=body, headers={"Idempotency-Key": key})
        except ConnectionFailed:
            time.sleep(1.0)
        return self._request("POST", path, json=body, headers={"Idempotency-Key": key})

    # --- jobs ---------------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> Job:
        """POST the spec. The Idempotency-Key (a fresh one unless given) makes the one retry after a dropped
        connection safe: the server answers a repeat with the job it already made."""
        return Job.from_json(self._post_retried_once("/v1/jobs", spec, idempotency_key).json())

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs_page(self, status: str | None = None, limit: int = 20,
                  cursor: str | None = None) -> tuple[list[Job], str | None]:
        """One page, newest first, and the cursor of the next page (None on the last)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        page = self._request("GET", "/v1/jobs", params=params).json()
        return [Job.from_json(item) for item in page["items"]], page.get("next_cursor")

    def list_jobs(self, status: str | None = None, page_size: int = 50, limit: int | None = None) -> Iterator[Job]:
        """Every job (or the first `limit`), newest first, fetching pages as the caller iterates."""
        cursor: str | None = None
        seen = 0
        while True:
            jobs, cursor = self.jobs_page(status, page_size, cursor)
            for job in jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            if cursor is None:
                return

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job at once, a running one at its next step (status `cancelling` until then)."""
        return Job.from_json(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    # --- events -------------------------------------------------------------------------------------------

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """One pass over the job's event stream; ends when the server ends it (after a terminal state)."""
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events",
                                   timeout=httpx.Timeout(10.0, read=60.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                for event in parse_events(response.iter_lines()):
                    if event.event in ("state", "progress"):
                        yield JobEvent(event.event, Job.from_json(json.loads(event.data)))
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"event stream of {job_id} from {self.url} broke: "
                                   f"{exc or type(exc).__name__}") from None

    def follow(self, job_id: str, *, reconnect_for_s: float = 300.0,
               on_reconnect: Callable[[ClientError], None] | None = None) -> Iterator[JobEvent]:
        """Events until the job ends. A stream that breaks or ends early (server restarted, proxy timeout) is
        reopened for the same job, retrying every second for up to `reconnect_for_s` while the server cannot be
        reached; `on_reconnect` hears about each outage once."""
        down_since: float | None = None
        while True:
            try:
                for event in self.events(job_id):
                    down_since = None
                    yield event
                    if event.job.finished:
                        return
                problem: ClientError = ConnectionFailed("the event stream ended before the job did")
            except ConnectionFailed as exc:
                problem = exc
            except ApiError as exc:
                if exc.status_code not in _RETRYABLE_STATUS:
                    raise
                problem = exc
            now = time.monotonic()
            if down_since is None:
                down_since = now
                if on_reconnect is not None:  # once per outage, not once per attempt
                    on_reconnect(problem)
            elif now - down_since > reconnect_for_s:
                raise ConnectionFailed(f"gave up following {job_id} after {reconnect_for_s:.0f}s: {problem.message}")
            time.sleep(1.0)

    def wait(self, job_id: str, *, on_event: Callable[[JobEvent], None] | None = None,
             reconnect_for_s: float = 300.0) -> Job:
        """Block until the job ends and return it (read once more, so metrics and artifacts are complete)."""
        for event in self.follow(job_id, reconnect_for_s=reconnect_for_s):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    # --- artifacts ----------------------------------------------------------------------------------------

    def download(self, job_id: str, out_dir: str | Path, only: list[str] | None = None,
                 on_bytes: ProgressCallback | None = None) -> list[Path]:
        """Save the job's artifacts (every one, or those named in `only`) under `out_dir`, keeping their
        relative names (heatmaps/0001.png); each file appears only once complete."""
        job = self.get(job_id)
        artifacts = {artifact.name: artifact for artifact in job.artifacts}
        wanted = list(artifacts) if not only else only
        missing = [name for name in wanted if name not in artifacts]
        if missing:
            known = ", ".join(sorted(artifacts)) or "none yet"
            raise ApiError(404, "artifact_not_found", f"job '{job_id}' has no artifact named "
                           f"{', '.join(missing)}; it has: {known}", "only")
        saved = []
        for name in wanted:
            destination = Path(out_dir) / _safe_relative(name)
            self._download_one(artifacts[name].url, destination, on_bytes)
            saved.append(destination)
        return saved

    def _download_one(self, url: str, destination: Path, on_bytes: ProgressCallback | None) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        try:
            # follow_redirects: with S3 storage the server may answer 307 to a presigned URL (httpx drops the
            # Authorization header when a redirect leaves the service's origin).
            with self._http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                with open(partial, "wb") as handle:
                    for chunk in response.iter_bytes(1 << 16):
                        handle.write(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ConnectionFailed(f"download of {url} broke: {exc or type(exc).__name__}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, destination)

    def artifact_bytes(self, job_id: str, name: str) -> bytes:
        """One small artifact in memory (metrics.json, a heatmap)."""
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts/{name}", follow_redirects=True).content

    # --- sweeps -------------------------------------------------------------------------------------------

    def submit_sweep(self, document: dict[str, Any], idempotency_key: str | None = None) -> Sweep:
        """POST {"base", "grid", "rank_by"}: one child job per combination, validated as a whole first.
        Retried once after a dropped connection, safely (Idempotency-Key)."""
        return Sweep.from_json(self._post_retried_once("/v1/sweeps", document, idempotency_key).json())

    def get_sweep(self, sweep_id: str) -> Sweep:
        return Sweep.from_json(self._request("GET", f"/v1/sweeps/{sweep_id}").json())

    def sweeps_page(self, limit: int = 20, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of sweep summaries (newest first) and the next cursor."""
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = self._request("GET", "/v1/sweeps", params=params).json()
        return list(page["items"]), page.get("next_cursor")

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        return Sweep.from_json(self._request("POST", f"/v1/sweeps/{sweep_id}/cancel").json())

    def leaderboard_csv(self, sweep_id: str) -> str:
        return self._request("GET", f"/v1/sweeps/{sweep_id}/leaderboard.csv").text

    def watch_sweep(self, sweep_id: str, interval_s: float = 1.0, reconnect_for_s: float = 300.0) -> Iterator[Sweep]:
        """The sweep every `interval_s` until it ends (one GET per tick, whatever the number of children);
        an unreachable server is retried for up to `reconnect_for_s`."""
        down_since: float | None = None
        while True:
            try:
                sweep = self.get_sweep(sweep_id)
                down_since = None
            except (ConnectionFailed, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status_code not in _RETRYABLE_STATUS:
                    raise
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_for_s:
                    raise
                time.sleep(interval_s)
                continue
            yield sweep
            if sweep.finished:
                return
            time.sleep(interval_s)

    # --- uploads ------------------------------------------------------------------------------------------

    def _upload(self, path: str | Path, route: str, fields: dict[str, str],
                on_bytes: ProgressCallback | None) -> dict[str, Any]:
        path = Path(path)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
        with handle:
            files = {"file": (path.name, ProgressReader(handle, on_bytes), "application/octet-stream")}
            # Uploads can be large: no read deadline while the server checks what it received.
            response = self._request("POST", route, data=fields, files=files,
                                     timeout=httpx.Timeout(30.0, read=None, write=None))
        return response.json()

    def upload_model(self, path: str | Path, arch: str | None = None, num_classes: int | None = None,
                     in_channels: int | None = None, name: str | None = None,
                     on_bytes: ProgressCallback | None = None) -> Model:
        """Teacher weights (.safetensors or a .pt/.pth state dict) for `arch`, or a torch.export program (.pt2,
        no arch); the returned id is a teacher.weights.

        Class count and input channels are read from the weights when left out.
        """
        fields = {"arch": arch} if arch else {}
        if num_classes is not None:
            fields["num_classes"] = str(num_classes)
        if in_channels is not None:
            fields["in_channels"] = str(in_channels)
        if name:
            fields["name"] = name
        return Model.from_json(self._upload(path, "/v1/models", fields, on_bytes))

    def upload_dataset(self, path: str | Path, name: str | None = None,
                       on_bytes: ProgressCallback | None = None) -> Dataset:
        """An ImageFolder .zip or a .npz; use the returned id as the spec's dataset.id."""
        fields = {"name": name} if name else {}
        return Dataset.from_json(self._upload(path, "/v1/datasets", fields, on_bytes))

    def models(self) -> list[Model]:
        return [Model.from_json(item) for item in self._request("GET", "/v1/models").json()["items"]]

    def datasets(self) -> list[Dataset]:
        return [Dataset.from_json(item) for item in self._request("GET", "/v1/datasets").json()["items"]]
