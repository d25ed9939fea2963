"""A fake identity provider (`idp`), a fake API (`api`), a throwaway PKI (`certs`) and the
`authproxy demo` command (`run`) that wires them to a real proxy.

Used by the demo, the tests and the benchmark scripts. It may import the proxy's bottom modules
(`netutil`, `tokens`, ...); of the proxy, only `cli` (for `authproxy demo`) imports it.
"""
