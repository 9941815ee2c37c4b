"""POST /v1/datasets with a JSON body: a dataset that stays in a bucket (a real moto S3 server)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.bucket_data import photos, put_image_folder, shards
from tests.services import S3Server


@pytest.fixture
def bucket_client(make_client: Callable[..., TestClient], s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    return make_client()


def test_an_image_folder_prefix_registers_like_an_upload(bucket_client: TestClient, s3: S3Server) -> None:
    bucket, files = s3.create_bucket("photos"), photos()
    put_image_folder(s3.client(), bucket, "team/flowers/", files)
    answer = bucket_client.post("/v1/datasets", json={"uri": f"s3://{bucket}/team/flowers/", "name": "flowers"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["kind"], body["class_names"], body["num_train"], body["num_test"], body["test_split"]) == (
        "s3-imagefolder", ["c0", "c1"], 32, 12, "val")
    assert body["size_bytes"] == sum(len(data) for data in files.values()) and body["name"] == "flowers"
    assert bucket not in answer.text  # the uri is not echoed back
    assert bucket_client.get(f"/v1/datasets/{body['id']}").json()["num_train"] == 32


def test_tar_shards_register_with_their_classes_and_counts(bucket_client: TestClient, s3: S3Server) -> None:
    bucket, client = s3.create_bucket("shards"), s3.client()
    for key, data in shards(photos()).items():
        client.put_object(Bucket=bucket, Key=f"wds/{key}", Body=data)
    answer = bucket_client.post("/v1/datasets", json={"uri": f"s3://{bucket}/wds/"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["kind"], body["class_names"], body["num_train"], body["num_test"], body["test_split"], body["name"]) \
        == ("s3-shards", ["c0", "c1"], 32, 12, "val", "wds")


@pytest.mark.parametrize("case", ["malformed", "empty-prefix", "one-class", "no-bucket", "unknown-key"])
def test_bad_references_are_422_naming_the_field(bucket_client: TestClient, s3: S3Server, case: str) -> None:
    bucket = s3.create_bucket("bad")
    if case == "one-class":
        put_image_folder(s3.client(), bucket, "one/", {k: v for k, v in photos().items() if "/c0/" in k})
    body = {"malformed": {"uri": "http://example.com/x"}, "empty-prefix": {"uri": f"s3://{bucket}/nothing/"},
            "one-class": {"uri": f"s3://{bucket}/one/"}, "no-bucket": {"uri": "s3://no-such-bucket-here/x/"},
            "unknown-key": {"uri": f"s3://{bucket}/x/", "secret": "y"}}[case]
    answer = bucket_client.post("/v1/datasets", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == ("secret" if case == "unknown-key" else "uri"), error
    assert "Traceback" not in answer.text


def test_a_registered_dataset_belongs_to_the_key_that_registered_it(
    make_client: Callable[..., TestClient], s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.faults.test_ownership import ALICE, BOB, as_key, keyed_client

    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    client = keyed_client(make_client)
    bucket = s3.create_bucket("owned")
    put_image_folder(s3.client(), bucket, "p/", photos())
    answer = client.post("/v1/datasets", json={"uri": f"s3://{bucket}/p/"}, headers=as_key(ALICE))
    assert answer.status_code == 201, answer.text
    dataset_id = answer.json()["id"]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=as_key(BOB)).status_code == 404
    assert client.get("/v1/datasets", headers=as_key(BOB)).json()["items"] == []
    assert [d["id"] for d in client.get("/v1/datasets", headers=as_key(ALICE)).json()["items"]] == [dataset_id]
    assert client.post("/v1/datasets", json={"uri": f"s3://{bucket}/p/"}).status_code == 401


def test_a_grayscale_prefix_registers_with_one_channel(bucket_client: TestClient, s3: S3Server) -> None:
    import io

    from PIL import Image

    bucket, client = s3.create_bucket("grey"), s3.client()
    for label in ("a", "b"):
        for i in range(3):
            buffer = io.BytesIO()
            Image.new("L", (8, 8), 40 * i).save(buffer, format="PNG")
            client.put_object(Bucket=bucket, Key=f"g/{label}/{i}.png", Body=buffer.getvalue())
    body = bucket_client.post("/v1/datasets", json={"uri": f"s3://{bucket}/g/"}).json()
    assert (body["in_channels"], body["num_train"], body["num_test"], body["test_split"]) == (1, 6, 0, None)
