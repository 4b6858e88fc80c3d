"""The console's session cookie and CSRF tokens, both HMACs under the session secret.

The cookie holds a token's id, when the session began and a signature: no token in it, and
nothing to store server-side. Each request checks the token is still live, so revoking a
token ends its sessions. A session's CSRF token is derived from the cookie (synchronizer
token without storage): a form of another site cannot know it, and SameSite=Strict keeps the
cookie off cross-site requests besides.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "rb_session"
# The login form's own CSRF pair (before there is a session): a cookie and the same value in
# the form.
LOGIN_COOKIE = "rb_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A verified session: whose token, and its cookie value (the CSRF token's seed)."""

    token_id: int
    value: str


class Signer:
    """Signs and checks session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def random(cls) -> Signer:
        """A signer whose sessions end with this process."""
        return cls(secrets.token_bytes(32))

    def _mac(self, purpose: str, text: str) -> str:
        data = f"{purpose}:{text}".encode()
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def cookie(self, token_id: int, now: float | None = None) -> str:
        """A session cookie's value for `token_id`."""
        payload = f"{token_id}.{int(now if now is not None else time.time())}"
        return f"{payload}.{self._mac('session', payload)}"

    def session(self, value: str, now: float | None = None) -> Session | None:
        """The session a cookie value proves, or None (forged, malformed or expired)."""
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(parts[2], self._mac("session", payload)):
            return None
        age = (now if now is not None else time.time()) - int(parts[1])
        if not 0 <= age <= SESSION_SECONDS:
            return None
        return Session(int(parts[0]), value)

    def csrf(self, seed: str) -> str:
        """The CSRF token of a session (or of a login form's cookie)."""
        return self._mac("csrf", seed)

    def csrf_ok(self, seed: str, given: str | None) -> bool:
        """Whether `given` is the CSRF token of `seed`."""
        return given is not None and hmac.compare_digest(self.csrf(seed), given)
