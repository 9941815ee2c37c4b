"""The service layer (api.services): the upload and spec rules run without HTTP and raise domain errors, which
api.errors renders once; the app's state is one typed object."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import api.services
from api.services.dataset_uploads import unpack_dataset
from api.services.errors import InvalidFormValue, UnsafeArchive
from api.services.model_uploads import check_weights
from api.services.upload_staging import ReceivedUpload, new_staging_dir
from api.state import AppState
from core.errors import DataError, DistillError, WeightsError
from store.settings import Settings
from tests.api.support import weights_bytes, zip_bytes

# What would tie a rule to HTTP: the web framework, the multipart parser, or the API's HTTP modules.
_HTTP_IMPORTS = ("fastapi", "starlette", "python_multipart", "api.errors", "api.deps", "api.routes", "api.uploads")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return found | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_services_import_nothing_from_http() -> None:
    folder = Path(api.services.__file__).parent
    offending = {
        module.name: sorted(name for name in _imports(module)
                            if any(name == banned or name.startswith(f"{banned}.") for banned in _HTTP_IMPORTS))
        for module in sorted(folder.glob("*.py"))
    }
    assert {name: found for name, found in offending.items() if found} == {}


def _settings(tmp_path: Path) -> Settings:
    database_url = f"sqlite:///{tmp_path / 'unused.db'}"  # never opened: the checks do not touch the database
    return Settings(DISTILL_HOME=tmp_path / "home", DATABASE_URL=database_url)  # type: ignore[call-arg]


def _received(tmp_path: Path, name: str, data: bytes) -> ReceivedUpload:
    path = tmp_path / f"received-{name}"
    path.write_bytes(data)
    return ReceivedUpload(fields={}, path=path, filename=name, size_bytes=len(data), sha256="0" * 64)


@pytest.mark.parametrize(("members", "error", "code"), [
    ({"../evil.txt": b"x"}, UnsafeArchive, "unsafe_archive"),
    ({"train/cat/0.png": b"not an image"}, DataError, "invalid_dataset"),
])
def test_dataset_checks_raise_domain_errors_naming_the_file(
    tmp_path: Path, members: dict[str, bytes], error: type[DistillError], code: str
) -> None:
    settings = _settings(tmp_path)
    upload = _received(tmp_path, "data.zip", zip_bytes(members))

    with pytest.raises(error) as raised:
        unpack_dataset(upload, staging=new_staging_dir(settings), settings=settings)

    assert (raised.value.code, raised.value.field) == (code, "file")
    assert not (tmp_path / "evil.txt").exists()


def test_weight_checks_raise_domain_errors_naming_the_file_or_the_form_field(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(weights_bytes(tmp_path, "cnn", 10, 1))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")

    with pytest.raises(WeightsError) as unreadable:
        check_weights(junk, arch="cnn", num_classes=None, in_channels=None)
    with pytest.raises(WeightsError) as misfit:
        check_weights(weights, arch="cnn", num_classes=7, in_channels=None)
    checked = check_weights(weights, arch="cnn", num_classes=None, in_channels=None)

    assert (unreadable.value.code, unreadable.value.field) == ("invalid_weights", "file")
    assert (misfit.value.code, misfit.value.field) == ("invalid_weights", "file")
    assert (checked.num_classes, checked.in_channels, checked.is_safetensors) == (10, 1, True)
    assert InvalidFormValue.code == "validation_error"


def test_the_app_state_is_one_typed_object_shared_by_every_route(client: TestClient) -> None:
    state = client.app.state  # type: ignore[attr-defined]

    assert isinstance(state, AppState)
    assert state.event_hub is not None and state.documents is not None
    assert client.get("/v1/jobs").status_code == 200  # the documented route and the fast path read it alike
    assert client.get("/v1/jobs?unused=1").status_code == 200
