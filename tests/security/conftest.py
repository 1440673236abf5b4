"""The security tests reuse the ops fixtures: the admin bearer token in the environment, a remote client."""

from tests.ops.conftest import admin_tokens, remote_session

__all__ = ["admin_tokens", "remote_session"]
