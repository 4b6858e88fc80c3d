"""Who is asking: a bearer token (the API's clients), or the console's session cookie.

Every route but `/health` and the login page depends on `reader` or `writer`. A read-only token
passes `reader` only. A request that comes with the session cookie instead of a bearer token
must carry the session's CSRF token to pass `writer` (in the `X-CSRF-Token` header or the form's
`csrf_token` field); a bearer token is never sent by a browser on its own, so it needs none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from sqlalchemy import update
from starlette.concurrency import run_in_threadpool

from pipeline.store.schema import API_TOKENS, utcnow
from service import sessions
from service.errors import forbidden, unauthorized
from service.state import ServiceState
from service.tokens import Token, authenticate, live_token

# last_used_at is written at most this often per token: not one write per request.
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """A request's verified credentials."""

    token: Token
    session: sessions.Session | None  # set when it came with the session cookie


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("the Authorization header must be `Bearer <token>`")
    return value.strip()


def _identify(state: ServiceState, secret: str | None, cookie: str | None) -> Caller:
    with state.db.begin() as conn:
        if secret is not None:
            token = authenticate(conn, secret)
            if token is None:
                raise unauthorized("the token is not valid (or was revoked)")
            session = None
        elif cookie is not None:
            session = state.signer.session(cookie)
            token = live_token(conn, session.token_id) if session is not None else None
            if token is None:
                raise unauthorized("the session has ended: log in again")
        else:
            raise unauthorized()
        now = utcnow()
        if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
            conn.execute(
                update(API_TOKENS).where(API_TOKENS.c.id == token.id).values(last_used_at=now)
            )
    return Caller(token, session)


async def reader(request: Request) -> Caller:
    """Any live token, by bearer header or session cookie."""
    state: ServiceState = request.app.state.service
    secret = _bearer(request)
    cookie = request.cookies.get(sessions.COOKIE)
    caller = await run_in_threadpool(_identify, state, secret, cookie)
    request.state.caller = caller
    return caller


async def writer(request: Request) -> Caller:
    """A token that may change things; with the session cookie, the session's CSRF token too."""
    caller = await reader(request)
    if caller.token.read_only:
        raise forbidden(f"token {caller.token.name!r} is read-only")
    await _check_csrf(request, caller)
    return caller


async def poster(request: Request) -> Caller:
    """Any live token, for a form that changes only the session itself (logout)."""
    caller = await reader(request)
    await _check_csrf(request, caller)
    return caller


async def _check_csrf(request: Request, caller: Caller) -> None:
    if caller.session is None:
        return
    given = request.headers.get(sessions.CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        field = form.get(sessions.CSRF_FIELD)
        given = field if isinstance(field, str) else None
    state: ServiceState = request.app.state.service
    if not state.signer.csrf_ok(caller.session.value, given):
        raise forbidden("the form's CSRF token is missing or wrong: reload the page")
