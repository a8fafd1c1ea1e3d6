"""The two bearer tokens, as both protocols check them: the inference token opens the data plane,
the admin token opens both planes (see `serving.interceptors`). Compared in constant time."""

from __future__ import annotations

import hmac

MISSING_TOKEN = "missing or invalid bearer token"


class BearerTokens:
    def __init__(self, token: str | None = None, admin_token: str | None = None):
        self.token = f"Bearer {token}".encode() if token else None
        self.admin = f"Bearer {admin_token}".encode() if admin_token else None

    def is_admin(self, supplied: bytes | None) -> bool:
        return self.admin is not None and supplied is not None and hmac.compare_digest(supplied, self.admin)

    def opens_data_plane(self, supplied: bytes | None) -> bool:
        """True without an inference token, or when `supplied` (the whole header value) is either token."""
        if self.token is None:
            return True
        return supplied is not None and (hmac.compare_digest(supplied, self.token) or self.is_admin(supplied))
