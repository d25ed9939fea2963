"""Which variables `authproxy exec` keeps from its command (`wrap.hidden_variables`)."""

from __future__ import annotations

from pathlib import Path

from proxy_addon.wrap import ONE_TIME_AUTH_ENV, hidden_variables

CONFIG = """\
store:
  path: ${HOME}/state/tokens.db
  key_file: ${XDG_CONFIG_HOME}/authproxy/store.key
credentials:
  api:
    grant: client_credentials
    token_url: https://idp.example.test/token
    client_id: ${CLIENT_ID}
    client_secret: prefix-${CLIENT_SECRET}
    scopes: ["$${NOT_A_VARIABLE}"]
routes:
  - host: api.example.test
    credential: api
"""


def test_hidden_variables(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    env = {
        "HOME": "/home/u", "XDG_CONFIG_HOME": "/home/u/.config", "CLIENT_ID": "c",
        "CLIENT_SECRET": "s", "NOT_A_VARIABLE": "x", "UNRELATED": "y",
    }  # fmt: skip
    assert hidden_variables(config, env) == {
        "AUTHPROXY_KEY", ONE_TIME_AUTH_ENV, "CLIENT_ID", "CLIENT_SECRET"
    }  # fmt: skip
