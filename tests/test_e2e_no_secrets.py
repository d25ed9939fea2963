"""Issue 13 §2: env, exec, tokens and logout work without the config's secrets when they only
talk to a running proxy or the store; the commands that call the IdP still need them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from harness import Proxy, cc_credential, route
from test_e2e_wrap import api_url, assert_authorized_call, clean_env

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.idp import AuthServer

VAR = "AP_TEST_CLIENT_SECRET"


def test_commands_that_need_no_secret(
    start_proxy: Callable[..., Proxy], tmp_path: Path, idp: AuthServer, api: ApiServer
) -> None:
    cred = cc_credential(idp.token_url)
    secret = cred["client_secret"]
    cred["client_secret"] = "${" + VAR + "}"
    proxy = start_proxy(
        {"credentials": {"api": cred}, "routes": [route("api.example.test", api.port)]},
        env={VAR: secret},
    )
    with proxy.session() as s:
        assert s.get(api_url(api, "/first"), timeout=30).ok  # a token in the store
    env = clean_env(tmp_path / "home")
    assert VAR not in env

    def authproxy(*args: str) -> tuple[int, str, str]:
        import subprocess

        r = subprocess.run(
            [sys.executable, "-m", "proxy_addon", "--config", str(proxy.config_path), *args],
            capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return r.returncode, r.stdout, r.stderr

    code, out, err = authproxy("env")
    assert code == 0 and "HTTPS_PROXY" in out, err
    call = f"import requests; print(requests.get({api_url(api, '/exec')!r}, timeout=30).text)"
    code, out, err = authproxy("exec", "--", sys.executable, "-c", call)
    assert code == 0, err
    assert_authorized_call(out, api, "/exec")
    code, out, err = authproxy("tokens")
    assert code == 0 and "api" in out, err
    code, out, err = authproxy("refresh", "api")
    assert code == 2 and f"environment variable {VAR} is not set" in err
    code, out, err = authproxy("logout", "api")
    assert code == 0, err
    assert "stored tokens deleted; not revoked at the provider (its client_secret is not" in out
    assert idp.revocations == 0
