"""Celery workers: thin tasks over the pipeline's stage functions (settings: pipeline.settings).

app       the Celery app, its crash-proof settings and beat's one entry (the schedules' tick)
tasks     synthesize / stitch / finish / deliver / tick, one step of `flow` each
flow      around each stage: run it, do or send what it made due; the tick
runtime   per process: the event loop thread, the Rime client, the shared limiter, the executor,
          the webhook sender
sweep     dead workers' claims (their heartbeat stopped), stalled jobs and webhook deliveries
          come due, from the job table
dispatch  task names, queues, and sending a job's outstanding work
commands  submit, cancel, run_worker, run_beat: what the command line calls
"""
