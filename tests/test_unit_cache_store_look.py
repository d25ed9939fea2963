"""The cache looks at the store for a token another process stored (`authproxy refresh`),
and a store that fails that look costs the request nothing (issue 13)."""

from __future__ import annotations

import asyncio

from proxy_addon.cache import STORE_LOOK, CredentialCache
from proxy_addon.config import TokenPolicy
from proxy_addon.store import MemoryStore, Record, StoreUnavailableError
from proxy_addon.tokens import Token

NOW = 1_000_000.0


class Grant:
    refreshable, seed_id = True, None

    def __init__(self) -> None:
        self.calls = 0

    def obtain(self, previous: Token | None) -> Token:
        self.calls += 1
        return Token(f"at-{self.calls}", NOW + 3600, NOW)


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def get(self, credential: str) -> Record | None:
        if self.down:
            raise StoreUnavailableError("the token store is unreachable")
        return super().get(credential)


def test_a_newer_stored_token_is_used_and_an_outage_is_ignored() -> None:
    store, grant, mono = FlakyStore(), Grant(), [0.0]
    cache = CredentialCache("svc", grant, store, TokenPolicy(), clock=lambda: NOW,
                            monotonic=lambda: mono[0])  # type: ignore[arg-type]  # fmt: skip

    async def go() -> None:
        first = await cache.token()
        assert first.access_token == "at-1"
        # Another process (`authproxy refresh svc`) stores a new token.
        record = store.get(cache.store_key)
        assert record is not None
        second = store.put(cache.store_key, Token("from-cli", NOW + 3600, NOW), record.version)
        assert (await cache.token()).access_token == "from-cli"  # the next request uses it
        store.put(cache.store_key, Token("again", NOW + 3600, NOW), second.version)
        assert (await cache.token()).access_token == "from-cli"  # looked a moment ago
        mono[0] += STORE_LOOK
        assert (await cache.token()).access_token == "again"
        store.down = True
        mono[0] += STORE_LOOK
        assert (await cache.token()).access_token == "again"  # the failed look is ignored

    asyncio.run(go())
    assert grant.calls == 1
