"""The `authproxy` command as a user runs it: config errors, `check`, the demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import ROOT, run_cli

GOOD = """\
credentials:
  api:
    grant: client_credentials
    token_url: https://idp.example.test/token
    client_id: c
    client_secret: ${SECRET}
routes:
  - host: "*.Example.TEST."
    path: /v1
    credential: api
"""


def test_check_prints_the_route_table_without_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    r = run_cli("--config", str(cfg), "check", env={"SECRET": "s3cr3t-value"})
    assert r.returncode == 0, r.stderr
    assert "0: https://*.example.test:443/v1" in r.stdout
    assert "-> api" in r.stdout
    assert "s3cr3t-value" not in r.stdout + r.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    r = run_cli("check", env={"SECRET": "x", "AUTHPROXY_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert f"{cfg}: OK" in r.stdout


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (GOOD, {}, "credentials.api.client_secret: environment variable SECRET is not set"),
        (GOOD.replace("path:", "pathh:"), {"SECRET": "x"},
         "routes[0].pathh: unknown key (did you mean 'path'?)"),
        (GOOD.replace("credential: api", "credential: apii"), {"SECRET": "x"},
         "routes[0].credential: no credential named 'apii' (known: api)"),
        (GOOD.replace('"*.Example.TEST."', "evil*.example.test"), {"SECRET": "x"},
         "routes[0].host: 'evil*.example.test' is not a host name"),
        (GOOD.replace("https://idp", "http://idp"), {"SECRET": "x"},
         "credentials.api.token_url: expected an https:// URL"),
        ("listen: 0.0.0.0:8080\n", {},
         "listen: '0.0.0.0' is reachable from other machines; set proxy_auth"),
        (GOOD + "    scheme: http\n", {"SECRET": "x"},
         "routes[0].scheme: 'http' would send the token in clear text"),
        ("listen: [1, 2]\n", {}, "listen: expected a string, got a list"),
        ("routes: {}\n", {}, "routes: expected a list of routes, got a mapping"),
        ("credentials:\n  a: {grant: magic}\n", {},
         "credentials.a.grant: expected one of client_credentials, refresh_token, "
         "authorization_code, device_code, password, jwt_bearer, github_app, static, got 'magic'"),
        ("tokens: {refresh_leeway: soon}\n", {},
         "tokens.refresh_leeway: expected a number >= 0, got 'soon'"),
        ("a: [\n", {}, "not valid YAML: line 2, column 1"),
    ],
)  # fmt: skip
def test_bad_config_is_refused_with_file_key_and_expectation(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    for command in ("check", "run"):
        r = run_cli("--config", str(cfg), command, env={**env, "HOME": str(tmp_path)})
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert f"authproxy: {cfg}: {expected}" in r.stderr
        assert "Traceback" not in r.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("--config", str(tmp_path / "nope.yaml"), "check")
    assert r.returncode == 2
    assert "nope.yaml: no such file (pass --config, set AUTHPROXY_CONFIG" in r.stderr


def test_demo_runs_end_to_end() -> None:
    r = run_cli("demo", "--once")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-> HTTP 200" in r.stdout
    assert '"token_fp"' in r.stdout
    assert "curl --proxy" in r.stdout


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/demo" in readme.split("\n## ")[0]
    assert "./scripts/test" in readme.split("\n## ")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci
