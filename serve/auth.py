"""API-key access: optional on a loopback address, required on any other one.

The key comes from an environment variable (`serve.api_key_env`), never from a config file, and is never logged.
Clients send it as `Authorization: Bearer <key>` (what the `openai` client does) or `x-api-key: <key>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping


class InsecureBindError(RuntimeError):
    """The endpoint would listen on a non-loopback address without an API key."""


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a hostname: it may resolve to anything, so treat it as exposed
        return False


def load_key(env_name: str) -> str | None:
    """The API key from `env_name`, or None when unset or blank."""
    return os.environ.get(env_name, "").strip() or None


def require_key_for_host(host: str, key: str | None, env_name: str) -> None:
    """Refuse to serve on a non-loopback address without a key (raises InsecureBindError)."""
    if key is None and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve on {host!r} without an API key: set the environment variable {env_name} "
            "(clients then send 'Authorization: Bearer <key>'), or bind 127.0.0.1"
        )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries in `Authorization: Bearer …` or `x-api-key`, if any."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def key_matches(presented: str | None, key: str) -> bool:
    # Constant-time comparison, so response timing does not leak how much of a guess was right.
    return presented is not None and hmac.compare_digest(presented.encode(), key.encode())
