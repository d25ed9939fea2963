"""`authproxy env` and `exec` in-process: the variables and their shell syntax (`env_render`),
the files they point at (`cafiles`), the command's environment and exit status (`tempproxy`),
and `env` through `cli.main`. Real tools through a real proxy: test_e2e_wrap*.py."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import cc_credential
from support.inproc_cli import authproxy
from support.keys import new_key, self_signed_cert
from support.shell import sh_values

from proxy_addon.config import load_config, parse_config, unavailable
from proxy_addon.config_lint import bypass_warnings
from proxy_addon.demo.certs import Pki
from proxy_addon.netutil import free_port
from proxy_addon.tempproxy import _run_command, _Signals
from proxy_addon.wrap import MITMPROXY_CA, covers, environment, no_proxy_entries, prepare_files

Capsys = pytest.CaptureFixture[str]

# The developer's own settings that would change what `env` prints (as test_e2e_wrap.clean_env).
_OWN_SETTINGS = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "NODE_USE_ENV_PROXY", "WGETRC",
    "AUTHPROXY_CONFIG", "JAVA_TOOL_OPTIONS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
    "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
)  # fmt: skip
VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS", "WGETRC", "NODE_USE_ENV_PROXY", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS",
)  # fmt: skip
# Quotes, a backslash, a dollar and spaces in every path the environment names.
AWKWARD = 'it\'s a "dir" \\ $HOME'


def _clean_environ(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """This process's environment without proxy or CA settings, with HOME at `home`."""
    for name in _OWN_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("AUTHPROXY_KEY", "")


def _write_config(work: Path, pki: Pki, *, proxy_ca: bool = True, **extra: object) -> Path:
    """A config as the end-to-end tests write it, for a proxy that is not running; with
    `proxy_ca` its mitmproxy CA exists, as after a first start."""
    confdir = work / "mitmproxy"
    if proxy_ca:
        confdir.mkdir(parents=True)
        shutil.copy(pki.ca_cert, confdir / MITMPROXY_CA)
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "confdir": str(confdir),
        "ca_certs": [str(pki.ca_cert)],
        "store": {"path": str(work / "state" / "tokens.db"),
                  "key_file": str(work / "keys" / "store.key")},
        "credentials": {"api": cc_credential("https://idp.example.test/token")},
        "routes": [{"host": "api.example.test", "credential": "api"}],
        **extra,
    }  # fmt: skip
    path = work / "authproxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- NO_PROXY: pure rules -----------------------------------------------------------------------


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


# --- env ----------------------------------------------------------------------------------------


def test_env_without_the_proxy_ca_says_to_run_the_proxy_once(
    tmp_path: Path, pki: Pki, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_environ(monkeypatch, tmp_path / "home")
    path = _write_config(tmp_path, pki, proxy_ca=False)
    r = authproxy(capsys, "--config", str(path), "env")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "no proxy CA at" in r.stderr and "authproxy run" in r.stderr


def test_env_for_fish_and_powershell(
    tmp_path: Path, pki: Pki, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / AWKWARD
    _clean_environ(monkeypatch, work / "home")  # the generated files go below an awkward HOME
    path = _write_config(work, pki, proxy_auth="user:p@ss w'ord")
    # A literal $ in the config is written $$ (a lone $ is an error, not kept literally).
    path.write_text(path.read_text().replace("$", "$$"))

    def run(*args: str) -> str:
        r = authproxy(capsys, "--config", str(path), "env", *args)
        assert r.returncode == 0, r.stderr
        return r.stdout

    expected = sh_values(run())
    assert list(expected) == list(VARIABLES)
    assert expected["HTTPS_PROXY"].startswith("http://user:p%40ss%20w%27ord@127.0.0.1:")
    assert AWKWARD in expected["SSL_CERT_FILE"]
    assert run("--shell", "sh") == run()

    fish = run("--shell", "fish").splitlines()
    assert fish[0].startswith("#")
    fish_values = {}
    for line in fish[1:]:
        m = re.fullmatch(r"set -gx (\w+) '((?:[^'\\]|\\['\\])*)'", line)
        assert m, line
        fish_values[m[1]] = re.sub(r"\\(['\\])", r"\1", m[2])
    assert fish_values == expected

    powershell = run("--shell", "powershell").splitlines()
    assert powershell[0].startswith("#")
    ps_values = {}
    for line in powershell[1:]:
        m = re.fullmatch(r"\$env:(\w+) = '((?:[^']|'')*)'", line)
        assert m, line
        ps_values[m[1]] = m[2].replace("''", "'")
    assert ps_values == expected

    if shutil.which("fish"):  # the real thing: fish reads back every value as sh has it
        script = f"for name in {' '.join(VARIABLES)}; printf '%s\\n' $$name; end"
        r = subprocess.run(
            ["fish", "--no-config", "-c", f"source; {script}"], input=run("--shell", "fish"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [expected[k] for k in VARIABLES]
    if shutil.which("pwsh"):
        script = (
            "$input | Out-String | Invoke-Expression; "
            "$env:HTTPS_PROXY; $env:SSL_CERT_FILE; $env:NODE_OPTIONS"
        )
        r = subprocess.run(
            ["pwsh", "-NoProfile", "-NonInteractive", "-Command", script],
            input=run("--shell", "powershell"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [
            expected["HTTPS_PROXY"], expected["SSL_CERT_FILE"], expected["NODE_OPTIONS"],
        ]  # fmt: skip


# --- exec: the command's environment and status ------------------------------------------------


def test_exec_extends_the_users_ca_files_and_no_proxy(
    tmp_path: Path, pki: Pki, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_environ(monkeypatch, tmp_path / "home")
    config = load_config(_write_config(tmp_path, pki), need_secrets=False)
    own = self_signed_cert(tmp_path / "own-ca.pem", new_key("EC"), "users-own-ca")
    own_pem = own.read_text().strip()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(own))
    monkeypatch.setenv("NO_PROXY", "intranet.example,api.example.test")
    variables = environment(config, "127.0.0.1", 1, prepare_files(config))
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    capfd.readouterr()
    with _Signals() as signals:  # what the command itself sees, as exec starts it
        assert _run_command([sys.executable, "-c", show], variables, signals, set()) == 0
    env = json.loads(capfd.readouterr().out)
    assert env["NO_PROXY"].split(",") == ["intranet.example", "localhost", "127.0.0.1", "::1"]
    bundle = Path(env["REQUESTS_CA_BUNDLE"]).read_text()
    assert own_pem in bundle  # still trusted
    assert pki.ca_cert.read_text().strip() in bundle


def test_exec_command_killed_by_a_signal() -> None:
    with _Signals() as signals:
        code = _run_command(["sh", "-c", "kill -TERM $$"], {}, signals, set())
    assert code == 128 + signal.SIGTERM


def test_exec_command_not_found(capsys: Capsys) -> None:
    with _Signals() as signals:
        code = _run_command(["no-such-command-authproxy-test"], {}, signals, set())
    assert code == 127
    assert "no-such-command-authproxy-test: command not found" in capsys.readouterr().err


# --- without the config's secrets (issue 13 §2) -------------------------------------------------


def test_a_missing_secret_is_unavailable_not_empty(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "credentials:\n  a:\n    grant: client_credentials\n"
        "    token_url: https://idp.example.com/t\n    client_id: c\n"
        "    client_secret: ${AP_NOPE}\n"
        "  b:\n    grant: client_credentials\n"
        "    token_url: https://idp.example.com/t\n    client_id: c\n"
        "    client_secret_file: /nonexistent/secret\n"
        "proxy_auth: ${AP_PROXY_AUTH:-u:p}\n"
    )
    cfg = load_config(path, env={}, need_secrets=False)
    assert unavailable(cfg.credentials["a"].client_secret)
    assert unavailable(cfg.credentials["b"].client_secret)
    assert cfg.proxy_auth == "u:p"
