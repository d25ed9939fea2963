"""Keep the proxy to the user who runs it, and its secrets out of files and memory dumps.

- Every user of a machine can connect to 127.0.0.1. A client connection whose socket belongs to
  another local uid (the kernel says whose, see `peers`) is closed before it sends anything.
  Where the owner cannot be found (no /proc, a client on another machine), the connection is
  served only if proxy authentication is configured. With proxy authentication configured,
  other users may connect: the password is then the gate (`authproxy_peer_check=strict` keeps
  them out anyway; `authproxy exec` sets it on its temporary proxy).
- In `load` (so `mitmdump -s` gets it too): files the process creates from then on (flow files,
  HAR exports, audit logs) are 0600, no core dump is written, and the process is not dumpable
  (other users cannot read its memory or /proc/PID/environ, nor attach a debugger).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

from mitmproxy import connection, ctx
from mitmproxy.addonmanager import Loader

from proxy_addon.peers import endpoint, socket_owner

__all__ = ["LocalGuard", "harden_process", "make_private", "peer_refusal"]

logger = logging.getLogger("authproxy")

PEER_CHECKS = ("auto", "strict")
# Options naming files that hold flows or call records: made 0600 even if they already exist
# (mitmproxy rewrites an existing file in place, keeping its mode).
_PRIVATE_FILES = ("save_stream_file", "hardump", "authproxy_audit_log")
_PR_SET_DUMPABLE = 4


def peer_refusal(
    *, owner: int | None, me: int, password_gate: bool, strict: bool = False
) -> str | None:
    """Why a client whose socket `owner` owns (None: unknown) may not use the proxy of uid `me`,
    or None to serve it. `password_gate`: proxy authentication will be asked of it."""
    if owner == me:
        return None
    if owner is None:
        if password_gate:
            return None
        return (
            "which local user opened it cannot be established (the kernel knows no such socket), "
            "and no proxy password is configured to let it in instead (set proxy_auth: "
            "'user:password' in the config)"
        )
    if password_gate and not strict:
        return None
    return f"it belongs to another local user (uid {owner}, this proxy runs as uid {me})"


def password_gate(proxyauth: str | None) -> bool:
    """Whether mitmproxy's `proxyauth` option really asks for a password ("any" does not)."""
    return bool(proxyauth) and proxyauth != "any"


def harden_process() -> None:
    """0600 for new files, no core dumps, not dumpable. Process-wide; Linux for the last."""
    os.umask(0o077)
    try:
        import resource  # POSIX only

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except ImportError:
        pass
    except (ValueError, OSError) as e:
        logger.warning("authproxy: cannot disable core dumps: %s", e)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            logger.warning(
                "authproxy: cannot make the process non-dumpable: %s",
                os.strerror(ctypes.get_errno()),
            )


def make_private(path: Path) -> None:
    """0600 for an existing file of this user's that others could read."""
    try:
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(0o600)
            logger.info("authproxy: %s was open to other users; it is 0600 now", path)
    except OSError:
        pass  # not there yet: created 0600 under our umask


class LocalGuard:
    def __init__(self, *, harden: bool = True) -> None:
        # harden=False only for tests that run the hooks inside the test process.
        self._harden = harden
        self._me = os.getuid()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "authproxy_peer_check", str, "auto",
            "Which clients may connect. auto: only this user's, where the owner of the client's "
            "socket can be found (Linux: netlink sock_diag, else /proc/net/tcp); with proxy "
            "authentication configured, any client that passes it. strict: only this user's, "
            "with or without proxy authentication.",
            choices=PEER_CHECKS,
        )  # fmt: skip
        if self._harden:
            harden_process()

    def configure(self, updated: set[str]) -> None:
        for name in _PRIVATE_FILES:
            value = getattr(ctx.options, name, None) if name in updated else None
            if value and value != "-":
                make_private(Path(value.removeprefix("+")).expanduser())

    def client_connected(self, client: connection.Client) -> None:
        try:
            self._check(client)
        except Exception:  # fail closed: a peer check that broke lets nobody in
            logger.exception("authproxy: the peer check failed; connection refused")
            client.error = "refused by authproxy: the peer check failed"

    def _check(self, client: connection.Client) -> None:
        gate = password_gate(ctx.options.proxyauth)
        strict = ctx.options.authproxy_peer_check == "strict"
        if gate and not strict:
            return  # anyone with the password: no need to look the owner up
        owner = None
        if client.peername and client.sockname and client.transport_protocol == "tcp":
            try:
                peer = endpoint(*client.peername[:2])
                ours = endpoint(*client.sockname[:2])
            except ValueError:
                pass
            else:
                # Synchronous on purpose: mitmproxy 12 crashes when a client goes away while an
                # async client_connected hook is pending. The exact netlink lookup takes tens of
                # microseconds; only its fallback, reading /proc/net/tcp{,6}, takes ~10 ms.
                owner = socket_owner(peer, ours)
        if why := peer_refusal(owner=owner, me=self._me, password_gate=gate, strict=strict):
            where = _address(client.peername)
            logger.warning("authproxy: refused the connection from %s: %s", where, why)
            client.error = f"refused by authproxy: {why}"


def _address(peername: object) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "an unknown address"
