"""Shared fixtures live in tests/fixtures/, one module per real part."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.engine",
    "tests.fixtures.s3",
    "tests.fixtures.cli",
    "tests.fixtures.celery_workers",
    "tests.fixtures.worker_runtime",
    "tests.fixtures.synthesizers",
    "tests.fixtures.jobs",
]
