"""Request ids: the edge may set one (``x-request-id`` call metadata); the server logs every
line of the request under it and echoes it back, so one id follows a request across both logs.
Ids are echoed into logs and metadata, so only short printable ones are accepted."""

from __future__ import annotations

import re
import uuid

METADATA_KEY = "x-request-id"
PATTERN = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def is_valid(request_id: str) -> bool:
    return isinstance(request_id, str) and PATTERN.fullmatch(request_id) is not None
