"""Shared fixtures live in tests/fixtures/, one module per real part."""

# A module is listed before any module that imports it, so pytest rewrites its asserts.
pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.webhooks",
    "tests.fixtures.engine",
    "tests.fixtures.s3",
    "tests.fixtures.cli",
    "tests.fixtures.synthesizers",
    "tests.fixtures.jobs",
    "tests.fixtures.celery_workers",
    "tests.fixtures.worker_runtime",
    "tests.fixtures.service",
]
