"""Teacher weights uploads: safetensors or weights-only state dicts, strict fit to the architecture, size-capped."""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from core.models import build_model
from store.settings import Settings
from tests.api.support import code_running_pickle, digits_spec, multipart_body, weights_bytes

FIELDS = {"arch": "cnn", "num_classes": "10", "in_channels": "1"}


def _upload(client: TestClient, data: bytes, fields: dict[str, str] | None = None, filename: str = "w.safetensors"):
    return client.post("/v1/models", data=FIELDS if fields is None else fields,
                       files={"file": (filename, data, "application/octet-stream")})


def _leftovers(settings: Settings) -> list[Path]:
    """Anything an upload left in the models or temp folders."""
    return [path for folder in (settings.models_dir, settings.distill_home / "tmp") if folder.is_dir()
            for path in folder.iterdir()]


def test_upload_stores_safetensors_and_records_the_model(
    client: TestClient, app_settings: Settings, tmp_path: Path
) -> None:
    data = weights_bytes(tmp_path, "cnn", 10, 1)

    response = _upload(client, data, {**FIELDS, "name": "digits-teacher"})

    assert response.status_code == 201, response.text
    model = response.json()
    assert model["id"].startswith("mdl_") and model["name"] == "digits-teacher"
    assert (model["arch"], model["num_classes"], model["in_channels"]) == ("cnn", 10, 1)
    assert model["size_bytes"] == len(data) and model["sha256"] == hashlib.sha256(data).hexdigest()
    assert (app_settings.models_dir / f"{model['id']}.safetensors").read_bytes() == data
    assert client.get(f"/v1/models/{model['id']}").json() == model
    assert [item["id"] for item in client.get("/v1/models").json()["items"]] == [model["id"]]
    assert list((app_settings.distill_home / "tmp").iterdir()) == []


def test_without_a_name_the_model_is_named_after_its_file(client: TestClient, tmp_path: Path) -> None:
    filename = "t" * 300 + ".safetensors"

    response = _upload(client, weights_bytes(tmp_path, "cnn", 10, 1), filename=filename)

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "t" * 200


def test_uploaded_model_can_be_the_teacher_of_a_job(client: TestClient, tmp_path: Path) -> None:
    model_id = _upload(client, weights_bytes(tmp_path, "cnn", 10, 1)).json()["id"]

    response = client.post("/v1/jobs", json=digits_spec(teacher={"arch": "cnn", "weights": model_id}))

    assert response.status_code == 201
    assert response.json()["spec"]["teacher"]["weights"] == model_id


def test_a_pickle_posing_as_weights_is_refused_and_its_payload_never_runs(
    client: TestClient, app_settings: Settings, tmp_path: Path
) -> None:
    proof = tmp_path / "proof-the-payload-works"
    pickle.loads(code_running_pickle(proof))  # the payload is live: loading it does create the file
    assert proof.exists()
    marker = tmp_path / "pwned"

    response = _upload(client, code_running_pickle(marker), filename="teacher.pt")

    assert response.status_code == 422
    assert response.json()["error"] == {"code": "invalid_weights", "field": "file",
                                        "message": response.json()["error"]["message"]}
    assert not marker.exists()
    assert _leftovers(app_settings) == []


def test_a_torch_save_state_dict_is_accepted_with_counts_read_from_it_and_stored_as_safetensors(
    client: TestClient, app_settings: Settings
) -> None:
    model = build_model("cnn", 10, 1)
    buffer = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 7}, buffer)

    response = _upload(client, buffer.getvalue(), {"arch": "cnn"}, filename="teacher.pth")

    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["num_classes"], record["in_channels"]) == (10, 1)
    stored = load_file(str(app_settings.models_dir / f"{record['id']}.safetensors"))
    assert all(torch.equal(stored[key], value) for key, value in model.state_dict().items())
    assert record["size_bytes"] == (app_settings.models_dir / f"{record['id']}.safetensors").stat().st_size


def test_a_truncated_pth_is_refused_naming_file(client: TestClient, app_settings: Settings) -> None:
    buffer = io.BytesIO()
    torch.save(build_model("cnn", 10, 1).state_dict(), buffer)

    response = _upload(client, buffer.getvalue()[:-300], filename="teacher.pth")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_weights"
    assert response.json()["error"]["field"] == "file"
    assert _leftovers(app_settings) == []


@pytest.mark.parametrize(
    ("fields", "weights"),
    [
        ({"arch": "resnet8", "num_classes": "10", "in_channels": "1"}, ("cnn", 10, 1)),  # other architecture
        ({"arch": "cnn", "num_classes": "5", "in_channels": "1"}, ("cnn", 10, 1)),  # other head size
        ({"arch": "cnn", "num_classes": "10", "in_channels": "3"}, ("cnn", 10, 1)),  # other input channels
    ],
)
def test_weights_that_do_not_fit_the_architecture_are_refused(
    client: TestClient, app_settings: Settings, tmp_path: Path, fields: dict, weights: tuple
) -> None:
    response = _upload(client, weights_bytes(tmp_path, *weights), fields)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_weights"
    assert response.json()["error"]["field"] == "file"
    assert _leftovers(app_settings) == []
    assert client.get("/v1/models").json()["items"] == []


@pytest.mark.parametrize("data", [b"", b"garbage", b"\xff" * 64])
def test_garbage_is_not_weights(client: TestClient, data: bytes) -> None:
    response = _upload(client, data)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_weights"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"arch": "resnet9", "num_classes": "10", "in_channels": "1"}, "arch"),
        ({"num_classes": "10", "in_channels": "1"}, "arch"),
        ({"arch": "cnn", "num_classes": "ten", "in_channels": "1"}, "num_classes"),
        ({"arch": "cnn", "num_classes": "1", "in_channels": "1"}, "num_classes"),
        ({"arch": "cnn", "num_classes": "10", "in_channels": "0"}, "in_channels"),
        ({**FIELDS, "colour": "red"}, "colour"),
    ],
)
def test_bad_form_fields_are_named(
    client: TestClient, app_settings: Settings, tmp_path: Path, fields: dict, field: str
) -> None:
    response = _upload(client, weights_bytes(tmp_path, "cnn", 10, 1), fields)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert _leftovers(app_settings) == []


def test_a_form_without_the_file_is_refused_naming_file(client: TestClient) -> None:
    body = b"".join(f'--b0\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in FIELDS.items()) + b"--b0--\r\n"

    response = client.post("/v1/models", content=body, headers={"Content-Type": "multipart/form-data; boundary=b0"})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "file"


def test_a_file_under_another_field_name_is_refused_naming_it(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/models", data=FIELDS, files={"weights": ("w.safetensors", b"x")})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "weights"
    assert _leftovers(app_settings) == []


def test_a_non_multipart_body_is_415(client: TestClient) -> None:
    response = client.post("/v1/models", json=FIELDS)

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_an_upload_over_the_cap_is_413_and_leaves_nothing(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_UPLOAD_MB=1)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]

    response = _upload(client, b"\0" * (3 * 1024 * 1024))  # Content-Length already says too much

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert _leftovers(settings) == []


def test_a_chunked_upload_is_cut_off_at_the_cap_while_streaming(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_UPLOAD_MB=1)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    body = multipart_body(FIELDS, "big.safetensors", b"\0" * (3 * 1024 * 1024))
    chunks = (body[start:start + 64 * 1024] for start in range(0, len(body), 64 * 1024))

    response = client.post("/v1/models", content=chunks,
                           headers={"Content-Type": "multipart/form-data; boundary=testboundary7d9"})

    assert "content-length" not in response.request.headers  # only counting streamed bytes can stop it
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert _leftovers(settings) == []


def test_a_chunked_upload_under_the_cap_is_accepted(client: TestClient, tmp_path: Path) -> None:
    body = multipart_body(FIELDS, "w.safetensors", weights_bytes(tmp_path, "cnn", 10, 1))

    response = client.post("/v1/models", content=iter([body[:1000], body[1000:5000], body[5000:]]),
                           headers={"Content-Type": "multipart/form-data; boundary=testboundary7d9"})

    assert response.status_code == 201, response.text


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.get("/v1/models/mdl_missing")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_bcos_weights_tell_their_class_count_and_a_job_whose_dataset_differs_is_refused(
    client: TestClient, tmp_path: Path
) -> None:
    """A B-cos head is a 1x1 B-cos convolution, not a linear layer: the class count still reads from it."""
    seven = _upload(client, weights_bytes(tmp_path, "bcos/cifar10_resnet8", 7, 1), {"arch": "bcos/cifar10_resnet8"})
    ten = _upload(client, weights_bytes(tmp_path, "bcos/cifar10_resnet8", 10, 1), {"arch": "bcos/cifar10_resnet8"})
    assert seven.status_code == 201 and ten.status_code == 201, (seven.text, ten.text)
    assert (seven.json()["num_classes"], seven.json()["in_channels"]) == (7, 1)
    assert (ten.json()["num_classes"], ten.json()["in_channels"]) == (10, 1)

    def job(model_id: str):
        return client.post("/v1/jobs", json=digits_spec(teacher={"arch": "bcos/cifar10_resnet8", "weights": model_id}))

    refused = job(seven.json()["id"])  # digits has 10 classes
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "teacher.weights"
    assert "7 classes but the dataset has 10" in refused.json()["error"]["message"]
    assert job(ten.json()["id"]).status_code == 201


def test_bcos_weights_that_contradict_the_forms_class_count_are_refused_naming_file(
    client: TestClient, app_settings: Settings, tmp_path: Path
) -> None:
    response = _upload(client, weights_bytes(tmp_path, "bcos/cifar10_resnet8", 7, 1),
                       {"arch": "bcos/cifar10_resnet8", "num_classes": "10", "in_channels": "1"})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "file"
    assert "it has 7 classes" in response.json()["error"]["message"]
    assert _leftovers(app_settings) == []
