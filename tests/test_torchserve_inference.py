"""Inference through a real TorchServe: every input form, every bad input, batches, load."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.torchserve_fixtures import *  # noqa: F403  (session fixtures: one shared server)
from tests.torchserve_fixtures import MODEL_NAME, bad_images, odd_images

pytestmark = pytest.mark.integration


def _url(client) -> str:
    return f"{client.inference_url}/predictions/{MODEL_NAME}"


def _auth(client) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.inference_token}"}


def _check_answer(response: requests.Response, label: str | None = None) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"label", "confidence", "probabilities", "model_version"}
    assert set(body["probabilities"]) == {"cat", "dog"}
    assert body["probabilities"][body["label"]] == body["confidence"]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["model_version"] == "test-1"
    if label:
        assert body["label"] == label
    return body


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_raw_body(ts_client, cat_photo, dog_photo, content_type):
    _check_answer(ts_client.predict_raw(MODEL_NAME, cat_photo, content_type), "cat")
    _check_answer(ts_client.predict_raw(MODEL_NAME, dog_photo, content_type), "dog")


@pytest.mark.parametrize("field", ["data", "file"])
def test_multipart_upload(ts_client, cat_photo, field):
    files = {field: ("cat.jpg", cat_photo, "image/jpeg")}
    response = requests.post(_url(ts_client), files=files, headers=_auth(ts_client), timeout=30)
    _check_answer(response, "cat")


def test_json_base64(ts_client, dog_photo):
    doc = {"image": base64.b64encode(dog_photo).decode()}
    response = requests.post(_url(ts_client), json=doc, headers=_auth(ts_client), timeout=30)
    _check_answer(response, "dog")


def test_explicit_version_path(ts_client, cat_photo):
    _check_answer(ts_client.predict_raw(MODEL_NAME, cat_photo, version="test-1"), "cat")


def test_every_format_and_mode_is_accepted(ts_client, cat_photo):
    for name, body in odd_images(cat_photo).items():
        response = ts_client.predict_raw(MODEL_NAME, body)
        assert response.status_code == 200, f"{name}: {response.text}"
        _check_answer(response)


def test_every_bad_input_gets_its_own_clear_4xx(ts_client, cat_photo):
    for name, (body, code, status) in bad_images(cat_photo).items():
        response = ts_client.predict_raw(MODEL_NAME, body)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        error = response.json()
        assert error["error"] == code, name
        assert len(error["message"]) > 10, name


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"image": "***not base64***"}, "base64"),
        ({"picture": "abc"}, '"image"'),
    ],
)
def test_bad_json_bodies(ts_client, doc, fragment):
    response = requests.post(_url(ts_client), json=doc, headers=_auth(ts_client), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"
    assert fragment in response.json()["message"]


def test_wrong_multipart_field_is_refused(ts_client, cat_photo):
    files = {"photo": ("cat.jpg", cat_photo, "image/jpeg")}
    response = requests.post(_url(ts_client), files=files, headers=_auth(ts_client), timeout=30)
    assert response.status_code == 400
    assert "photo" in response.json()["message"]


def test_concurrent_batch_with_one_bad_item(ts_client, cat_photo, dog_photo):
    """8 simultaneous requests fill dynamic batches; the bad one fails alone."""
    bodies = [cat_photo, dog_photo] * 4
    bodies[5] = b"not an image at all"
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: ts_client.predict_raw(MODEL_NAME, b), bodies))
    for i, response in enumerate(responses):
        if i == 5:
            assert response.status_code == 415
            assert response.json()["error"] == "not_an_image"
        else:
            _check_answer(response, "cat" if i % 2 == 0 else "dog")


def test_concurrent_requests(ts_client, cat_photo, dog_photo):
    bodies = [cat_photo, dog_photo] * 24
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda b: ts_client.predict_raw(MODEL_NAME, b), bodies))
    labels = [_check_answer(r)["label"] for r in responses]
    assert labels == ["cat", "dog"] * 24


def test_inference_without_token_is_refused(ts_client, cat_photo):
    response = requests.post(_url(ts_client), data=cat_photo, timeout=30)
    assert response.status_code in (400, 401, 403)
    response = requests.post(
        _url(ts_client), data=cat_photo, headers={"Authorization": "Bearer wrong"}, timeout=30
    )
    assert response.status_code in (400, 401, 403)


def test_error_body_is_json(ts_client):
    response = ts_client.predict_raw(MODEL_NAME, b"")
    assert response.headers.get("content-type", "").startswith("application/json")
    json.loads(response.text)
