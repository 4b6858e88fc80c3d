"""The routes under /v1, one module per resource: jobs (and their outputs and deliveries),
productions' releases, schedules."""
