"""A hostile IdP against a real proxy: what reaches the client's 502, status.json and the log."""

from __future__ import annotations

import re
import time

from harness import CLIENT_ID, CLIENT_SECRET, route

from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.server import Response

ESC = "\x1b[31m"


def _config(idp: AuthServer, api_port: int, seeded: str) -> dict:
    cred = {"grant": "refresh_token", "token_url": idp.token_url, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "refresh_token": seeded}  # fmt: skip
    return {"credentials": {"api": cred}, "routes": [route("api.example.test", api_port)]}


def _first_502(session, url: str, timeout: float = 15):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = session.get(url, timeout=30)
        if r.status_code == 502:
            return r
    raise AssertionError("no 502 within the deadline")


def test_a_rotated_refresh_token_quoted_by_the_idp_goes_nowhere(start_proxy, idp, api) -> None:
    idp.access_token_ttl = 2  # the first token is soon gone, and its refresh meets the IdP below
    seeded = idp.issue_refresh_token(CLIENT_ID, "read")
    proxy = start_proxy(_config(idp, api.port, seeded))
    s = proxy.session()
    url = f"https://api.example.test:{api.port}/"
    assert s.get(url, timeout=30).status_code == 200  # the seed is rotated: the store holds news
    presented: list[str] = []

    def quote_back(form: dict[str, str]) -> Response:
        presented.append(form["refresh_token"])
        desc = f"{ESC}refresh token {form['refresh_token']} is revoked\r\nX-Evil: 1"
        return Response.of_json(400, {"error": "invalid_grant", "error_description": desc})

    idp.token_answer = quote_back
    r = _first_502(s, url)
    rotated = presented[0]
    assert rotated != seeded
    status = s.get("http://authproxy.local/status.json", timeout=30).text
    for text in (r.text, status, proxy.output()):
        assert rotated not in text
        assert ESC not in text and "\\u001b" not in text
    body = r.json()
    assert body["reason"] == "invalid_grant" and "<redacted>" in body["message"]


def test_injected_header_material_is_a_clear_502(start_proxy, idp, api) -> None:
    idp.token_extra = {"access_token": "tok\r\nX-Injected: yes"}
    cred = {"grant": "client_credentials", "token_url": idp.token_url, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET}  # fmt: skip
    proxy = start_proxy({"credentials": {"api": cred},
                         "routes": [route("api.example.test", api.port)]})  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30)
    assert r.status_code == 502
    assert r.json()["reason"] == "invalid_token_response"
    assert re.fullmatch(r"[a-z_]+", r.json()["reason"])
    assert api.requests_log == []  # nothing was sent with it
