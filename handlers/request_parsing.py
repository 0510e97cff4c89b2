"""Find the image in a TorchServe request row, whatever form the client sent it in.

Kept out of ``image_classifier.py`` because TorchServe requires the handler
module to define exactly one class, and this module defines an exception.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

# Form fields / JSON keys that carry the image, in order of preference.
IMAGE_FIELDS = ("data", "file", "body")


class BadRequestError(ValueError):
    """The request carries no usable image payload (not a decoding problem)."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def extract_image_bytes(row: dict[str, Any]) -> bytes:
    """The image bytes from one TorchServe request row, whatever form the client used.

    TorchServe gives each request as a dict of parameters: ``body`` for a raw
    body, the field name for multipart forms, and it has already parsed an
    ``application/json`` body into a dict (and ``text/*`` into a str).
    """
    if not isinstance(row, dict):
        raise BadRequestError("empty request")
    payload = None
    for field in IMAGE_FIELDS:
        if field in row and row[field] is not None:
            payload = row[field]
            break
    if payload is None:
        fields = ", ".join(sorted(row)) or "none"
        raise BadRequestError(
            f"no image found (fields sent: {fields}); send the raw image bytes as the body, "
            "a multipart field 'data' or 'file', or JSON {\"image\": \"<base64>\"}"
        )
    if isinstance(payload, bytearray):
        payload = bytes(payload)
    if isinstance(payload, bytes) and payload[:1] == b"{":
        # JSON sent with a non-JSON content type.
        try:
            payload = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequestError(f"body starts like JSON but is not valid JSON ({exc})") from exc
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BadRequestError(
                "text body is not JSON; send the image bytes with an image/* or "
                'application/octet-stream content type, or JSON {"image": "<base64>"}'
            ) from exc
    if isinstance(payload, dict):
        return _decode_base64_field(payload)
    if isinstance(payload, bytes):
        return payload
    raise BadRequestError(f"unsupported payload of type {type(payload).__name__}")


def _decode_base64_field(doc: dict[str, Any]) -> bytes:
    encoded = doc.get("image", doc.get("data"))
    if not isinstance(encoded, str):
        raise BadRequestError('JSON body needs a string field "image" with base64 image bytes')
    if encoded.startswith("data:") and "," in encoded:  # data URL
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f'"image" is not valid base64 ({exc})') from exc
