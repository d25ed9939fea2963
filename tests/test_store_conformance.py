"""The TokenStore contract (store/base.py), checked against every backend.

A new backend is tested by adding one line to BACKENDS: a function that makes a `Kit` for it
(how to open a handle onto one shared storage, and for sealed backends how to dump every byte
the storage holds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from support import redis_server

from proxy_addon.store import MemoryStore, TokenStore, VersionConflict
from proxy_addon.store.keys import Keyring
from proxy_addon.store.sealer import CorruptRowError, Sealer, UndecryptableError
from proxy_addon.store.sqlite import SqliteStore
from proxy_addon.tokens import Token

LEASE_TTL = 1.0  # short, so that "held longer than its TTL" takes a second


@dataclass
class Kit:
    """One backend under test: handles onto the same storage, and its raw bytes."""

    open: Callable[[Sealer], TokenStore]  # a new handle (another "process") on the storage
    dump: Callable[[], bytes] | None  # every byte it holds; None: rows never leave the process


def memory_kit(tmp_path: Path, request: pytest.FixtureRequest) -> Kit:
    shared = MemoryStore()  # one process: every "handle" is the same store
    return Kit(lambda sealer: shared, None)


def sqlite_kit(tmp_path: Path, request: pytest.FixtureRequest) -> Kit:
    db = tmp_path / "state" / "tokens.db"

    def dump() -> bytes:
        return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.is_file())

    return Kit(lambda sealer: SqliteStore(db, sealer, lock_ttl=LEASE_TTL), dump)


def redis_kit(tmp_path: Path, request: pytest.FixtureRequest) -> Kit:
    if not redis_server.available():
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    from proxy_addon.store.redis_config import RedisSettings
    from proxy_addon.store.redis_store import RedisStore

    server = redis_server.RedisServer(tmp_path).start()
    request.addfinalizer(server.stop)
    settings = RedisSettings(
        "127.0.0.1", server.port, 0, False, None, server.password, lock_ttl=LEASE_TTL
    )

    def dump() -> bytes:
        aof = b"".join(p.read_bytes() for p in server.dir.rglob("*") if p.is_file())
        return server.dump() + aof

    return Kit(lambda sealer: RedisStore(settings, sealer), dump)


BACKENDS = {  # every backend of store/registry.py
    "memory": memory_kit,
    "sqlite": sqlite_kit,
    "redis": redis_kit,
}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(Keyring.from_keys([Fernet.generate_key()], "test key"))


@pytest.fixture(params=sorted(BACKENDS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    return BACKENDS[request.param](tmp_path, request)


@pytest.fixture
def handles(kit: Kit) -> Iterator[Callable[[Sealer], TokenStore]]:
    opened: list[TokenStore] = []

    def open_(sealer: Sealer) -> TokenStore:
        opened.append(kit.open(sealer))
        return opened[-1]

    yield open_
    for s in opened:
        s.close()


@pytest.fixture
def store(handles: Callable[[Sealer], TokenStore], sealer: Sealer) -> TokenStore:
    return handles(sealer)


def token(n: int, tag: str = "") -> Token:
    return Token(
        access_token=f"at-{tag}{n}-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        expires_at=1000.0 + n,
        obtained_at=900.0,
        refresh_token=f"rt-{tag}{n}-RRRRRRRRRRRRRRRRRRRRRRRRRRRRRR",
    )


# -- rows -------------------------------------------------------------------------------------


def test_get_put_compare_and_set_delete(store: TokenStore) -> None:
    assert store.get("a#1") is None
    r1 = store.put("a#1", token(1), None)
    assert (r1.credential, r1.token, r1.version) == ("a#1", token(1), 1)
    assert store.get("a#1") == r1
    with pytest.raises(VersionConflict):
        store.put("a#1", token(2), None)
    r2 = store.put("a#1", token(2), 1)
    assert r2.version == 2 and store.get("a#1") == r2
    with pytest.raises(VersionConflict):
        store.put("a#1", token(3), 1)
    assert store.get("a#1") == r2  # a refused update changes nothing
    store.put("b#2", token(1), None)
    assert store.keys() == ["a#1", "b#2"]
    assert store.delete("a#1") is True
    assert store.delete("a#1") is False
    assert store.get("a#1") is None
    assert store.keys() == ["b#2"]


def test_compare_and_set_between_handles(handles, sealer: Sealer) -> None:
    one, two = handles(sealer), handles(sealer)
    one.put("a", token(1), None)
    seen_one, seen_two = one.get("a"), two.get("a")
    assert seen_one is not None and seen_two is not None
    one.put("a", token(2), seen_one.version)
    with pytest.raises(VersionConflict):
        two.put("a", token(3), seen_two.version)
    assert two.get("a").token == token(2)  # type: ignore[union-attr]


# -- the lock ---------------------------------------------------------------------------------


def test_lock_excludes_other_threads_and_handles(handles, sealer: Sealer) -> None:
    stores = [handles(sealer), handles(sealer)]
    stores[0].put("c", token(0), None)
    inside, overlaps, rounds = [0], [], 8
    guard = threading.Lock()

    def work(i: int) -> None:
        s = stores[i % 2]
        for _ in range(rounds):
            with s.lock("c", timeout=30):
                with guard:
                    inside[0] += 1
                    overlaps.append(inside[0])
                rec = s.get("c")
                assert rec is not None
                time.sleep(0.001)  # widen the window a second holder would race in
                s.put("c", token(rec.version), rec.version)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert max(overlaps) == 1
    assert stores[1].get("c").version == 1 + 4 * rounds  # type: ignore[union-attr]


def test_lock_times_out_promptly_and_zero_tries_once(store: TokenStore) -> None:
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.lock("c", timeout=5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(5)
        for timeout in (0.0, 0.3):
            start = time.monotonic()
            with pytest.raises(TimeoutError), store.lock("c", timeout=timeout):
                pass
            assert time.monotonic() - start < timeout + 0.5
        with store.lock("other", timeout=0):  # other credentials are not blocked
            assert store.get("c") is None  # neither are readers
    finally:
        release.set()
        t.join(10)
    with store.lock("c", timeout=1):  # released on exit
        pass


def test_lock_is_released_when_the_block_raises(store: TokenStore) -> None:
    with pytest.raises(RuntimeError), store.lock("c", timeout=1):
        raise RuntimeError("refresh failed")
    with store.lock("c", timeout=0):
        pass


def test_lock_held_longer_than_its_lease_stays_held(handles, sealer: Sealer) -> None:
    one, two = handles(sealer), handles(sealer)
    with one.lock("c", timeout=1):
        deadline = time.monotonic() + LEASE_TTL * 2.5
        while time.monotonic() < deadline:  # renewals keep it ours past several TTLs
            with pytest.raises(TimeoutError), two.lock("c", timeout=0.05):
                pass
    with two.lock("c", timeout=1):
        pass


# -- sealing ----------------------------------------------------------------------------------


def test_only_ciphertext_leaves_the_process(kit: Kit, store: TokenStore) -> None:
    if kit.dump is None:
        pytest.skip("this backend keeps rows in the process")
    for n in range(3):
        store.put(f"svc#{n}", token(n, "secret"), None)
    store.put("svc#0", token(9, "secret"), 1)
    raw = kit.dump()
    assert raw
    for n in (0, 1, 2, 9):
        t = token(n, "secret")
        assert t.access_token.encode() not in raw
        assert t.refresh_token is not None and t.refresh_token.encode() not in raw
    assert b"secret" not in raw


def test_reseal_rotates_the_key_and_keeps_versions(kit: Kit, handles, sealer: Sealer) -> None:
    store = handles(sealer)
    for n in range(3):
        store.put(f"k{n}", token(n), None)
    store.put("k0", token(5), 1)
    names = store.keys()
    before = {k: store.get(k) for k in names}
    new_key = Fernet.generate_key()
    ring = Keyring.from_keys([new_key, *sealer.keyring.keys], "rotated ring")
    assert store.reseal(Sealer(ring)) == 3
    assert {k: store.get(k) for k in names} == before
    only_new = handles(Sealer(Keyring.from_keys([new_key], "new key")))
    assert only_new.keys() == names
    assert {k: only_new.get(k) for k in names} == before
    if kit.dump is not None:  # rows written by the old key alone are unreadable now
        old_only = handles(sealer)
        with pytest.raises(UndecryptableError):
            old_only.get("k1")


def test_a_wrong_key_is_refused_and_names_the_row(kit: Kit, handles, sealer: Sealer) -> None:
    if kit.dump is None:
        pytest.skip("this backend keeps rows in the process")
    handles(sealer).put("svc#abc", token(1), None)
    other = handles(Sealer(Keyring.from_keys([Fernet.generate_key()], "other key")))
    with pytest.raises(UndecryptableError, match=r"'svc'.*AUTHPROXY_KEY"):
        other.get("svc#abc")
    assert other.keys() == ["svc#abc"]  # listing needs no key


def test_a_row_is_bound_to_its_credential_identity(sealer: Sealer) -> None:
    sealed = sealer.seal("a#1", token(1))
    assert sealer.open("a#1", sealed) == token(1)
    with pytest.raises(CorruptRowError, match="logout b"):
        sealer.open("b#2", sealed)


def test_the_registry_loads_no_backend_until_one_is_opened() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from proxy_addon.store.registry import BACKENDS; "
        "from proxy_addon.store import TokenStore; "
        "print(sorted(m for m in ('redis', 'sqlite3', 'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
    from proxy_addon.store.registry import BACKENDS as REGISTERED

    assert set(BACKENDS) == set(REGISTERED)  # no backend escapes the suite
