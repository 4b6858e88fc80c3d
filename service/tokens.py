"""API tokens: `rime-batch token create NAME` prints one once; only its SHA-256 is stored.

A token is 32 random bytes (URL-safe base64) behind a `rbt_` prefix, so a leaked one is easy to
search for. With that much entropy a plain SHA-256 is the right hash: no password stretching is
needed, and a lookup is one indexed equality.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.errors import InputError
from pipeline.store.schema import API_TOKENS, utcnow

PREFIX = "rbt_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Token:
    """A token as stored: never the token itself."""

    id: int
    name: str
    read_only: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def digest(secret: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(row: object) -> Token:
    return Token(
        id=row.id,  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        read_only=bool(row.read_only),  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
        last_used_at=row.last_used_at,  # type: ignore[attr-defined]
        revoked_at=row.revoked_at,  # type: ignore[attr-defined]
    )


def create_token(conn: Connection, name: str, *, read_only: bool = False) -> tuple[Token, str]:
    """A new token named `name`, and the token itself (shown once, then only its hash is kept)."""
    if not _NAME.fullmatch(name):
        raise InputError(
            f"token name {name!r}: up to 64 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    secret = PREFIX + secrets.token_urlsafe(32)
    try:
        with conn.begin_nested():
            conn.execute(
                insert(API_TOKENS).values(
                    name=name, token_hash=digest(secret), read_only=read_only, created_at=utcnow()
                )
            )
    except IntegrityError:
        raise InputError(f"a token named {name!r} exists; revoke it or choose another") from None
    row = conn.execute(select(API_TOKENS).where(API_TOKENS.c.name == name)).one()
    return _token(row), secret


def list_tokens(conn: Connection) -> list[Token]:
    """Every token, oldest first, revoked ones too."""
    return [_token(r) for r in conn.execute(select(API_TOKENS).order_by(API_TOKENS.c.id))]


def revoke_token(conn: Connection, name: str) -> None:
    """Revoke the token called `name` (its row stays, so its name is not reused by mistake)."""
    done = conn.execute(
        update(API_TOKENS)
        .where(API_TOKENS.c.name == name, API_TOKENS.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if done.rowcount != 1:
        raise InputError(f"no live token named {name!r}")


def authenticate(conn: Connection, secret: str) -> Token | None:
    """The live token `secret` is, or None."""
    if not secret.startswith(PREFIX):
        return None
    row = conn.execute(
        select(API_TOKENS).where(
            API_TOKENS.c.token_hash == digest(secret), API_TOKENS.c.revoked_at.is_(None)
        )
    ).first()
    return None if row is None else _token(row)


def live_token(conn: Connection, token_id: int) -> Token | None:
    """The token with this id unless it was revoked (a session lives no longer than it)."""
    row = conn.execute(
        select(API_TOKENS).where(API_TOKENS.c.id == token_id, API_TOKENS.c.revoked_at.is_(None))
    ).first()
    return None if row is None else _token(row)
