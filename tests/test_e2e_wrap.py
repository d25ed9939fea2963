"""`authproxy env` and `authproxy exec` end to end: unmodified tools (curl, wget, git, httpie,
Python requests, Node) pointed at a real proxy, calling the local API and a Git server that only
answer requests carrying a valid Bearer token. What needs no proxy process (the shell syntax of
`env`, the command's environment and exit status): test_unit_wrap.py."""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import HOSTS, ROOT, Proxy, cc_credential, route
from support.git_server import GitServer
from support.shell import sh_values

from proxy_addon.demo.api import ApiServer
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer

NODE_CLIENT = ROOT / "tests" / "support" / "node" / "client.js"
HTTPIE = Path(sys.executable).parent / "http"
# The developer's own settings that would change what the tools do under test.
_OWN_SETTINGS = {
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "NODE_USE_ENV_PROXY", "WGETRC",
    "AUTHPROXY_CONFIG", "GIT_DIR", "GIT_WORK_TREE", "JAVA_TOOL_OPTIONS",
}  # fmt: skip
VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS", "WGETRC", "NODE_USE_ENV_PROXY", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS",
)  # fmt: skip


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without proxy or CA settings, with a fresh HOME. The test
    host names resolve (tests/support/hosts) in Python processes: the proxy, which needs it.
    Clients never resolve them: they go through the proxy."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _OWN_SETTINGS and not k.lower().endswith("_proxy")
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        PYTHONPATH=str(HOSTS),
        AUTHPROXY_KEY="",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        **extra,
    )
    return env


def base_config(tmp_path: Path, pki: Pki, idp: AuthServer, routes: list[dict]) -> dict[str, Any]:
    return {
        "ca_certs": [str(pki.ca_cert)],
        "store": {
            "path": str(tmp_path / "state" / "tokens.db"),
            "key_file": str(tmp_path / "keys" / "store.key"),
        },
        "credentials": {"api": cc_credential(idp.token_url)},
        "routes": routes,
    }


@dataclass
class Wrapped:
    """A config whose proxy is not running, and `authproxy` commands for it."""

    config: Path
    listen_port: int
    env: dict[str, str]
    cwd: Path

    def authproxy(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy_addon", "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.cwd,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.authproxy("exec", "--", *command)

    def popen_exec(self, *command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "proxy_addon", "--config", str(self.config),
             "exec", "--", *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.env, cwd=self.cwd, start_new_session=True, preexec_fn=_default_sigint,
        )  # fmt: skip


def _default_sigint() -> None:
    """As from a terminal. A test run started in the background by a non-interactive shell
    ignores SIGINT, and an ignored signal is inherited and dropped by the kernel: exec would
    never see the one a test sends (the command's shell could not trap it either)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wrapped_config(
    tmp_path: Path, pki: Pki, idp: AuthServer, routes: list[dict], **extra: Any
) -> Wrapped:
    p = Proxy(tmp_path, {**base_config(tmp_path, pki, idp, routes), **extra}, name="authproxy")
    assert not listening(p.port)
    return Wrapped(p.config_path, p.port, clean_env(tmp_path / "home"), tmp_path)


@pytest.fixture
def wrapped(tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer) -> Wrapped:
    return wrapped_config(tmp_path, pki, idp, [route("api.example.test", api.port)])


def api_url(api: ApiServer, path: str) -> str:
    return f"https://api.example.test:{api.port}{path}"


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def proxy_processes(marker: str) -> list[int]:
    """Processes running `proxy_addon` whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"proxy_addon" in argv and any(marker.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def port_of(url: str) -> int:
    return int(url.strip().rsplit(":", 1)[1])


def assert_authorized_call(output: str, api: ApiServer, path: str) -> None:
    """The tool printed the API's 200 answer to `path`, and the API saw a valid token."""
    body = json.loads(output)
    assert body["ok"] is True and body["path"] == path and body["token_fp"], body
    seen = [e for e in api.requests_log if e["path"] == path]
    assert [(e["status"], e["authorized"]) for e in seen] == [(200, True)], seen


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of proc's stdout, within `timeout` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f"no output within {timeout}s; stderr: {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc.stdout.readline()


# --- env ----------------------------------------------------------------------------------------

# Quotes, a backslash, a dollar and spaces in every path the environment names.
AWKWARD = 'it\'s a "dir" \\ $HOME'


@pytest.fixture
def awkward_proxy(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer, proxies: list[Proxy]
) -> Proxy:
    work = tmp_path / AWKWARD
    work.mkdir()
    config = base_config(work, pki, idp, [route("api.example.test", api.port)])
    proxy = Proxy(work, {**config, "proxy_auth": "user:p@ss w'ord"})
    # A literal $ in the config is written $$ (a lone $ is an error, not kept literally).
    proxy.config_path.write_text(proxy.config_path.read_text().replace("$", "$$"))
    proxies.append(proxy)
    return proxy.start()


def test_env_for_sh_points_curl_wget_and_node_at_the_proxy(
    awkward_proxy: Proxy, tmp_path: Path, pki: Pki, api: ApiServer
) -> None:
    proxy = awkward_proxy
    env = clean_env(proxy.workdir / "home")  # the generated files go below an awkward HOME
    authproxy = [sys.executable, "-m", "proxy_addon", "--config", str(proxy.config_path)]
    out = subprocess.run(
        [*authproxy, "env"], capture_output=True, text=True, env=env, timeout=60, check=True
    ).stdout
    values = sh_values(out)
    assert list(values) == list(VARIABLES)
    url = f"http://user:p%40ss%20w%27ord@127.0.0.1:{proxy.port}"
    assert {values[k] for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")} == {url}
    assert values["NO_PROXY"] == values["no_proxy"] == "localhost,127.0.0.1,::1"
    bundle = Path(values["SSL_CERT_FILE"])
    assert bundle.name == "authproxy-ca-bundle.pem"
    assert bundle.parent.parent == proxy.workdir / "home" / ".local" / "state" / "authproxy" / (
        "clients"
    )
    assert not (proxy.confdir / "authproxy-ca-bundle.pem").exists()  # not in mitmproxy's dir
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
                 "AWS_CA_BUNDLE"):  # fmt: skip
        assert values[name] == str(bundle)
    text = bundle.read_text()
    for ca in (proxy.ca, pki.ca_cert):
        assert ca.read_text().strip() in text
    assert text.count("BEGIN CERTIFICATE") > 10  # the system's CAs too
    extra = Path(values["NODE_EXTRA_CA_CERTS"]).read_text()
    assert proxy.ca.read_text().strip() in extra
    assert Path(values["WGETRC"]).read_text().splitlines()[-1] == f"ca_certificate = {bundle}"

    # Evaluated by a real shell: the quoting survives, and the tools go through the proxy.
    script = f"""
        eval "$({shlex.join([*authproxy, "env"])})" || exit 99
        curl -sS --fail --max-time 30 "$1/curl"; echo
        wget -q -O - --timeout=30 "$1/wget"; echo
        node -p 'globalThis[Symbol.for("authproxy.node-proxy")] === true'
    """
    r = subprocess.run(
        ["bash", "-c", script, "bash", api_url(api, "")],
        capture_output=True, text=True, env=env, timeout=90,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    curl_out, wget_out, node_out = r.stdout.splitlines()
    assert_authorized_call(curl_out, api, "/curl")
    assert_authorized_call(wget_out, api, "/wget")
    assert node_out == "true"  # NODE_OPTIONS --require found the preload despite the quoting


# --- exec: tools --------------------------------------------------------------------------------

TOOLS: dict[str, Callable[[str], list[str]]] = {
    "curl": lambda url: ["curl", "-sS", "--fail", "--max-time", "30", url],
    "wget": lambda url: ["wget", "-q", "-O", "-", "--timeout=30", url],
    "httpie": lambda url: [str(HTTPIE), "--ignore-stdin", "--body", "--timeout=30", "GET", url],
    "requests": lambda url: [
        sys.executable, "-c",
        "import sys, requests; r = requests.get(sys.argv[1], timeout=30); r.raise_for_status(); "
        "print(r.text)",
        url,
    ],
}  # fmt: skip


def test_exec_tools_call_the_api_with_a_token(
    wrapped: Wrapped, api: ApiServer, idp: AuthServer
) -> None:
    # One exec, so one temporary proxy, for all of them: each reads the variables its own way.
    calls = [
        f"{shlex.join(TOOLS[tool](api_url(api, f'/{tool}')))} || exit {90 + i}; echo; echo {_END}"
        for i, tool in enumerate(sorted(TOOLS))
    ]
    r = wrapped.exec("sh", "-c", "\n".join(calls))
    assert r.returncode == 0, r.stderr
    outputs = r.stdout.split(_END)
    for tool, output in zip(sorted(TOOLS), outputs, strict=False):
        assert_authorized_call(output, api, f"/{tool}")
    assert outputs[-1].strip() == ""
    assert idp.token_requests == 1


_END = "--- end of output ---"


def test_exec_node_https_and_fetch(wrapped: Wrapped, api: ApiServer) -> None:
    r = wrapped.exec("node", str(NODE_CLIENT), api_url(api, "/node"))
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert set(results) == {"https_default_agent", "https_own_agent", "fetch"}
    for name, result in results.items():
        assert result["status"] == 200, (name, result)
        assert result["body"]["token_fp"], (name, result)
    seen = [e for e in api.requests_log if e["path"] == "/node"]
    assert [e["authorized"] for e in seen] == [True, True, True]


@pytest.fixture
def git_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A bare repository tmp_path/git/repo.git with one commit, and the work tree it came from."""
    env = clean_env(
        tmp_path / "git-home",
        GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="test@example.test",
        GIT_COMMITTER_NAME="Test", GIT_COMMITTER_EMAIL="test@example.test",
    )  # fmt: skip
    work, bare = tmp_path / "work", tmp_path / "git" / "repo.git"
    for args in (
        ["init", "-q", "-b", "main", str(work)],
        ["init", "-q", "--bare", "-b", "main", str(bare)],
    ):
        subprocess.run(["git", *args], check=True, env=env, timeout=30)
    commit(work, env, "README", "one\n")
    return work, env


def commit(work: Path, env: dict[str, str], name: str, text: str) -> str:
    (work / name).write_text(text)
    bare = work.parent / "git" / "repo.git"
    for args in (["add", name], ["commit", "-q", "-m", name], ["push", "-q", str(bare), "main"]):
        subprocess.run(["git", "-C", str(work), *args], check=True, env=env, timeout=30)
    return subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"],
        check=True, env=env, timeout=30, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_exec_git_clone_and_fetch(
    tmp_path: Path, pki: Pki, idp: AuthServer, git_repo: tuple[Path, dict[str, str]]
) -> None:
    work, git_env = git_repo
    with GitServer(tmp_path / "git", idp.is_valid, pki) as server:
        wrapped = wrapped_config(tmp_path, pki, idp, [route("git.example.test", server.port)])
        clone = tmp_path / "clone"

        # Directly, without the proxy (and so without a token), the server says no.
        direct = subprocess.run(
            ["git", "clone", "-q", f"https://127.0.0.1:{server.port}/repo.git",
             str(tmp_path / "direct")],
            capture_output=True, text=True, timeout=60,
            env={**wrapped.env, "GIT_SSL_CAINFO": str(pki.ca_cert)},
        )  # fmt: skip
        assert direct.returncode != 0
        assert [e["status"] for e in server.requests_log] == [401]

        url = f"https://git.example.test:{server.port}/repo.git"
        r = wrapped.exec("git", "clone", "-q", url, str(clone))
        assert r.returncode == 0, r.stderr
        assert (clone / "README").read_text() == "one\n"

        new = commit(work, git_env, "CHANGES", "two\n")
        r = wrapped.exec("git", "-C", str(clone), "fetch", "-q", "origin")
        assert r.returncode == 0, r.stderr
        fetched = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "origin/main"],
            capture_output=True, text=True, env=wrapped.env, timeout=30,
        ).stdout.strip()  # fmt: skip
        assert fetched == new

        through_proxy = server.requests_log[1:]
        assert len(through_proxy) >= 4  # clone and fetch: refs and pack each
        assert all(e["authorized"] and e["status"] == 200 for e in through_proxy), through_proxy
        assert any("git-upload-pack" in e["path"] and e["method"] == "POST" for e in through_proxy)


# --- exec: the process side ---------------------------------------------------------------------


def test_exec_passes_the_exit_status_and_stops_its_proxy(wrapped: Wrapped) -> None:
    r = wrapped.exec("sh", "-c", 'printf "%s" "$HTTPS_PROXY"; exit 7')
    assert r.returncode == 7
    assert r.stderr == ""
    # Nothing but the command's output; the temporary proxy's one-time password in the URL.
    assert re.fullmatch(r"http://authproxy:[\w-]{32}@127\.0\.0\.1:\d+", r.stdout), r.stdout
    port = port_of(r.stdout)
    assert port != wrapped.listen_port  # a temporary proxy, as nothing listened there
    assert not listening(port)
    assert proxy_processes(f"127.0.0.1:{port}") == []

    ok = wrapped.exec("true")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_exec_forwards_sigint_to_the_command_not_the_proxy(
    wrapped: Wrapped, api: ApiServer
) -> None:
    # On SIGINT the command calls the API once more: that works only if the proxy is still up.
    script = f"""
        trap 'kill $pid; curl -sS --fail --max-time 30 {api_url(api, "/after-int")}; exit 42' INT
        sleep 60 & pid=$!
        printf '%s\\n' "$HTTPS_PROXY"  # after $pid is set: the test sends SIGINT on this line
        wait $pid
    """
    proc = wrapped.popen_exec("sh", "-c", script)
    try:
        port = port_of(read_line(proc, timeout=60))
        os.kill(proc.pid, signal.SIGINT)  # to exec alone, not its process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, err
    assert_authorized_call(out, api, "/after-int")
    assert not listening(port)
    assert proxy_processes(f"127.0.0.1:{port}") == []


def test_exec_reports_a_proxy_that_cannot_start(
    tmp_path: Path, pki: Pki, idp: AuthServer, api: ApiServer
) -> None:
    not_a_directory = tmp_path / "confdir"
    not_a_directory.write_text("")
    wrapped = wrapped_config(
        tmp_path, pki, idp, [route("api.example.test", api.port)], confdir=str(not_a_directory)
    )
    r = wrapped.exec("sh", "-c", "echo ran")
    assert r.returncode == 2
    assert r.stdout == ""  # the command never ran
    assert "the temporary proxy did not start" in r.stderr
    assert str(not_a_directory) in r.stderr  # the proxy's own complaint, passed on


def test_exec_uses_the_running_proxy(
    start_proxy: Callable[..., Proxy], idp: AuthServer, api: ApiServer, tmp_path: Path
) -> None:
    proxy = start_proxy({
        "credentials": {"api": cc_credential(idp.token_url)},
        "routes": [route("api.example.test", api.port)],
    })  # fmt: skip
    wrapped = Wrapped(proxy.config_path, proxy.port, clean_env(tmp_path / "home"), tmp_path)
    script = 'printf "%s\\n" "$HTTPS_PROXY"; curl -sS --fail --max-time 30 "$1"'
    r = wrapped.exec("sh", "-c", script, "sh", api_url(api, "/reused"))
    assert r.returncode == 0, r.stderr
    used, body = r.stdout.splitlines()
    assert used == proxy.url
    assert_authorized_call(body, api, "/reused")
    assert idp.token_requests == 1  # the running proxy's one token (it made no call before)
    proxy.stop()
    assert "/reused" in proxy.output()  # the running proxy carried the request
