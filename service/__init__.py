"""rime-batch as a service: `rime-batch serve`, an authenticated HTTP API over the job table.

    app          the application factory (FastAPI): routes, error handlers, request metrics
    errors       the one error shape `{"error": {"code", "message", "field"?}}` and its codes
    tokens       API tokens: created once, stored as their SHA-256, revoked
    auth         who is asking: a bearer token, or the console's session cookie with CSRF
    sessions     the session cookie and CSRF tokens, signed with the session secret
    idempotency  `Idempotency-Key` on job creation: one job per key, however many requests
    runner       where jobs run: the embedded executor in this process, or the Celery workers
    models       the API's JSON shapes (pydantic), which the OpenAPI schema is written from
    metrics      Prometheus text: counts read from the job table, request latency
    console      the login page, logout and the console's landing page
    api/         the routes under /v1, one module per resource

It sits above all of `pipeline/` and `workers/` and may import both.
"""
