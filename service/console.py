"""The console's door: a login page (a token in, a session cookie out) and logout. The
console's pages (`service.pages`) mount beside these and depend on `console_caller`.

The session cookie is HttpOnly, SameSite=Strict, Path=/, and Secure when the request came
over HTTPS. The login form carries a CSRF token of its own (a random cookie and the same value
in the form), so another site cannot log a browser in as someone else.
"""

from __future__ import annotations

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
    from service.pages.render import html_page

    nonce = secrets.token_urlsafe(24)
    csrf = state_of(request).signer.csrf(nonce)
    response = html_page(
        request, "login.html", None, status, title="Sign in", error=error, login_csrf=csrf
    )
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
