"""The review console's pages: server-rendered HTML (Jinja2) behind the session login, with one
small script of its own (`service/static/console.js`) for live progress. Every page reads and
changes the job table through the same functions as the API's routes; a read-only session is
shown no write control, and the writer dependency refuses its posts anyway."""

from fastapi import APIRouter

from service.pages import actions, job, jobs, releases, schedules, static

router = APIRouter(include_in_schema=False, tags=["console"])
for part in (jobs, job, actions, releases, schedules, static):
    router.include_router(part.router)
