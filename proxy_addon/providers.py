"""Built-in provider presets: endpoints and quirks of well-known identity providers.

A credential says `preset: github` and gets these as defaults; anything it sets itself wins.
`{tenant}` in a URL is filled from the credential's `tenant` key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    # OAuth Apps: tokens without expires_in that never expire and come without a refresh token
    # (GitHub Apps with expiring tokens do send expires_in and a refresh token). The token
    # endpoint answers form-encoded unless asked for JSON, which requests-oauthlib does.
    "github": {
        "authorization_url": "https://github.com/login/oauth/authorize",
        "token_url": "https://github.com/login/oauth/access_token",
        "device_authorization_url": "https://github.com/login/device/code",
        "default_lifetime": "never",
        "client_auth": "post",
    },
    # Google gives a refresh token only with access_type=offline, and only on first consent
    # unless prompt=consent asks again.
    "google": {
        "authorization_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_url": "https://oauth2.googleapis.com/token",
        "device_authorization_url": "https://oauth2.googleapis.com/device/code",
        "revocation_url": "https://oauth2.googleapis.com/revoke",
        "authorization_params": {"access_type": "offline", "prompt": "consent"},
        "client_auth": "post",
    },
    # Entra ID: per-tenant endpoints (discovery for "common" names a placeholder issuer, so the
    # endpoints are spelled out); a refresh token needs the offline_access scope.
    "microsoft": {
        "tenant": "common",
        "authorization_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "device_authorization_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        "required_scopes": ["offline_access"],
        "client_auth": "post",
    },
}
