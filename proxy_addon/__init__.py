"""authproxy: an authenticating forward proxy, built as a mitmproxy addon.

What lives here, bottom to top:
- shared types and pure helpers that import nothing of ours: `errors` (GrantError,
  TokenUnavailable), `state` (CredentialState), `netutil`, `pem`, `sanitize`, `tokens`, `routes`,
  `yamlconf` (the typed YAML reader under config.py's schema);
- pure rules over plain data or one flow: `retry`, `decision`, `guards`, `redact`, `replies`,
  `status`, `statuspage`, `metrics`; they may import the layer below, never the cache, the store
  or the grants (tests/test_unit_layering.py checks the import graph);
- I/O with one owner each: `store/` (tokens at rest), `grants/` (the IdP), `cache` (refresh),
  `runtime` (wires them), `audit` (the audit log);
- the mitmproxy addons (`addon`, `localguard`) and `compat` (every use of mitmproxy internals);
- commands: `cli`, `runner`, `wrap`, `login`, `token_commands`, `init_command`.

`demo/` is test and demonstration scaffolding; only the `authproxy demo` command loads it.
"""

__version__ = "0.1.0"
