"""The console's door: a login page (a token in, a session cookie out), logout, and a landing
page. The console's own pages mount beside these and depend on `console_caller`.

The session cookie is HttpOnly, SameSite=Strict, Path=/, and Secure when the request came
over HTTPS. The login form carries a CSRF token of its own (a random cookie and the same value
in the form), so another site cannot log a browser in as someone else.
"""

from __future__ import annotations

import html
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service import sessions
from service.api.common import off_loop, state_of
from service.auth import Caller, poster, reader
from service.errors import ApiError
from service.tokens import authenticate

router = APIRouter(tags=["console"], include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · rime-batch</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}
input,button{{font:inherit;padding:.4rem}} input[type=password]{{width:100%;box-sizing:border-box}}
.error{{color:#a00}}</style></head>
<body><main>{body}</main></body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A console page: `body` is HTML already escaped."""
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


async def console_caller(request: Request) -> Caller:
    """The signed-in user of a console page; anyone else is sent to the login page."""
    try:
        return await reader(request)
    except ApiError as exc:
        if exc.status == 401:
            raise LoginRequired from None
        raise


class LoginRequired(Exception):
    """A console page asked for without a session: answered with a redirect to /login."""


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_form(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    csrf = state_of(request).signer.csrf(nonce)
    shown = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    body = f"""<h1>rime-batch</h1>{shown}
<form method="post" action="/login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="{sessions.CSRF_FIELD}" value="{csrf}">
<p><button type="submit">Sign in</button></p></form>
<p>Create a token with <code>rime-batch token create NAME</code>.</p>"""
    response = page("Sign in", body, status)
    response.set_cookie(
        sessions.LOGIN_COOKIE,
        nonce,
        max_age=600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/login",
    )
    return response


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    """The sign-in form."""
    return _login_form(request)


@router.post("/login")
async def login(
    request: Request,
    token: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """A valid token starts a session; the token itself is never stored in the browser."""
    state = state_of(request)
    nonce = request.cookies.get(sessions.LOGIN_COOKIE)
    if nonce is None or not state.signer.csrf_ok(nonce, csrf_token):
        return _login_form(request, "The form expired: sign in again.", 403)

    def check() -> int | None:
        with state.db.begin() as conn:
            found = authenticate(conn, token.strip())
        return None if found is None else found.id

    token_id = await off_loop(check)
    if token_id is None:
        return _login_form(request, "That token is not valid.", 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        state.signer.cookie(token_id),
        max_age=sessions.SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, _caller: Annotated[Caller, Depends(poster)]) -> Response:
    """End the session (a form with the session's CSRF token)."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/")
async def home(request: Request, caller: Annotated[Caller, Depends(console_caller)]) -> Response:
    """The landing page: who is signed in, and a logout form."""
    csrf = state_of(request).signer.csrf(caller.session.value) if caller.session is not None else ""
    mode = "read-only" if caller.token.read_only else "read and write"
    body = f"""<h1>rime-batch</h1>
<p>Signed in with token <strong>{html.escape(caller.token.name)}</strong> ({mode}).</p>
<form method="post" action="/logout">
<input type="hidden" name="{sessions.CSRF_FIELD}" value="{html.escape(csrf)}">
<button type="submit">Sign out</button></form>"""
    return page("Console", body)
