"""The environment `authproxy env` prints and `exec` sets: the proxy variables, NO_PROXY (the
user's entries, never one covering a routed host), the CA variables, Node's and the JVM's
options; and its rendering for sh, fish and PowerShell. Pure: no I/O."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from .cafiles import BUNDLE_VARIABLES, TRUSTSTORE_PASSWORD, Files
from .config import Config
from .netutil import host_for_url

__all__ = ["NO_PROXY", "SHELLS", "client_host", "covers", "environment", "java_options",
           "no_proxy_entries", "proxy_url", "render"]  # fmt: skip

SHELLS = ("sh", "fish", "powershell")
NO_PROXY = "localhost,127.0.0.1,::1"


def client_host(listen_host: str) -> str:
    """Where a client on this machine reaches a proxy listening on `listen_host`."""
    if listen_host in ("", "0.0.0.0"):  # noqa: S104 (a comparison, not a bind)
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


def proxy_url(config: Config, host: str, port: int, auth: str | None = None) -> str:
    """The proxy URL, with `auth` ("user:password", else the config's proxy_auth) in it."""
    netloc = f"{host_for_url(host)}:{port}"
    auth = auth or config.proxy_auth
    if auth:
        user, _, password = auth.partition(":")
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc}"
    return f"http://{netloc}"

def environment(
    config: Config,
    host: str,
    port: int,
    files: Files,
    current: Mapping[str, str] = os.environ,
    auth: str | None = None,
) -> dict[str, str]:
    """The variables to set, in a stable order. `current` supplies NO_PROXY, NODE_OPTIONS and
    JAVA_TOOL_OPTIONS to extend; `auth` replaces the config's proxy_auth in the proxy URL."""
    url = proxy_url(config, host, port, auth)
    bypass = no_proxy_entries(config, current)
    env = {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": ",".join(bypass),
        "no_proxy": ",".join(bypass),
    }
    env.update(dict.fromkeys(BUNDLE_VARIABLES, str(files.bundle)))
    env["NODE_EXTRA_CA_CERTS"] = str(files.extra_ca)
    env["WGETRC"] = str(files.wgetrc)
    # Node >= 22.21 / 24.5 honours HTTP(S)_PROXY itself under this; older Node gets the preload.
    env["NODE_USE_ENV_PROXY"] = "1"
    env["NODE_OPTIONS"] = _node_options(current.get("NODE_OPTIONS", ""), files.node_preload)
    if files.truststore is not None:
        env["JAVA_TOOL_OPTIONS"] = java_options(
            current.get("JAVA_TOOL_OPTIONS", ""), host, port, bypass, files.truststore
        )
    return env


def no_proxy_entries(config: Config, current: Mapping[str, str]) -> list[str]:
    """The user's NO_PROXY (and no_proxy) entries and loopback, minus every entry that covers
    a routed host: a client must never call a routed host around the proxy."""
    entries: list[str] = []
    for raw in (current.get("NO_PROXY", ""), current.get("no_proxy", ""), NO_PROXY):
        for entry in raw.split(","):
            entry = entry.strip()
            if entry and entry not in entries:
                entries.append(entry)
    return [e for e in entries if not any(covers(e, r.host) for r in config.routes)]


def covers(entry: str, route_host: str) -> bool:
    """Would a client skip the proxy for some host of `route_host` (a route's normalized host
    or `*.` pattern) because of the NO_PROXY `entry`? Read as curl, Python, Go and Node read
    it: `*` for all, a name for itself and the names below it, an address, a CIDR range."""
    entry = entry.strip().lower()
    if entry == "*":
        return True
    wildcard = route_host.startswith("*.")
    base = route_host.removeprefix("*.")
    with contextlib.suppress(ValueError):
        net = ipaddress.ip_network(entry.strip("[]"), strict=False)
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(base) in net
        return False
    name = entry.removeprefix("*").removeprefix(".")
    if name.count(":") == 1:  # host:port
        name = name.rpartition(":")[0]
    name = name.rstrip(".")
    if not name:
        return False
    if base == name or base.endswith("." + name):
        return True
    return wildcard and name.endswith("." + base)  # a name below a routed wildcard


def java_options(existing: str, host: str, port: int, bypass: Sequence[str], store: Path) -> str:
    """JAVA_TOOL_OPTIONS: the proxy and the truststore as system properties, ahead of the
    user's own options (a later -D wins, so the user's still can override ours)."""
    hosts = "|".join(
        ("*" + e if e.startswith(".") else e).replace("[", "").replace("]", "") for e in bypass
    )
    props = {
        "http.proxyHost": host, "http.proxyPort": str(port),
        "https.proxyHost": host, "https.proxyPort": str(port),
        # Set even when empty: Java's own default leaves out localhost, where routes may be.
        "http.nonProxyHosts": hosts,
        "javax.net.ssl.trustStore": str(store),
        "javax.net.ssl.trustStoreType": "PKCS12",
        "javax.net.ssl.trustStorePassword": TRUSTSTORE_PASSWORD,
    }  # fmt: skip
    ours = " ".join(_java_quote(f"-D{k}={v}") for k, v in props.items())
    if ours in existing:
        return existing
    return f"{ours} {existing}".strip()


def _java_quote(option: str) -> str:
    # The JVM splits JAVA_TOOL_OPTIONS on white space, and takes '...' or "..." as one.
    return f'"{option}"' if re.search(r"\s|'", option) else option

def render(env: Mapping[str, str], shell: str) -> str:
    if shell == "sh":
        head = '# eval "$(authproxy env)"'
        lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    elif shell == "fish":
        head = "# authproxy env --shell fish | source"
        lines = [f"set -gx {k} {_fish_quote(v)}" for k, v in env.items()]
    elif shell == "powershell":
        head = "# authproxy env --shell powershell | Out-String | Invoke-Expression"
        lines = [f"$env:{k} = {_powershell_quote(v)}" for k, v in env.items()]
    else:
        raise ValueError(f"unknown shell {shell!r}")
    return "\n".join([head, *lines]) + "\n"


def _fish_quote(value: str) -> str:
    # In fish's single quotes only \\ and \' are escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell_quote(value: str) -> str:
    # PowerShell takes the typographic single quotes as quotes too; doubling escapes each.
    return "'" + re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value) + "'"


def _node_options(existing: str, preload: Path) -> str:
    if str(preload) in existing:
        return existing
    path = str(preload)
    if re.search(r'[\s"\\]', path):
        path = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
        option = f"--require {path}"
    else:
        option = f"--require={path}"
    return f"{option} {existing}".strip()
