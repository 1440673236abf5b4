"""The id of one gateway process: `serve --instance-id` or `GATEWAY_INSTANCE_ID`, by default host:pid."""

from __future__ import annotations

import os
import re
import socket

INSTANCE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")  # it becomes part of a Redis key and a log field


def default_instance_id() -> str:
    """host:pid, with the host name reduced to the characters an id may hold."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:100] or "host"
    return f"{host}:{os.getpid()}"


def check_instance_id(value: str) -> str:
    """`value` if it is a valid id, else ValueError with the reason."""
    if not INSTANCE_ID.match(value):
        raise ValueError(
            f"instance id {value!r}: use 1-128 letters, digits and _ . : - (it names Redis keys)"
        )
    return value
