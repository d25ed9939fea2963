"""Pins `compat.server_tls` to mitmproxy's TlsConfig: it builds the upstream pyOpenSSL
connection early (and TlsConfig's own hook then leaves it alone), so the addon can put a
route's client certificate on that one connection."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import connection, tls
from mitmproxy.addons import tlsconfig
from mitmproxy.proxy import context
from mitmproxy.test import taddons
from OpenSSL import SSL
from support.keys import new_key, pem, self_signed_cert, write_private

from proxy_addon import compat
from proxy_addon.mtls import present_client_cert


def test_server_tls_builds_the_connection_tlsconfig_would(tmp_path: Path) -> None:
    addon = tlsconfig.TlsConfig()
    with taddons.context(addon) as tctx:
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2))
        server = connection.Server(address=("api.example.test", 443))
        data = tls.TlsData(server, context.Context(client, tctx.options))
        ssl_conn = compat.server_tls(data)
        assert isinstance(ssl_conn, SSL.Connection) and data.ssl_conn is ssl_conn
        addon.tls_start_server(data)  # mitmproxy's own turn: it keeps ours
        assert data.ssl_conn is ssl_conn

        key = new_key("EC")
        cert = self_signed_cert(tmp_path / "c.pem", key, "route client")
        key_file = write_private(tmp_path / "c.key", pem(key))
        present_client_cert(ssl_conn, str(cert), str(key_file))
        assert ssl_conn.get_certificate() is not None
