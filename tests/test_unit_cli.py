"""The `authproxy` command line in-process (`cli.main`): config errors, `check`, options, shell
completion, `tokens` and `login` where no sign-in is needed. What only a process shows (a closed
pipe, SIGTERM, the web UI, the demo) stays in test_e2e_cli*.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from harness import ROOT
from support.inproc_cli import authproxy

from proxy_addon import __version__
from proxy_addon.cli import _parser, parse_listen
from proxy_addon.completion import script
from proxy_addon.config import ConfigError, load_config
from proxy_addon.netutil import free_port
from proxy_addon.store.keys import Keyring
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token

Capsys = pytest.CaptureFixture[str]

CC = {"grant": "client_credentials", "token_url": "https://idp.example.com/token",
      "client_id": "c", "client_secret": "s"}  # fmt: skip
CODE = {"grant": "authorization_code", "token_url": "https://idp.example.com/token",
        "authorization_url": "https://idp.example.com/authorize", "client_id": "c"}  # fmt: skip


def _store(tmp_path: Path) -> dict[str, str]:
    return {"path": str(tmp_path / "state" / "tokens.db"),
            "key_file": str(tmp_path / "keys" / "store.key")}  # fmt: skip


def _config(tmp_path: Path, credentials: dict[str, object], **extra: object) -> Path:
    path = tmp_path / "config.yaml"
    routes = [{"host": f"{n}.example.com", "credential": n} for n in credentials]
    path.write_text(yaml.safe_dump(
        {"store": _store(tmp_path), "credentials": credentials, "routes": routes, **extra}
    ))  # fmt: skip
    return path


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHPROXY_KEY", "")


# --- conventions (issue 13 §3) -----------------------------------------------------------------


@pytest.mark.usefixtures("no_key")
def test_config_before_or_after_the_command(tmp_path: Path, capsys: Capsys) -> None:
    path = _config(tmp_path, {"a": CC})
    for argv in (("--config", str(path), "check"), ("check", "--config", str(path))):
        r = authproxy(capsys, *argv)
        assert r.returncode == 0, r.stderr
        assert f"{path}: OK" in r.stdout


def test_version_and_one_line_descriptions(capsys: Capsys) -> None:
    r = authproxy(capsys, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"authproxy {__version__}"
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    assert all(h and "\n" not in h for h in helps.values()), helps


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8080", ("127.0.0.1", 8080)), ("0.0.0.0:1", ("0.0.0.0", 1)),
     ("[::1]:9", ("::1", 9)), ("localhost:80", ("localhost", 80))],
)  # fmt: skip
def test_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["::1:9", "host:", "70000", "a:b"])
def test_bad_listen(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_a_port_in_use_names_listen(tmp_path: Path, capsys: Capsys) -> None:
    # `run` looks at the port before anything else: nothing starts in this process.
    path = _config(tmp_path, {"a": CC})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = authproxy(capsys, "--config", str(path), "run", "--listen", str(port))
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--listen" in r.stderr
    assert "--mode" not in r.stderr
    assert not (tmp_path / "state").exists()  # the store was never opened


def test_bash_completion() -> None:
    text = script(_parser(), "bash")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        r = subprocess.run(
            ["bash", "-c", f'{text}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
             '_authproxy; printf "%s\\n" "${COMPREPLY[@]}"'],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return r.stdout.split()

    assert complete("authproxy", "rel") == ["reload"]
    assert complete("authproxy", "--config", "x.yaml", "to") == ["tokens"]
    assert "--listen" in complete("authproxy", "run", "--li")
    assert complete("authproxy", "completion", "--c") == ["--config"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts(shell: str, capsys: Capsys) -> None:
    text = script(_parser(), shell)
    assert "reload" in text and ("-l listen" if shell == "fish" else "--listen") in text
    if shell == "fish":
        assert "complete -c authproxy -n __fish_use_subcommand -a tokens" in text
    if shutil.which(shell):
        r = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    done = authproxy(capsys, "completion", shell)
    assert done.returncode == 0 and done.stdout == text


@pytest.mark.usefixtures("no_key")
def test_tokens_on_a_fresh_machine_and_its_exit_status(tmp_path: Path, capsys: Capsys) -> None:
    path = _config(tmp_path, {"a": CC})
    r = authproxy(capsys, "--config", str(path), "tokens")
    assert r.returncode == 0, r.stderr
    assert "no tokens stored yet" in r.stdout
    assert "key" not in r.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "keys").exists()
    path = _config(tmp_path, {"a": CC, "b": CODE})
    r = authproxy(capsys, "--config", str(path), "tokens")
    assert r.returncode == 1  # b needs a sign-in, as `gh auth status` says
    assert "needs login" in r.stdout


@pytest.mark.usefixtures("no_key")
def test_login_of_a_credential_without_sign_in(tmp_path: Path, capsys: Capsys) -> None:
    path = _config(tmp_path, {"a": CC, "s": {"grant": "static", "token": "t" * 20}})
    for name, grant in (("a", "client_credentials"), ("s", "static")):
        r = authproxy(capsys, "--config", str(path), "login", name)
        assert r.returncode == 2
        assert f"{name} uses grant {grant}, which needs no sign-in" in r.stderr


# --- check and config errors -------------------------------------------------------------------

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


def test_check_prints_the_route_table_without_secrets(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    monkeypatch.setenv("SECRET", "s3cr3t-value")
    r = authproxy(capsys, "--config", str(cfg), "check")
    assert r.returncode == 0, r.stderr
    assert "0: https://*.example.test:443/v1" in r.stdout
    assert "-> api" in r.stdout
    assert "s3cr3t-value" not in r.stdout + r.stderr


def test_config_from_environment_variable(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    monkeypatch.setenv("SECRET", "x")
    monkeypatch.setenv("AUTHPROXY_CONFIG", str(cfg))
    r = authproxy(capsys, "check")
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
    tmp_path: Path,
    text: str,
    env: dict[str, str],
    expected: str,
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    monkeypatch.delenv("SECRET", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in ("check", "run"):
        r = authproxy(capsys, "--config", str(cfg), command)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert f"authproxy: {cfg}: {expected}" in r.stderr
        assert "Traceback" not in r.stderr


def test_missing_config_file(tmp_path: Path, capsys: Capsys) -> None:
    r = authproxy(capsys, "--config", str(tmp_path / "nope.yaml"), "check")
    assert r.returncode == 2
    assert "nope.yaml: no such file (pass --config, set AUTHPROXY_CONFIG" in r.stderr


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "./scripts/demo" in readme.split("\n## ")[0]
    assert "./scripts/test" in readme.split("\n## ")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci


# --- check: what run refuses, and warnings -----------------------------------------------------


def _write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cred() -> dict[str, object]:
    return {"grant": "client_credentials", "token_url": "https://idp.example.com/token",
            "client_id": "c", "client_secret": "${SECRET}"}  # fmt: skip


@pytest.mark.usefixtures("no_key")
def test_check_warns_and_passes(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, {
        "store": _store(tmp_path),
        "credentials": {"a": _cred(), "spare": _cred()},
        "routes": [{"host": "*.example.com", "credential": "a"},
                   {"host": "api.example.com", "credential": "a"}],
    })  # fmt: skip
    monkeypatch.setenv("SECRET", "s")
    done = authproxy(capsys, "--config", str(path), "check")
    assert done.returncode == 0, done.stderr
    assert "warning: routes[1]" in done.stderr and "never matches" in done.stderr
    assert "warning: credentials.spare: no route uses it" in done.stderr


def test_check_reports_all_missing_variables(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        {
            "proxy_auth": "${AP_TEST_PW}",
            "credentials": {"a": {**_cred(), "client_secret": "${AP_TEST_S}"}},
        },
    )
    monkeypatch.delenv("AP_TEST_PW", raising=False)
    monkeypatch.delenv("AP_TEST_S", raising=False)
    done = authproxy(capsys, "--config", str(path), "check")
    assert done.returncode == 2
    assert "environment variables not set: " in done.stderr
    assert "AP_TEST_PW (for proxy_auth)" in done.stderr
    assert "AP_TEST_S (for credentials.a.client_secret)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.usefixtures("no_key")
def test_check_refuses_a_store_written_with_another_key(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    path = _write(
        tmp_path,
        {
            "store": store,
            "credentials": {"a": _cred()},
            "routes": [{"host": "api.example.com", "credential": "a"}],
        },
    )
    key = load_config(path, env={"SECRET": "s"}).credentials["a"].store_key
    other = Keyring.from_keys([Fernet.generate_key()], "elsewhere")
    with SqliteStore(Path(store["path"]), other) as s:
        s.put(key, Token(access_token="t" * 24, expires_at=4e9, obtained_at=0.0), None)
    keys = Path(store["key_file"])
    keys.parent.mkdir(mode=0o700)
    keys.write_text(Fernet.generate_key().decode() + "\n")
    keys.chmod(0o600)
    monkeypatch.setenv("SECRET", "s")
    done = authproxy(capsys, "--config", str(path), "check")
    assert done.returncode == 2, done.stdout
    assert "different key" in done.stderr
    assert "Traceback" not in done.stderr


def test_authproxy_reload_without_a_proxy_says_so(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{free_port()}", "routes": []}))
    done = authproxy(capsys, "--config", str(path), "reload")
    assert done.returncode == 1
    assert "nothing to reload" in done.stderr
    assert "Traceback" not in done.stderr
