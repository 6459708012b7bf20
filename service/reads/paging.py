"""Opaque keyset cursors for the study API's paged lists."""

from __future__ import annotations

import base64
import binascii

from service.errors import ApiError


def encode_cursor(subject_id: str) -> str:
    """An opaque cursor: clients pass it back, never build it."""
    return base64.urlsafe_b64encode(subject_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, prefix: str = "S-") -> str:
    """The id a cursor stands for; a cursor we did not issue is a 400."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this service issued") from exc
    if not text.startswith(prefix) or "\x00" in text:  # ours never hold U+0000 (PostgreSQL 500)
        raise ApiError(400, "invalid_cursor", "the cursor is not one this service issued")
    return text
