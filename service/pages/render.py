"""What the console's pages share: the templates, the page context, form-post answers."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from service.auth import Caller
from service.state import ServiceState

# What a form post's next page says: a fixed set, so no text of a URL is ever shown as a notice.
NOTICES = {
    "submitted": "Job submitted.",
    "published": "Release published.",
    "rolled-back": "Rolled back: the earlier release is published again.",
    "cancelled": "Job cancelled.",
    "resumed": "Job resumed.",
    "schedule-added": "Schedule added.",
    "schedule-deleted": "Schedule deleted.",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The console's templates (service/templates), escaped by default."""
    return Environment(
        loader=PackageLoader("service", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def csrf_of(state: ServiceState, caller: Caller | None) -> str:
    """The session's CSRF token for its forms ("" for a bearer caller: it needs none)."""
    if caller is None or caller.session is None:
        return ""
    return state.signer.csrf(caller.session.value)


def html_page(
    request: Request,
    template: str,
    caller: Caller | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """`template` rendered with the caller, its CSRF token and whether it may change things."""
    state: ServiceState = request.app.state.service
    shown = (
        environment()
        .get_template(template)
        .render(
            caller=caller,
            csrf=csrf_of(state, caller),
            writable=caller is not None and not caller.token.read_only,
            notice=NOTICES.get(request.query_params.get("notice", "")),
            **context,
        )
    )
    return HTMLResponse(shown, status_code=status, headers={"Cache-Control": "no-store"})


def fragment(template: str, **context: Any) -> str:
    """A piece of a page (the jobs list's rows)."""
    return environment().get_template(template).render(**context)


def back_to(path: str, notice: str | None = None) -> RedirectResponse:
    """The answer to a form post: the page to show next (303, so a reload does not post again),
    with one of NOTICES."""
    if notice is not None:
        assert notice in NOTICES, notice
        path += ("&" if "?" in path else "?") + f"notice={quote(notice)}"
    return RedirectResponse(path, status_code=303)
