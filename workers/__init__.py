"""Celery workers: thin tasks over the pipeline's stage functions (settings: pipeline.settings).

app       the Celery app and its crash-proof settings
tasks     synthesize / stitch / finish, one step of `flow` each
flow      around each stage: lease, take over a dead worker's claim, send what it made due
runtime   per process: the event loop thread, the Rime client, the shared limiter
leases    which live worker is on a unit of work (Redis)
sweep     dead workers' claims and stalled jobs, found in the job table
dispatch  task names, queues, and sending a job's outstanding work
commands  submit, cancel, run_worker: what the command line calls
"""
