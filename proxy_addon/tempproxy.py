"""`authproxy exec`'s machinery: the temporary proxy it starts when none is running, the
command it runs (without the config's secrets in its environment), and the signals it passes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

from .config import load_config
from .netutil import free_port
from .ownproxy import NotOurProxy, proxy_status

__all__ = ["ONE_TIME_AUTH_ENV", "hidden_variables"]

# How exec hands its temporary proxy the one-time proxy password (`authproxy run` reads it).
ONE_TIME_AUTH_ENV = "AUTHPROXY_ONE_TIME_PROXY_AUTH"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


# Read by many configs for paths, never secret, and needed by most commands.
_NOT_SECRET = frozenset({"HOME", "USER", "LOGNAME", "PATH", "PWD", "SHELL", "TMPDIR", "LANG"})


class _Recording(Mapping[str, str]):
    """An environment that remembers which variables were read from it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        value = self._env[name]
        self.read.add(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def hidden_variables(path: Path, env: Mapping[str, str] = os.environ) -> set[str]:
    """What `exec` keeps from the command: AUTHPROXY_KEY and each variable the config
    interpolates (${VAR}: client secrets, refresh tokens), but for plain paths like HOME."""
    recording = _Recording(env)
    load_config(path, recording, need_secrets=False)
    used = {n for n in recording.read if n not in _NOT_SECRET and not n.startswith("XDG_")}
    return {"AUTHPROXY_KEY", ONE_TIME_AUTH_ENV} | used


class _StartFailed(Exception):
    pass


def _our_proxy(host: str, port: int, auth: str) -> bool:
    try:
        proxy_status(host, port, auth)
    except OSError:
        return False  # not listening yet
    except NotOurProxy as e:
        raise _StartFailed(f"127.0.0.1:{port} answers, but {e}") from None
    return True


def _start_proxy(
    path: Path, log: IO[bytes], signals: _Signals, auth: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [
        sys.executable, "-m", "proxy_addon", "--config", str(path),
        "run", "-q", "--listen", f"127.0.0.1:{port}", "--set", "authproxy_peer_check=strict",
    ]  # fmt: skip
    parent = os.getpid()

    def setup() -> None:  # in the child, between fork and exec (exec has no other threads)
        signals.child_setup()
        # Should exec die without cleaning up (SIGKILL), the proxy goes too (Linux).
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)

    posix = os.name == "posix"
    proxy = subprocess.Popen(
        argv,
        env={**os.environ, ONE_TIME_AUTH_ENV: auth},  # not in argv: every user can read that
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own session: a Ctrl-C on the terminal is for the command, not for the proxy.
        start_new_session=posix,
        preexec_fn=setup if posix else None,
    )
    return proxy, port


def _await_proxy(
    proxy: subprocess.Popen[bytes], port: int, ca: Path, signals: _Signals, auth: str
) -> int | None:
    """Until the proxy answers and has its CA; a signal number if one came first. Another
    user may have taken the port first: it must be this user's authproxy answering."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proxy.poll() is not None:
            raise _StartFailed(f"it exited with status {proxy.returncode}")
        if ca.is_file() and _our_proxy("127.0.0.1", port, auth):
            return None
        if time.monotonic() > deadline:
            raise _StartFailed(f"it did not listen on 127.0.0.1:{port} within {_START_TIMEOUT:g}s")
        got = signals.wait(0.05)  # the pause between polls, cut short by a signal
        if got is not None and got[0] in _FORWARDED:
            return got[0]


def _stop(proxy: subprocess.Popen[bytes]) -> None:
    if proxy.poll() is None:
        proxy.terminate()
        try:
            proxy.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def _run_command(
    command: list[str], env_vars: Mapping[str, str], signals: _Signals, hidden: set[str]
) -> int:
    env = {k: v for k, v in os.environ.items() if k not in hidden} | dict(env_vars)
    try:
        child = subprocess.Popen(
            command, env=env, preexec_fn=signals.child_setup if signals.blocking else None
        )
    except FileNotFoundError:
        print(f"authproxy exec: {command[0]}: command not found", file=sys.stderr)
        return 127
    except OSError as e:
        print(f"authproxy exec: {command[0]}: {e.strerror or e}", file=sys.stderr)
        return 126
    while (code := child.poll()) is None:
        got = signals.wait(1.0)  # SIGCHLD ends the wait as soon as the command exits
        if got is None or got[0] not in _FORWARDED:
            continue
        signum, from_terminal = got
        # The terminal signals its whole foreground process group, the command included:
        # passing that on again would make it see one Ctrl-C twice.
        if not from_terminal:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
    return 128 - code if code < 0 else code


# --- signals ------------------------------------------------------------------------------------

_FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent, e.g. the terminal's Ctrl-C
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


class _Signals:
    """SIGINT, SIGTERM and SIGHUP (and SIGCHLD) as events exec waits for, from start to end.

    Where the platform has sigtimedwait (Linux) they are blocked and collected with the sender's
    si_code, so a signal arriving at any moment is neither lost nor runs a handler midway; the
    children get the original mask back (`child_setup`). Elsewhere, handlers queue them.
    """

    def __init__(self) -> None:
        self.blocking = hasattr(signal, "sigtimedwait") and hasattr(signal, "SIGCHLD")
        self._watched = set(_FORWARDED)
        self._pending: list[int] = []
        self._handlers: dict[int, object] = {}
        self._mask: set[int | signal.Signals] = set()
        self._chld: object = None

    def __enter__(self) -> _Signals:
        if hasattr(signal, "SIGCHLD"):
            # An ignored SIGCHLD (inherited) would reap the command before we read its status.
            self._chld = signal.getsignal(signal.SIGCHLD)
            if self._chld == signal.SIG_IGN:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self.blocking:
            self._watched.add(signal.SIGCHLD)
            self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        else:
            for signum in _FORWARDED:
                self._handlers[signum] = signal.signal(signum, self._queue)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.blocking:
            while signal.sigtimedwait(self._watched, 0) is not None:
                pass  # drained: nothing left to fire when unblocked
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        else:
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        if self._chld == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    def child_setup(self) -> None:
        """In a child between fork and exec: the signal mask exec found."""
        if self.blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)

    def wait(self, timeout: float) -> tuple[int, bool] | None:
        """The next signal (number, sent by the kernel?), or None after `timeout` seconds."""
        if self.blocking:
            info = signal.sigtimedwait(self._watched, timeout)
            return None if info is None else (info.si_signo, info.si_code == _SI_KERNEL)
        deadline = time.monotonic() + timeout
        while not self._pending and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return (self._pending.pop(0), False) if self._pending else None

    def _queue(self, signum: int, frame: object) -> None:
        self._pending.append(signum)
