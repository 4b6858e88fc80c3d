"""Celery workers: thin tasks over the pipeline's stage functions."""
