"""DPoP (RFC 9449): proofs, the key kept in the store, nonces at the token endpoint and at the
API (each retried once, apart from the 401-refresh retry), and end to end through the proxy
against a demo IdP and API that verify every proof and the token's key binding."""

from __future__ import annotations

import dataclasses
import gzip
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from addon_rig import (
    FakeCache,
    hook,
    in_process,
    make_token,
    rig_context,
    routed_flow,
    routed_websocket_flow,
)
from harness import CLIENT_ID, CLIENT_SECRET, route
from mitmproxy import http, io

from proxy_addon.config import ConfigError, parse_config
from proxy_addon.demo.dpop_check import DpopVerifier, ProofError
from proxy_addon.dpop import DpopKey, NonceCache, access_token_hash, htu, nonce_asked, proof
from proxy_addon.dpop_keys import attach_dpop_key, dpop_key_for
from proxy_addon.grants import make_grant
from proxy_addon.login import _authorization_request
from proxy_addon.store import MemoryStore
from proxy_addon.tokens import Token

URL = "https://API.example.test:8443/v1/items?q=1#frag"


def parse(cred: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> Any:
    base = {"grant": "client_credentials", "token_url": "https://idp.test/token",
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}  # fmt: skip
    return parse_config({"credentials": {"c": {**base, **cred}}, "routes": routes or []}, "t.yaml")


# --- proofs ---------------------------------------------------------------------------------


def test_a_proof_says_what_rfc_9449_asks() -> None:
    key = DpopKey.generate()
    p = proof(key, "get", URL, access_token="at-1", nonce="n-1")
    header = jwt.get_unverified_header(p)
    claims = jwt.decode(p, key.private_key.public_key(), algorithms=["ES256"])
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert header["jwk"] == dict(key.jwk) and "d" not in header["jwk"]
    assert set(header) == {"typ", "alg", "jwk"}  # nothing else in the header made once per key
    reloaded = DpopKey.from_pem(key.to_pem())  # a key read back from the store signs alike
    assert jwt.decode(proof(reloaded, "GET", URL), key.private_key.public_key(),
                      algorithms=["ES256"])["htm"] == "GET"  # fmt: skip
    assert claims["htm"] == "GET" and claims["htu"] == "https://api.example.test:8443/v1/items"
    assert claims["ath"] == access_token_hash("at-1") and claims["nonce"] == "n-1"
    assert abs(claims["iat"] - time.time()) < 5
    assert (
        jwt.decode(proof(key, "GET", URL), options={"verify_signature": False})["jti"]
        != claims["jti"]
    )
    assert htu("https://h.test") == "https://h.test/"

    verifier = DpopVerifier()
    url = "https://api.example.test:8443/v1/items"
    assert verifier.verify(p, "GET", url, access_token="at-1") == key.thumbprint
    with pytest.raises(ProofError, match="jti was used before"):
        verifier.verify(p, "GET", url, access_token="at-1")
    for method, target, token, why in [
        ("POST", url, "at-1", "htm"), ("GET", url + "/x", "at-1", "htu"),
        ("GET", url, "at-2", "ath"),
    ]:  # fmt: skip
        with pytest.raises(ProofError, match=why):
            verifier.verify(proof(key, "GET", URL, access_token="at-1"), method, target, token)


def test_nonce_challenges_are_read_and_learned() -> None:
    body = b'{"error": "use_dpop_nonce"}'
    assert nonce_asked(400, {"DPoP-Nonce": "n1"}, body) == "n1"
    assert nonce_asked(400, {"DPoP-Nonce": "n1"}, b'{"error": "invalid_grant"}') is None
    assert (
        nonce_asked(401, {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "n2"})
        == "n2"
    )
    assert (
        nonce_asked(401, {"WWW-Authenticate": 'DPoP error="invalid_token"', "DPoP-Nonce": "n"})
        is None
    )
    assert nonce_asked(401, {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"'}) is None
    cache = NonceCache()
    cache.learn("https://a.test/x?y", {"DPoP-Nonce": "n3"})
    assert cache.get("https://A.test/other") == "n3" and cache.get("https://b.test/") is None


# --- the key, config, login -----------------------------------------------------------------


def test_the_key_lives_in_the_store_bound_to_the_identity() -> None:
    store = MemoryStore()
    cfg = parse({"dpop": True}).credentials["c"]
    key = dpop_key_for(store, cfg)
    assert dpop_key_for(store, cfg).thumbprint == key.thumbprint  # kept, not made anew
    assert store.get(cfg.store_key + "#dpop") is not None
    other = parse({"dpop": True, "scopes": ["x"]}).credentials["c"]
    assert other.identity != cfg.identity
    assert dpop_key_for(store, other).thumbprint != key.thumbprint
    assert parse({}).credentials["c"].identity != cfg.identity  # DPoP tokens never mix


def test_config_keeps_dpop_tokens_in_authorization() -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.present: credential 'c' uses DPoP"):
        parse({"dpop": True}, [route("a.test", 443, "c", present={"query": "k"})])
    assert parse({"dpop": True}, [route("a.test", 443, "c")]).routes


def test_authorization_request_carries_dpop_jkt() -> None:
    cfg = parse({"dpop": True, "grant": "authorization_code", "client_secret": None,
                 "authorization_url": "https://idp.test/authorize"}).credentials["c"]  # fmt: skip
    grant = make_grant(cfg, True)
    attach_dpop_key(grant, cfg, MemoryStore())
    url = _authorization_request(
        grant, "https://idp.test/authorize", "http://127.0.0.1/cb", "s", "c"
    )
    assert f"dpop_jkt={grant.dpop_key.thumbprint}" in url


# --- the token endpoint -----------------------------------------------------------------------


def test_token_endpoint_nonce_is_retried_once_with_a_fresh_assertion(
    tmp_path: Path, idp, pki
) -> None:
    from support.keys import new_key, pem, write_private

    key = new_key("EC")
    idp.add_client_key("dc", key.public_key())
    idp.dpop.require_nonce = True
    path = write_private(tmp_path / "k.pem", pem(key))
    cfg = parse({"token_url": idp.token_url, "client_id": "dc", "client_secret": None,
                 "client_auth": "private_key_jwt", "private_key_file": str(path),
                 "dpop": True}).credentials["c"]  # fmt: skip
    grant = make_grant(cfg, str(pki.ca_cert))
    attach_dpop_key(grant, cfg, MemoryStore())
    token = grant.obtain(None)
    assert token.token_type == "DPoP"
    assert idp.dpop_jkt_of(token.access_token) == grant.dpop_key.thumbprint
    assert [e["status"] for e in idp.requests_log] == [400, 200]  # once more, with the nonce
    grant.obtain(None)
    assert idp.token_requests == 3  # the nonce is remembered for the origin


# --- through the proxy ------------------------------------------------------------------------


def test_dpop_through_the_proxy_with_api_nonce_and_restart(
    tmp_path: Path, start_proxy, idp, api
) -> None:
    api.dpop_jkt_of = idp.dpop_jkt_of
    api.dpop.require_nonce = True
    flows = tmp_path / "flows.mitm"
    config = {
        "credentials": {"api": {"grant": "client_credentials", "token_url": idp.token_url,
                                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                "dpop": True}},
        "routes": [route("api.example.test", api.port)],
    }  # fmt: skip
    proxy = start_proxy(config, "--save-flows", str(flows))
    url = f"https://api.example.test:{api.port}/v1/items?q=1"
    r = proxy.session().get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert [e["status"] for e in api.requests_log] == [401, 200]  # nonce asked, sent once more
    assert idp.token_requests == 1  # a nonce retry is no refresh
    r = proxy.session().get(url, timeout=30)
    assert r.status_code == 200 and len(api.requests_log) == 3  # the nonce was kept
    assert api.dpop.checked == 2

    proxy.stop()
    with idp._lock:
        (token,) = list(idp._access)
    assert idp.dpop_jkt_of(token) is not None
    with flows.open("rb") as f:
        saved = list(io.FlowReader(f).stream())
    for flow in saved:
        assert flow.request.headers["dpop"] == "<redacted:dpop-proof>"
        assert flow.request.headers["authorization"].startswith("DPoP <redacted:api:")
    assert token.encode() not in flows.read_bytes() and token not in proxy.output()

    # A restart reads the same key from the store: the stored, key-bound token still works.
    api.dpop.require_nonce = False
    proxy = start_proxy(config, name="again")
    r = proxy.session().get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert idp.token_requests == 1


def test_login_binds_the_code_to_the_stored_key_and_the_proxy_uses_it(
    tmp_path: Path, start_proxy, idp, api, pki
) -> None:
    # `authproxy login` makes the key and stores it; the authorization request names it
    # (dpop_jkt), the IdP redeems the code only with a proof of that key; then the proxy, another
    # process, reads the same key from the store for its proofs and its refreshes.
    import yaml
    from support.user_agent import sign_in
    from test_e2e_login import PASSWORD, PUBLIC_CLIENT, USER, Cli, _auth_url

    idp.add_user(USER, PASSWORD)
    idp.add_client(PUBLIC_CLIENT, None, redirect_uris=["http://127.0.0.1/callback"])
    api.dpop_jkt_of = idp.dpop_jkt_of
    config = {
        "ca_certs": [str(pki.ca_cert)],
        "store": {"path": str(tmp_path / "state" / "tokens.db"),
                  "key_file": str(tmp_path / "keys" / "store.key")},
        "credentials": {"api": {"issuer": idp.url, "client_id": PUBLIC_CLIENT,
                                "grant": "authorization_code", "dpop": True}},
        "routes": [route("api.example.test", api.port)],
    }  # fmt: skip
    path = tmp_path / "login.yaml"
    path.write_text(yaml.safe_dump({**config, "confdir": str(tmp_path / "mitmproxy")}))
    cli = Cli(path, "login", "api")
    url = _auth_url(cli)
    (jkt,) = parse_qs(urlsplit(url).query)["dpop_jkt"]
    sign_in(url, username=USER, password=PASSWORD, ca=str(pki.ca_cert))
    code, out = cli.finish()
    assert code == 0, out
    with idp._lock:
        (token,) = list(idp._access)
    assert idp.dpop_jkt_of(token) == jkt

    proxy = start_proxy(config)
    url_api = f"https://api.example.test:{api.port}/"
    assert proxy.session().get(url_api, timeout=30).status_code == 200
    idp.expire_access_tokens()
    assert proxy.session().get(url_api, timeout=30).status_code == 200  # a DPoP refresh
    assert idp.grant_counts == {"authorization_code": 1, "refresh_token": 1}
    with idp._lock:
        assert all(idp._dpop_bound.get(t) == jkt for t in idp._access)


def test_a_code_bound_to_one_key_is_not_redeemed_with_another(idp, pki) -> None:
    import requests

    from proxy_addon.demo.idp_protocol import AuthorizationRequest

    key, other = DpopKey.generate(), DpopKey.generate()
    idp.add_client("pub", None, redirect_uris=["http://127.0.0.1/cb"])
    request = AuthorizationRequest("pub", "http://127.0.0.1/cb", False, "", None, None,
                                   {"dpop_jkt": key.thumbprint})  # fmt: skip
    code = idp._grants.new_code(request, "alice", 60)
    form = {"grant_type": "authorization_code", "code": code, "client_id": "pub"}
    for k, status in ((other, 400), (None, 400), (key, 200)):
        headers = {"DPoP": proof(k, "POST", idp.token_url)} if k else {}
        r = requests.post(idp.token_url, data=form, headers=headers, verify=str(pki.ca_cert),
                          timeout=10)  # fmt: skip
        assert r.status_code == status, r.text


# --- refresh tokens bound to the key (RFC 9449 §5) ------------------------------------------


def _refresh(idp: Any, pki: Any, refresh_token: str, key: DpopKey | None) -> Any:
    import requests

    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "pub"}
    headers = {"DPoP": proof(key, "POST", idp.token_url)} if key else {}
    return requests.post(idp.token_url, data=form, headers=headers, verify=str(pki.ca_cert),
                         timeout=10)  # fmt: skip


def test_a_refresh_token_bound_to_one_key_is_refused_with_another(idp, pki) -> None:
    key, other = DpopKey.generate(), DpopKey.generate()
    idp.add_client("pub", None, redirect_uris=["http://127.0.0.1/cb"])
    first = _refresh(idp, pki, idp.issue_refresh_token("pub"), key)  # a seed: not bound yet
    assert first.status_code == 200 and first.json()["token_type"] == "DPoP", first.text
    bound = first.json()["refresh_token"]  # issued to a proof of `key`: bound to it

    for k, error in ((other, "invalid_grant"), (None, "invalid_dpop_proof")):
        refused = _refresh(idp, pki, bound, k)
        assert (refused.status_code, refused.json()["error"]) == (400, error), refused.text
    # Refused before it was spent: neither rotated away nor taken for a reuse.
    again = _refresh(idp, pki, bound, key)
    assert again.status_code == 200, again.text
    assert idp.dpop_jkt_of(again.json()["access_token"]) == key.thumbprint

    idp.rotate_refresh_tokens = False  # a refresh token kept across refreshes stays bound
    kept = again.json()["refresh_token"]
    assert "refresh_token" not in _refresh(idp, pki, kept, key).json()
    assert _refresh(idp, pki, kept, other).json()["error"] == "invalid_grant"
    # A refresh token issued without DPoP stays unbound (Bearer).
    plain = _refresh(idp, pki, idp.issue_refresh_token("pub"), None)
    assert plain.json()["token_type"] == "Bearer"


def _bound_refresh_config(idp: Any, api: Any) -> dict[str, Any]:
    idp.add_client("pub", None, redirect_uris=["http://127.0.0.1/cb"])
    api.dpop_jkt_of = idp.dpop_jkt_of
    return {
        "credentials": {"api": {"grant": "refresh_token", "token_url": idp.token_url,
                                "client_id": "pub", "refresh_token": idp.issue_refresh_token("pub"),
                                "dpop": True}},
        "routes": [route("api.example.test", api.port)],
    }  # fmt: skip


def _refresh_statuses(idp: Any) -> list[int]:
    return [e["status"] for e in idp.requests_log if e["grant_type"] == "refresh_token"]


def test_the_proxy_refreshes_with_the_same_key_across_restarts(start_proxy, idp, api) -> None:
    config = _bound_refresh_config(idp, api)
    url = f"https://api.example.test:{api.port}/v1"
    proxy = start_proxy(config)
    assert proxy.session().get(url, timeout=30).status_code == 200  # the seed, with a proof
    idp.expire_access_tokens()
    assert proxy.session().get(url, timeout=30).status_code == 200  # a bound refresh token
    proxy.stop()

    # Another process reads the key from the store: the bound refresh token still redeems.
    proxy = start_proxy(config, name="again")
    idp.expire_access_tokens()
    r = proxy.session().get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert _refresh_statuses(idp) == [200, 200, 200]
    with idp._lock:
        keys = {idp._dpop_bound[t] for t in idp._access}
    assert len(keys) == 1  # every token, before and after the restart, bound to one key


def test_a_lost_key_with_a_bound_refresh_token_asks_for_a_new_grant(
    start_proxy, idp, api
) -> None:
    from proxy_addon.config import load_config
    from proxy_addon.runtime import open_store

    config = _bound_refresh_config(idp, api)
    url = f"https://api.example.test:{api.port}/v1"
    proxy = start_proxy(config)
    assert proxy.session().get(url, timeout=30).status_code == 200
    idp.expire_access_tokens()
    assert proxy.session().get(url, timeout=30).status_code == 200  # now holds a bound one
    proxy.stop()
    # The key row goes (a store restored in part, a row deleted by hand); the tokens stay.
    loaded = load_config(proxy.config_path)
    store = open_store(loaded.store, {}, create=False)
    try:
        assert store.delete(loaded.credentials["api"].store_key + "#dpop")
    finally:
        store.close()

    proxy = start_proxy(config, name="again")
    idp.expire_access_tokens()
    r = proxy.session().get(url, timeout=30)
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["hint"] == f"run: authproxy --config {proxy.config_path} login api", body
    assert "bound to the DPoP key" in body["message"] and "invalid_grant" in body["message"]
    for _ in range(3):  # terminal: the IdP is not asked again, clients are told at once
        assert proxy.session().get(url, timeout=30).status_code == 502
    assert _refresh_statuses(idp) == [200, 200, 400]
    assert "held a DPoP-bound token but not its DPoP key" in proxy.output()


@pytest.mark.parametrize("error", ["invalid_grant", "invalid_dpop_proof"])
def test_a_refused_dpop_refresh_is_terminal_and_says_why(error: str, idp, pki) -> None:
    # IdPs word the refusal of a proof by another key either way (RFC 9449 §5 names no error);
    # both end the refreshing until a new grant, and say that the key may be why.
    from proxy_addon.demo.server import Response
    from proxy_addon.errors import GrantError
    from proxy_addon.tokens import Token

    idp.token_answer = lambda form: Response.of_json(400, {"error": error})
    cfg = parse({"grant": "refresh_token", "token_url": idp.token_url, "client_secret": None,
                 "dpop": True}).credentials["c"]  # fmt: skip
    grant = make_grant(cfg, str(pki.ca_cert))
    attach_dpop_key(grant, cfg, MemoryStore())
    held = Token("at", expires_at=0.0, obtained_at=0.0, token_type="DPoP", refresh_token="rt")
    with pytest.raises(GrantError) as e:
        grant.obtain(held)
    assert (e.value.code, e.value.terminal) == ("invalid_grant", True)
    assert f"refused by the IdP: {error}" in str(e.value)
    assert "bound to the DPoP key it was issued to" in str(e.value)
    assert "authproxy login c" in str(e.value)


# --- an API that echoes the proof -----------------------------------------------------------


class _DpopCache(FakeCache):
    """The rig's cache, handing out DPoP-bound tokens from a grant that holds a key."""

    def __init__(self) -> None:
        super().__init__()
        self.grant.dpop_key = DpopKey.generate()  # type: ignore[attr-defined]

    @property
    def current(self) -> Token:
        return dataclasses.replace(make_token(self.n), token_type="DPoP")


def _echo(streamed: bool, encoding: str = "") -> Any:
    """An API that says back every header it got (the debug endpoints that do exist)."""

    def upstream(req: http.Request) -> http.Response:
        said = "\n".join(f"{k}: {v}" for k, v in req.headers.items(multi=True)).encode()
        body = gzip.compress(said) if encoding else said
        resp = http.Response.make(200, b"" if streamed else body,
                                  {"X-Seen-Proof": req.headers.get("dpop", "")})  # fmt: skip
        if encoding:
            resp.headers["content-encoding"] = encoding
        resp.raw_content = b"" if streamed else body
        if streamed:
            resp.stream = True
            resp.headers["x-streamed-body"] = said.decode()
        return resp

    return upstream


@pytest.mark.parametrize(("streamed", "encoding"), [(False, ""), (False, "gzip"), (True, "")])
@in_process
async def test_an_echoed_proof_is_scrubbed_like_the_token(streamed: bool, encoding: str) -> None:
    async with rig_context() as rig:
        cache = _DpopCache()
        assert rig.addon.runtime is not None
        rig.addon.runtime.caches["api"] = cache  # type: ignore[assignment]
        rig.cache = cache
        sent: list[str] = []
        echo = _echo(streamed, encoding)

        def upstream(req: http.Request) -> http.Response:
            sent.append(req.headers["dpop"])
            return echo(req)

        rig.upstream = upstream
        flow = await rig.send(routed_flow())
        (proof_sent,) = sent
        assert jwt.get_unverified_header(proof_sent)["typ"] == "dpop+jwt"
        resp = flow.response
        assert resp is not None and resp.status_code == 200
        assert proof_sent not in str(resp.headers)
        assert resp.headers["x-seen-proof"] == "<redacted:dpop-proof>"
        if streamed:
            body = resp.headers.pop("x-streamed-body").encode()
            assert callable(resp.stream)
            half = len(body) // 2
            out = resp.stream(body[:half]) + resp.stream(body[half:]) + resp.stream(b"")
            assert len(out) == len(body)  # a Content-Length stays true
        else:
            out = resp.content or b""
        assert proof_sent.encode() not in out
        assert cache.current.access_token.encode() not in out
        assert b"<redacted:dpop-proof>" in out


@in_process
async def test_an_echoed_proof_is_scrubbed_from_websocket_messages() -> None:
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    async with rig_context() as rig:
        cache = _DpopCache()
        assert rig.addon.runtime is not None
        rig.addon.runtime.caches["api"] = cache  # type: ignore[assignment]
        flow = routed_websocket_flow()
        await hook(rig.addon.requestheaders, flow)
        proof_sent = flow.request.headers["dpop"]
        flow.response = http.Response.make(101)
        await hook(rig.addon.response, flow)
        assert flow.websocket is not None
        flow.websocket.messages.append(
            WebSocketMessage(Opcode.TEXT, False, f"you sent {proof_sent}".encode())
        )
        await hook(rig.addon.websocket_message, flow)
        assert flow.websocket.messages[-1].content == b"you sent <redacted:dpop-proof>"
