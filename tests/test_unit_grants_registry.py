"""The grant registry: one table says which grants exist, which keys each reads, how each is
built and signed in with; client authentication in one place; the exchange's exception ladder
as a pure `classify`. A new grant is one module plus one registry line: shown here by adding
one in a test and watching config, status and the runtime's questions follow."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import requests
from harness import CLIENT_ID, CLIENT_SECRET

from proxy_addon.config import ConfigError, CredentialConfig, TokenPolicy, parse_config
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.server import Response
from proxy_addon.errors import GrantError
from proxy_addon.grants import GRANTS, ConfigRules, GrantSpec, make_grant, sign_in_for, spec_for
from proxy_addon.grants.client_auth import METHODS, ClientAuthentication, MethodSpec, authenticate
from proxy_addon.grants.oauth import OAuthGrant, TokenRequest
from proxy_addon.idp_http import Answer, classify
from proxy_addon.login import LoginError, login
from proxy_addon.status import describe
from proxy_addon.store import MemoryStore
from proxy_addon.tokens import Token

OAUTH = {"token_url": "https://idp.test/token", "client_id": "cli", "client_secret": "s3cret"}


def cred(grant: str, **kw: Any) -> CredentialConfig:
    return CredentialConfig(name="c", grant=grant, **kw)


def parse(cred_cfg: dict[str, Any]) -> CredentialConfig:
    return parse_config({"credentials": {"c": cred_cfg}}, "test.yaml").credentials["c"]


# --- every entry builds a grant that keeps the contract ------------------------------------


@pytest.mark.parametrize("name", sorted(GRANTS))
def test_every_registered_grant_keeps_the_contract(name: str) -> None:
    spec = spec_for(name)
    grant = make_grant(cred(name, token="t", **OAUTH), True)
    assert grant.name == "c"
    assert grant.persist is spec.persist
    assert isinstance(grant.refreshable, bool)
    assert grant.seed_id is None or isinstance(grant.seed_id, str)
    assert callable(grant.obtain)
    if spec.sign_in is not None:
        assert callable(sign_in_for(name))


def test_unknown_grant_is_an_error_not_a_login_grant() -> None:
    # The old if-chain's fall-through made anything unknown an authorization_code grant.
    with pytest.raises(ValueError, match="unknown grant 'implicit'"):
        make_grant(cred("implicit", **OAUTH), True)


def test_what_the_registry_says() -> None:
    assert [n for n, s in GRANTS.items() if s.interactive] == ["authorization_code", "device_code"]
    assert [n for n, s in GRANTS.items() if not s.persist] == ["static"]
    assert sign_in_for("client_credentials") is None and sign_in_for("static") is None
    assert spec_for("refresh_token").starts_signed_out(cred("refresh_token", **OAUTH))
    assert not spec_for("refresh_token").starts_signed_out(
        cred("refresh_token", refresh_token="rt", **OAUTH)
    )
    assert not spec_for("client_credentials").starts_signed_out(cred("client_credentials"))


def test_static_grant_never_expires_and_is_not_stored() -> None:
    grant = make_grant(cred("static", token="tok"), True)
    token = grant.obtain(None)
    assert (token.access_token, token.expires_at, grant.persist) == ("tok", math.inf, False)


def test_login_refuses_a_grant_without_sign_in() -> None:
    grant = make_grant(cred("client_credentials", **OAUTH), True)
    with pytest.raises(LoginError, match="needs no sign-in"):
        login(grant, MemoryStore())


# --- a new grant: one module (here, a class) plus one registry line ------------------------


class EchoGrant:
    """A stand-in for a #10 grant (jwt_bearer): reads its own keys, one of them secret."""

    refreshable, persist, seed_id = True, True, None

    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        self.name, self.cfg = cfg.name, cfg

    def obtain(self, previous: Token | None) -> Token:
        return Token(self.cfg.options["subject"], expires_at=math.inf, obtained_at=0.0)


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = ConfigRules(
        required=("subject", "key_file"),
        optional=("key_passphrase",),
        secret=("key_passphrase",),
        seed="key_file",
    )
    monkeypatch.setitem(GRANTS, "echo", GrantSpec(f"{__name__}:EchoGrant", rules))


@pytest.mark.usefixtures("echo")
def test_a_new_grant_needs_only_its_registry_line() -> None:
    c = parse(
        {"grant": "echo", **OAUTH, "subject": "me", "key_file": "k.pem", "key_passphrase": "pw"}
    )
    assert c.grant == "echo"
    assert c.options == {"subject": "me", "key_file": "k.pem", "key_passphrase": "pw"}
    assert "pw" in c.secrets() and "k.pem" not in c.secrets()
    assert "pw" not in repr(c)
    grant = make_grant(c, True)
    assert grant.obtain(None).access_token == "me"
    assert describe(c, None, 0.0).state == "not fetched"


@pytest.mark.usefixtures("echo")
@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ({"key_file": "k.pem"}, "credentials.c.subject", "is required"),
        (
            {"subject": "me", "key_file": "k", "username": "u"},
            "credentials.c.username",
            "unknown key",
        ),
    ],
)
def test_a_new_grants_keys_are_checked(extra: dict[str, str], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"grant": "echo", **OAUTH, **extra})
    assert (e.value.key, e.value.message) == (key, message)


def test_grant_names_in_config_errors_come_from_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(GRANTS, "echo", GrantSpec(f"{__name__}:EchoGrant"))
    with pytest.raises(
        ConfigError, match=r"expected one of client_credentials, .*static, echo, got 'nope'$"
    ):
        parse({"grant": "nope"})


# --- client authentication, in one place ------------------------------------------------------


def test_client_auth_basic_post_and_public() -> None:
    basic = authenticate(cred("client_credentials", client_id="a b", client_secret="p&q"), "u")
    assert basic == ClientAuthentication(basic=("a+b", "p%26q"))
    post = authenticate(cred("x", client_id="a", client_secret="s", client_auth="post"), "u")
    assert post == ClientAuthentication(form={"client_id": "a", "client_secret": "s"})
    public = authenticate(cred("x", client_id="a"), "u")  # basic without a secret: id in body
    assert public == ClientAuthentication(form={"client_id": "a"})


def assertion(cfg: CredentialConfig) -> Callable[[str], ClientAuthentication]:
    """A stand-in for private_key_jwt: reads its config once, sees the endpoint of each request."""
    kid = cfg.options["kid"]
    return lambda endpoint: ClientAuthentication(
        form={"client_id": cfg.client_id or "", "client_assertion": f"{endpoint}|{kid}"}
    )


def test_a_new_client_auth_method_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "fake_jwt", MethodSpec(f"{__name__}:assertion", required=("kid",)))
    with pytest.raises(ConfigError) as e:
        parse({"grant": "client_credentials", **OAUTH, "client_auth": "fake_jwt"})
    assert (e.value.key, e.value.message) == ("credentials.c.kid", "is required")
    c = parse({"grant": "client_credentials", **OAUTH, "client_auth": "fake_jwt", "kid": "k1"})
    assert authenticate(c, "https://idp.test/token").form["client_assertion"] == (
        "https://idp.test/token|k1"
    )


# --- the token request hook, on the wire ------------------------------------------------------


class ProofGrant(OAuthGrant):
    """A stand-in for DPoP: adds a header and a form field to every request it sends."""

    def obtain(self, previous: Token | None) -> Token:
        return self.call("client_credentials token request", {"grant_type": "client_credentials"})

    def prepare(self, request: TokenRequest) -> TokenRequest:
        request.headers["X-Proof"] = "proof"  # the demo IdP checks a real DPoP header
        request.form["resource"] = "https://api.test"
        return request


def test_prepare_reaches_the_token_endpoint(idp: AuthServer, pki: Pki) -> None:
    seen: list[dict[str, str]] = []
    idp.token_answer = lambda form: seen.append(dict(form)) or None  # type: ignore[func-returns-value]
    cfg = CredentialConfig(
        name="api", grant="client_credentials", token_url=idp.token_url, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, policy=TokenPolicy(idp_timeout=5.0),
    )  # fmt: skip
    token = ProofGrant(cfg, str(pki.ca_cert)).obtain(None)
    assert idp.is_valid(token.access_token)
    assert seen and seen[0]["resource"] == "https://api.test"


class NonceGrant(ProofGrant):
    """A stand-in for DPoP's token-endpoint nonce: learns it from a refusal, asks once more."""

    nonce = "none"

    def prepare(self, request: TokenRequest) -> TokenRequest:
        request.form["proof"] = f"nonce={self.nonce}"
        return request

    def again(self, request: TokenRequest, answer: Answer) -> TokenRequest | None:
        if answer.status == 400 and b"use_dpop_nonce" in answer.body:
            self.nonce = answer.headers.get("DPoP-Nonce", "")
            return request
        return None


def test_again_sends_once_more_with_what_was_learned(idp: AuthServer, pki: Pki) -> None:
    seen: list[str] = []

    def answer(form: dict[str, str]) -> Response | None:
        seen.append(form["proof"])
        if len(seen) == 1 or form["proof"] != "nonce=n1":
            return Response.of_json(400, {"error": "use_dpop_nonce"}, {"DPoP-Nonce": "n1"})
        return None

    idp.token_answer = answer
    cfg = CredentialConfig(
        name="api", grant="client_credentials", token_url=idp.token_url, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, policy=TokenPolicy(idp_timeout=5.0),
    )  # fmt: skip
    grant = NonceGrant(cfg, str(pki.ca_cert))
    assert idp.is_valid(grant.obtain(None).access_token)
    assert seen == ["nonce=none", "nonce=n1"]
    grant.nonce = "stale"  # refused again after the retry: the refusal stands, no third try
    seen.clear()
    idp.token_answer = lambda form: (
        seen.append(form["proof"]),
        Response.of_json(400, {"error": "use_dpop_nonce"}, {"DPoP-Nonce": "stale"}),
    )[1]
    with pytest.raises(GrantError, match="use_dpop_nonce"):
        grant.obtain(None)
    assert len(seen) == 2


# --- classify: the exchange's exception ladder, pure -----------------------------------------


@pytest.mark.parametrize(
    ("exc", "sent", "fired", "code", "unknown"),
    [
        (requests.ConnectTimeout("x"), True, False, "idp_timeout", False),
        (requests.ReadTimeout("x"), True, False, "idp_timeout", True),
        (requests.ReadTimeout("x"), False, False, "idp_timeout", False),
        (requests.ConnectionError("x"), False, True, "idp_timeout", False),  # our deadline
        (requests.exceptions.SSLError("bad cert"), False, False, "idp_tls_error", False),
        (requests.ConnectionError("refused"), False, False, "idp_unreachable", False),
        (requests.ConnectionError("reset"), True, False, "idp_connection_lost", True),
        (requests.exceptions.ChunkedEncodingError("x"), True, False, "idp_connection_lost", True),
        (ConnectionResetError(104, "reset"), True, False, "idp_connection_lost", True),
        (OSError(113, "no route"), False, False, "idp_unreachable", False),
        (requests.exceptions.InvalidURL("x"), False, False, "idp_unavailable", False),
    ],
)
def test_classify(exc: BaseException, sent: bool, fired: bool, code: str, unknown: bool) -> None:
    e = classify(exc, what="token request", timeout=2.0, sent=sent, fired=fired)
    assert isinstance(e, GrantError)
    assert (e.code, e.terminal, e.outcome_unknown) == (code, False, unknown)
    assert str(e).startswith("token request: ")
