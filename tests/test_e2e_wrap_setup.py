"""Issue 13 §2: `env` and `exec` extend the user's own setup; JVM tools; routes on loopback. The
pure rules (NO_PROXY, the CA bundle): test_unit_wrap.py."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Proxy, cc_credential, route
from support.keys import new_key, self_signed_cert
from test_e2e_wrap import api_url, assert_authorized_call, clean_env, sh_values, wrapped_config

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer

JAVA_CLIENT = """
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;

public class Get {
    public static void main(String[] args) throws Exception {
        HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
        try (InputStream in = c.getInputStream()) {
            System.out.println(new String(in.readAllBytes(), "UTF-8"));
        }
    }
}
"""


# --- real programs ------------------------------------------------------------------------------


def test_requests_gets_through_under_the_users_own_ca_file_and_no_proxy(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer
) -> None:
    # What the command's environment holds then: test_unit_wrap.py.
    wrapped = wrapped_config(tmp_path, pki, idp, [route("api.example.test", api.port)])
    own = self_signed_cert(tmp_path / "own-ca.pem", new_key("EC"), "users-own-ca")
    wrapped.env.update(REQUESTS_CA_BUNDLE=str(own), NO_PROXY="intranet.example,api.example.test")
    # requests, which reads both variables, still gets through to the routed host.
    call = f"import requests; print(requests.get({api_url(api, '/own')!r}, timeout=30).text)"
    done = wrapped.exec(sys.executable, "-c", call)
    assert done.returncode == 0, done.stderr
    assert_authorized_call(done.stdout, api, "/own")


def test_a_route_on_localhost_works_under_exec(
    tmp_path: Path, pki: Pki, idp: AuthServer, http_api: ApiServer
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    local = route("localhost", http_api.port, scheme="http", allow_http=True)
    wrapped = wrapped_config(tmp_path, pki, idp, [local])
    wrapped.env["NO_PROXY"] = "localhost"  # the user's own: it must not win over the route
    done = wrapped.exec("curl", "-sS", "--max-time", "30", f"http://localhost:{http_api.port}/lo")
    assert done.returncode == 0, done.stderr
    assert_authorized_call(done.stdout, http_api, "/lo")


def test_java_goes_through_the_proxy_with_env(
    start_proxy: Callable[..., Proxy], tmp_path: Path, idp: AuthServer, api: ApiServer
) -> None:
    if shutil.which("java") is None:
        pytest.skip("no java (apt-get install default-jdk-headless)")
    proxy = start_proxy(
        {"credentials": {"api": cc_credential(idp.token_url)},
         "routes": [route("api.example.test", api.port)]}
    )  # fmt: skip
    env = clean_env(tmp_path / "home")
    authproxy = [sys.executable, "-m", "proxy_addon", "--config", str(proxy.config_path)]
    out = subprocess.run(
        [*authproxy, "env"], capture_output=True, text=True, env=env, timeout=60, check=True
    ).stdout
    options = sh_values(out)["JAVA_TOOL_OPTIONS"]
    assert f"-Dhttps.proxyPort={proxy.port}" in options
    assert "authproxy-truststore.p12" in options
    source = tmp_path / "Get.java"
    source.write_text(JAVA_CLIENT)
    script = f'eval "$({shlex.join([*authproxy, "env"])})" || exit 99; java "$1" "$2"'
    r = subprocess.run(
        ["bash", "-c", script, "bash", str(source), api_url(api, "/java")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert_authorized_call(r.stdout.strip().splitlines()[-1], api, "/java")
