"""The cache while the shared store is unreachable (issue 9): a refresh-token chain never
refreshes without the store's lock; client_credentials gets a token alone.

In-process: the real memory store whose lock stands for an unreachable Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from proxy_addon.cache import CredentialCache, TokenUnavailable
from proxy_addon.config import TokenPolicy
from proxy_addon.store import MemoryStore, StoreUnavailableError
from proxy_addon.tokens import Token

POLICY = TokenPolicy(refresh_leeway=60.0, idp_timeout=0.5, backoff_initial=0.001)
NOW = 1_000_000.0


class DownStore(MemoryStore):
    """A store whose server went away: reads and the lock fail as a network store's do."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def lock(self, credential: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        if self.down:
            raise StoreUnavailableError("the Redis token store redis://h:6379/0 is unreachable")
        return super().lock(credential, timeout)


class Grant:
    refreshable, seed_id = True, None

    def __init__(self) -> None:
        self.calls = 0

    def obtain(self, previous: Token | None) -> Token:
        self.calls += 1
        return Token(f"at-{self.calls}", NOW + 3600, NOW, refresh_token=f"rt-{self.calls}")


@pytest.fixture
def store() -> Iterator[DownStore]:
    s = DownStore()
    yield s
    s.close()


def _cache(store: DownStore, grant: Grant, *, alone: bool) -> CredentialCache:
    return CredentialCache("svc", grant, store, POLICY, clock=lambda: NOW,
                           refresh_without_store=alone)  # type: ignore[arg-type]  # fmt: skip


def test_a_refresh_token_chain_fails_fast_without_calling_the_idp(store: DownStore) -> None:
    grant = Grant()
    store.down = True
    with pytest.raises(TokenUnavailable) as info:
        asyncio.run(_cache(store, grant, alone=False).token())
    assert info.value.code == "store_unavailable"
    assert grant.calls == 0


def test_client_credentials_gets_a_token_while_the_store_is_down(store: DownStore) -> None:
    grant = Grant()
    store.down = True
    cache = _cache(store, grant, alone=True)
    assert asyncio.run(cache.token()).access_token == "at-1"
    assert grant.calls == 1 and store.keys() == []  # nowhere to write it yet
