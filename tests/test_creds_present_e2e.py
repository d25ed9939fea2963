"""Token presentation per route, end to end through the proxy: another header with a
template, a query parameter (redacted in the flow file and the audit log like a header),
and a real `git clone` over HTTPS with Basic `x-access-token` and a GitHub App's token."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import CLIENT_ID, CLIENT_SECRET, route
from mitmproxy import io
from support.git_server import GitServer
from support.keys import new_key, pem, write_private

from proxy_addon.demo.github_app import GitHubAppServer
from proxy_addon.present import parse_present


def cc(idp: Any) -> dict[str, Any]:
    return {"grant": "client_credentials", "token_url": idp.token_url, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET}  # fmt: skip


def issued_tokens(idp: Any) -> list[str]:
    with idp._lock:
        return list(idp._access)


@pytest.mark.parametrize(
    "present",
    [{"header": "X-Api-Key"}, {"header": "Authorization", "value": "token {token}"},
     {"query": "api_key"}, {"basic": "x-access-token"}],
    ids=["x-api-key", "token-scheme", "query", "basic"],
)  # fmt: skip
def test_presentations_reach_the_api_and_are_redacted(
    tmp_path: Path, start_proxy, idp, api, present: dict[str, str]
) -> None:
    api.expect = parse_present(present)
    flows, audit = tmp_path / "flows.mitm", tmp_path / "audit.jsonl"
    proxy = start_proxy(
        {"credentials": {"api": cc(idp)},
         "routes": [route("api.example.test", api.port, present=present)]},
        "--save-flows", str(flows), "--audit-log", str(audit),
    )  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/v1/items?q=1", timeout=30)
    assert r.status_code == 200, r.text
    assert api.requests_log[-1]["authorized"]
    proxy.stop()
    (token,) = issued_tokens(idp)
    for name, data in (("flows", flows.read_bytes()), ("audit", audit.read_bytes()),
                       ("log", proxy.output().encode())):  # fmt: skip
        assert token.encode() not in data, name
    with flows.open("rb") as f:
        (flow,) = list(io.FlowReader(f).stream())
    assert "q=1" in flow.request.path  # the client's own query is kept
    if "query" in present:
        assert flow.request.query["api_key"].startswith("<redacted:api:")
    else:
        name = present.get("header", "authorization").lower()
        assert "<redacted:api:" in flow.request.headers[name]


def test_git_clone_with_basic_x_access_token(tmp_path: Path, start_proxy, pki) -> None:
    key = new_key("RSA")
    key_file = write_private(tmp_path / "app.pem", pem(key))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.test",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@example.test")  # fmt: skip
    work, bare = tmp_path / "work", tmp_path / "git" / "repo.git"
    (tmp_path / "git").mkdir()
    for args in (["init", "-q", "-b", "main", str(work)],
                 ["init", "-q", "--bare", "-b", "main", str(bare)]):  # fmt: skip
        subprocess.run(["git", *args], check=True, env=env, timeout=30)
    (work / "README").write_text("hello\n")
    for args in (
        ["add", "README"],
        ["commit", "-q", "-m", "one"],
        ["push", "-q", str(bare), "main"],
    ):
        subprocess.run(["git", "-C", str(work), *args], check=True, env=env, timeout=30)

    with (
        GitHubAppServer(pki) as gh,
        GitServer(tmp_path / "git", gh.is_valid, pki, basic_user="x-access-token") as server,
    ):
        gh.add_app(7, key.public_key())
        gh.add_installation(8, 7, ("repo",))
        proxy = start_proxy({
            "credentials": {"gh": {"grant": "github_app", "app_id": "7", "installation_id": "8",
                                   "private_key_file": str(key_file), "api_url": gh.url}},
            "routes": [route("git.example.test", server.port, "gh",
                             present={"basic": "x-access-token"})],
        })  # fmt: skip
        clone = tmp_path / "clone"
        r = subprocess.run(
            ["git", "clone", "-q", f"https://git.example.test:{server.port}/repo.git", str(clone)],
            capture_output=True, text=True, timeout=60,
            env={**env, "HTTPS_PROXY": proxy.url, "GIT_SSL_CAINFO": str(proxy.ca)},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert (clone / "README").read_text() == "hello\n"
        log = server.requests_log
        assert log and all(e["authorized"] for e in log), log
        (token,) = list(gh.tokens)
        assert token not in proxy.output() and token not in r.stderr
        assert gh.requests == 1


def test_api_expecting_other_presentation_refuses_bearer(start_proxy, idp, api) -> None:
    # The demo API really checks where the token is: a Bearer route to it gets 401.
    api.expect = parse_present({"header": "X-Api-Key"})
    proxy = start_proxy({"credentials": {"api": cc(idp)},
                         "routes": [route("api.example.test", api.port)]})  # fmt: skip
    r = proxy.session().get(f"https://api.example.test:{api.port}/", timeout=30)
    assert r.status_code == 401
