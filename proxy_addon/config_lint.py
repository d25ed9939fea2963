"""What `authproxy check` warns about in a config that loads: routes that can never match,
credentials nothing uses, IdP URLs in clear text. Pure: plain data in, sentences out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .config import Config
from .routes import Route, path_matches

__all__ = ["bypass_warnings", "config_warnings", "shadowed_routes", "unused_credentials"]

_URL_KEYS = ("token_url", "issuer", "authorization_url", "device_authorization_url",
             "revocation_url")  # fmt: skip


def config_warnings(config: Config) -> list[str]:
    out = []
    for route, by in shadowed_routes(config.routes):
        out.append(
            f"routes[{route.index}] ({route.describe()} -> {route.credential}) never matches: "
            f"routes[{by.index}] ({by.describe()} -> {by.credential}) comes first and covers "
            "it (the first match wins; put the narrower route first)"
        )
    for name in unused_credentials(config):
        out.append(f"credentials.{name}: no route uses it")
    for cred in config.credentials.values():
        for key in _URL_KEYS:
            url = getattr(cred, key, None)
            if isinstance(url, str) and url.startswith("http://"):
                out.append(
                    f"credentials.{cred.name}.{key}: {url} is plain http (allow_http: true); "
                    "fine for an IdP on this machine, never use it for one elsewhere"
                )
    return out


def unused_credentials(config: Config) -> list[str]:
    used = {r.credential for r in config.routes}
    return [name for name in config.credentials if name not in used]


def shadowed_routes(routes: Iterable[Route]) -> list[tuple[Route, Route]]:
    """(route, the earlier route that matches everything it matches), in file order.

    Indexed by (scheme, port, host pattern), so a table of 10 000 routes takes milliseconds."""
    earlier: dict[tuple[str, int, str], list[Route]] = {}
    found = []
    for route in routes:
        for pattern in _covering_patterns(route.host):
            by = next(
                (e for e in earlier.get((route.scheme, route.port, pattern), ())
                 if path_matches(e.path, route.path)),
                None,
            )  # fmt: skip
            if by is not None:
                found.append((route, by))
                break
        earlier.setdefault((route.scheme, route.port, route.host), []).append(route)
    return found


def _covering_patterns(host: str) -> list[str]:
    """Host patterns whose matches include all of `host`'s: itself, and `*.` every parent."""
    out = [host]
    labels = host.removeprefix("*.").split(".")
    if ":" in host or host.replace(".", "").isdigit():
        return out  # an IP address: no wildcard covers it
    for i in range(1, len(labels)):
        out.append("*." + ".".join(labels[i:]))
    return out


def bypass_warnings(config: Config, env: Mapping[str, str]) -> list[str]:
    """Routes that a client would call around the proxy, without a token: because of this
    environment's NO_PROXY, or (loopback hosts) because some clients never proxy them."""
    from .config import is_loopback
    from .env_render import covers

    out = []
    for name in ("NO_PROXY", "no_proxy"):
        for entry in filter(None, (e.strip() for e in env.get(name, "").split(","))):
            for route in config.routes:
                if covers(entry, route.host):
                    out.append(
                        f"routes[{route.index}] ({route.describe()}): your {name} entry "
                        f"{entry!r} makes clients call it directly, without a token "
                        "(`authproxy env` and `exec` leave that entry out)"
                    )
    for route in config.routes:
        if is_loopback(route.host):
            out.append(
                f"routes[{route.index}] ({route.describe()}): some clients never use a proxy "
                "for loopback hosts (Go programs, Java unless http.nonProxyHosts is set as "
                "`authproxy env` sets it); give the API a non-loopback name if one of yours does"
            )
    return out
