"""Assertions shared by the HTTP tests."""

from __future__ import annotations

from typing import Any

import requests


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error: the status, JSON with ``error``, never cached, never a trace."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body.get("error_description"), str)
    assert "Traceback" not in response.text
    assert response.headers.get("Cache-Control") == "no-store"
    return dict(body)


def assert_issued(response: requests.Response) -> dict[str, Any]:
    """An RFC 8693 §2.2.1 success response."""
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["access_token"], str)
    assert isinstance(body["expires_in"], int)
    assert "refresh_token" not in body
    return dict(body)
