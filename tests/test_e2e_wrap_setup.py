"""Issue 13 §2: `env` and `exec` extend the user's own setup; JVM tools; routes on loopback."""

from __future__ import annotations

import datetime
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import Proxy, cc_credential, route
from test_e2e_wrap import api_url, assert_authorized_call, clean_env, sh_values, wrapped_config

from proxy_addon.config import parse_config
from proxy_addon.config_lint import bypass_warnings
from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.wrap import covers, no_proxy_entries

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


def _own_ca(path: Path) -> str:
    """A CA certificate of the user's own (a corporate CA, say); returns its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "users-own-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    path.write_text(pem)
    return pem.strip()


# --- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "host", "expected"),
    [
        ("localhost", "localhost", True),
        ("example.com", "api.example.com", True),
        (".example.com", "api.example.com", True),
        ("*.example.com", "api.example.com", True),
        ("example.com", "*.example.com", True),
        ("x.example.com", "*.example.com", True),  # some routed names bypass
        ("other.com", "api.example.com", False),
        ("ample.com", "api.example.com", False),
        ("api.example.com:443", "api.example.com", True),
        ("127.0.0.0/8", "127.0.0.1", True),
        ("10.0.0.0/8", "127.0.0.1", False),
        ("::1", "::1", True),
        ("[::1]", "::1", True),
        ("*", "api.example.com", True),
        ("10.0.0.0/8", "api.example.com", False),
    ],
)
def test_covers(entry: str, host: str, expected: bool) -> None:
    assert covers(entry, host) is expected


def test_no_proxy_keeps_the_users_entries_but_never_a_routed_host() -> None:
    cfg = parse_config(
        {"credentials": {"a": cc_credential("https://idp.example.com/t")},
         "routes": [{"host": "localhost", "port": 8000, "scheme": "http", "allow_http": True,
                     "credential": "a"},
                    {"host": "*.corp.example", "credential": "a"}]},
        "cfg", env={},
    )  # fmt: skip
    env = {"NO_PROXY": "intranet.example, corp.example", "no_proxy": "localhost,.other"}
    assert no_proxy_entries(cfg, env) == ["intranet.example", ".other", "127.0.0.1", "::1"]
    warnings = bypass_warnings(cfg, env)
    assert any("NO_PROXY entry 'corp.example'" in w for w in warnings)
    assert any("no_proxy entry 'localhost'" in w for w in warnings)
    assert any("never use a proxy for loopback" in w for w in warnings)


# --- real programs ------------------------------------------------------------------------------


def test_exec_extends_the_users_ca_files_and_no_proxy(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer
) -> None:
    wrapped = wrapped_config(tmp_path, pki, idp, [route("api.example.test", api.port)])
    own = tmp_path / "own-ca.pem"
    own_pem = _own_ca(own)
    wrapped.env.update(REQUESTS_CA_BUNDLE=str(own), NO_PROXY="intranet.example,api.example.test")
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    done = wrapped.exec(sys.executable, "-c", show)
    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)
    assert env["NO_PROXY"].split(",") == ["intranet.example", "localhost", "127.0.0.1", "::1"]
    bundle = Path(env["REQUESTS_CA_BUNDLE"]).read_text()
    assert own_pem in bundle  # still trusted
    assert pki.ca_cert.read_text().strip() in bundle
    # And requests, which reads the variables, still gets through to the routed host.
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
