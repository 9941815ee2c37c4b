"""The OpenAPI document shows an example for every operation."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def _has_example(node: Any, components: dict[str, Any], seen: set[str] | None = None) -> bool:
    seen = set() if seen is None else seen
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            return _has_example(components[ref.rsplit("/", 1)[-1]], components, seen)
    return False


def test_every_operation_has_an_example_request_or_success_response(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    components = document["components"]["schemas"]
    missing = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            bodies = list(operation.get("requestBody", {}).get("content", {}).values())
            successes = [content for status, response in operation["responses"].items() if status.startswith("2")
                         for content in response.get("content", {}).values()]
            candidates = [*bodies, *successes, *[media.get("schema", {}) for media in [*bodies, *successes]]]
            if not any(_has_example(candidate, components) for candidate in candidates):
                missing.append(f"{method.upper()} {path}")
    assert missing == []


def test_uploads_document_their_multipart_fields(client: TestClient) -> None:
    document = client.get("/openapi.json").json()

    body = document["paths"]["/v1/models"]["post"]["requestBody"]["content"]["multipart/form-data"]

    assert set(body["schema"]["properties"]) == {"file", "arch", "num_classes", "in_channels", "name", "class_names",
                                                 "normalize"}
    assert body["schema"]["properties"]["file"]["format"] == "binary"


def test_the_job_schema_offers_every_registered_loss_unit_and_preset(client: TestClient) -> None:
    from core.spec import PRESETS
    from core.terms import registry

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    loss_fields = set(schemas["LossSpec"]["properties"])
    assert loss_fields == {name for unit in registry.units() for name in unit.fields}
    assert {"dkd", "dist"} <= loss_fields
    method = schemas["JobSpec"]["properties"]["method"]
    choices = next(option["enum"] for option in method["anyOf"] if "enum" in option)
    assert choices == list(PRESETS) and {"dkd", "dist"} <= set(choices)


def test_teachers_from_own_code_are_documented_with_examples(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/models"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "arch" not in body["schema"]["required"]
    assert "arch" not in body["examples"]["exported-program"]["value"]
    teacher = document["components"]["schemas"]["TeacherSpec"]["properties"]
    assert {"class_names", "normalize"} <= set(teacher)
    assert teacher["class_names"]["examples"] and teacher["normalize"]["examples"]
    jobs = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    exported = jobs["examples"]["exported-teacher"]["value"]["teacher"]
    assert {"class_names", "normalize"} <= set(exported)
