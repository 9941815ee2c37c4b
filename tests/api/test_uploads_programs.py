"""torch.export programs (.pt2) as uploaded teachers: no arch, checked without running code, usable by a job."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from store.settings import Settings
from tests.api.support import digits_spec
from tests.teacher_code import OptionAResNet, export_program, marker_pickle, rewrite_archive


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_program(OptionAResNet(num_classes=10, in_channels=1), tmp_path_factory.mktemp("pt2") / "t.pt2",
                          in_channels=1, image_size=16)


def _upload(client: TestClient, path: Path, fields: dict[str, str] | None = None):
    return client.post("/v1/models", data=fields or {},
                       files={"file": ("teacher.pt2", path.read_bytes(), "application/octet-stream")})


def test_a_program_is_accepted_without_arch_and_kept_as_uploaded(
    client: TestClient, app_settings: Settings, program: Path
) -> None:
    response = _upload(client, program)

    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["arch"], record["num_classes"], record["in_channels"]) == ("exported", 10, 1)
    assert (app_settings.models_dir / f"{record['id']}.pt2").read_bytes() == program.read_bytes()
    assert list((app_settings.distill_home / "tmp").iterdir()) == []


def test_a_job_may_use_the_program_as_its_teacher_whatever_teacher_arch_says(
    client: TestClient, program: Path
) -> None:
    model_id = _upload(client, program).json()["id"]

    response = client.post("/v1/jobs", json=digits_spec(teacher={"weights": model_id}))

    assert response.status_code == 201, response.text


def test_form_counts_that_contradict_the_program_are_refused(client: TestClient, program: Path) -> None:
    response = _upload(client, program, {"num_classes": "5"})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "file"
    assert "10 classes" in response.json()["error"]["message"]


def test_a_program_whose_archive_holds_a_code_running_pickle_is_refused_and_nothing_runs(
    client: TestClient, app_settings: Settings, program: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    evil = rewrite_archive(program, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": marker_pickle(marker)})

    response = _upload(client, evil)

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_weights", "file")
    assert "not weights-only" in error["message"] and "weights_only=False" not in error["message"]
    assert not marker.exists()
    assert client.get("/v1/models").json()["items"] == []


def test_a_state_dict_without_arch_is_refused_naming_arch(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(OptionAResNet().state_dict(), path)

    response = client.post("/v1/models", files={"file": ("w.pth", path.read_bytes(), "application/octet-stream")})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "arch"
    assert ".pt2" in response.json()["error"]["message"]


@pytest.mark.parametrize("fields", [{"arch": "resnet20"}, {"arch": "resnet20", "num_classes": "10"}])
def test_a_checkpoint_of_other_code_gets_counts_and_the_program_route_not_a_class_count_error(
    client: TestClient, tmp_path: Path, fields: dict[str, str]
) -> None:
    state = {f"module.{key}": value for key, value in OptionAResNet().state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": state, "best_prec1": 91.3, "epoch": 200}, path)

    response = client.post("/v1/models", data=fields,
                           files={"file": ("checkpoint.pth.tar", path.read_bytes(), "application/octet-stream")})

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_weights", "file")
    message = error["message"]
    assert "cannot read num_classes" not in message
    assert " missing (" in message and " unexpected (" in message and "linear.weight" in message
    assert "torch.export program (.pt2)" in message and len(message) < 1200


def test_class_names_that_miss_a_dataset_class_are_a_422_naming_it(client: TestClient, program: Path) -> None:
    from tests.api.support import image_folder_zip

    dataset = client.post("/v1/datasets", files={"file": ("d.zip", image_folder_zip(("cat", "dog")), "application/zip")})
    assert dataset.status_code == 201, dataset.text
    model_id = _upload(client, program).json()["id"]
    names = ["cow", "cat", *[f"c{i}" for i in range(8)]]
    spec = digits_spec(dataset={"id": dataset.json()["id"], "image_size": 16},
                       teacher={"weights": model_id, "class_names": names})

    response = client.post("/v1/jobs", json=spec)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "teacher.class_names"
    assert "'dog'" in response.json()["error"]["message"]
    names[0] = "dog"
    assert client.post("/v1/jobs", json={**spec, "teacher": {"weights": model_id, "class_names": names}}).status_code == 201


def test_the_model_record_carries_class_names_and_normalize_into_jobs_that_leave_them_out(
    client: TestClient, program: Path
) -> None:
    import json

    names = [f"c{i}" for i in range(10)]
    normalize = {"mean": [0.7], "std": [0.2]}
    response = _upload(client, program, {"class_names": json.dumps(names), "normalize": json.dumps(normalize)})
    assert response.status_code == 201, response.text
    assert (response.json()["class_names"], response.json()["normalize"]) == (names, normalize)

    job = client.post("/v1/jobs", json=digits_spec(teacher={"weights": response.json()["id"]}))
    # digits' classes are "0".."9": the record's names do not know them, and the job says so by name
    assert job.status_code == 422 and job.json()["error"]["field"] == "teacher.class_names", job.text
    digits = [str(i) for i in range(10)]
    job = client.post("/v1/jobs", json=digits_spec(teacher={"weights": response.json()["id"], "class_names": digits}))
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["teacher"]["normalize"] == normalize
    assert job.json()["spec"]["teacher"]["class_names"] == digits  # the spec's own names win


@pytest.mark.parametrize(("fields", "field"), [
    ({"class_names": '["a", "b"]'}, "class_names"),  # 2 names, 10 outputs
    ({"class_names": "not json"}, "class_names"),
    ({"normalize": '{"mean": [0.5], "std": [0]}'}, "normalize"),
    ({"normalize": '"model"'}, "normalize"),
])
def test_bad_teacher_inputs_on_the_form_are_named(
    client: TestClient, program: Path, fields: dict[str, str], field: str
) -> None:
    response = _upload(client, program, fields)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_a_refused_teacher_input_leaves_no_model_file(client: TestClient, app_settings: Settings, program: Path) -> None:
    response = _upload(client, program, {"class_names": '["a", "b"]'})
    assert response.status_code == 422
    assert not app_settings.models_dir.is_dir() or not any(app_settings.models_dir.iterdir())
