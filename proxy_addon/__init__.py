"""authproxy: an authenticating forward proxy, built as a mitmproxy addon."""

__version__ = "0.1.0"
