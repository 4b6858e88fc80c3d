"""`GET /metrics`: Prometheus text. Counts come from the job table at every scrape (it is the
truth, whichever process did the work); request latency and Rime's 429s are this process's.

prometheus-client writes the exposition format and the latency histogram's buckets; each job
table figure is one aggregate query, so a scrape costs the same for ten jobs or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, func, select

from pipeline.stages import Event
from pipeline.store import State
from pipeline.store.schema import JOBS, SCRIPTS, SEGMENTS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class JobTableCollector(Collector):
    """Jobs by state, segments synthesized, retries, characters billed, queue depth."""

    def __init__(self, db: Engine) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        """One scrape's figures, read in one transaction."""
        with self.db.begin() as conn:
            grouped = conn.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state))
            by_state = {State(state): int(count) for state, count in grouped}
            segments = conn.execute(
                select(
                    func.coalesce(func.sum(case((SEGMENTS.c.state == State.DONE, 1), else_=0)), 0),
                    func.coalesce(
                        func.sum(case((SEGMENTS.c.attempts > 1, SEGMENTS.c.attempts - 1), else_=0)),
                        0,
                    ),
                    func.coalesce(
                        func.sum(case((SEGMENTS.c.state == State.PENDING, 1), else_=0)), 0
                    ),
                )
            ).one()
            billed = conn.scalar(select(func.coalesce(func.sum(SCRIPTS.c.billed_chars), 0)))
        jobs = GaugeMetricFamily(
            "rime_batch_jobs", "Jobs in the job table by state", labels=["state"]
        )
        for state in State:
            jobs.add_metric([state.value], float(by_state.get(state, 0)))
        yield jobs
        yield CounterMetricFamily(
            "rime_batch_segments_synthesized", "Segments done", value=float(segments[0])
        )
        yield CounterMetricFamily(
            "rime_batch_segment_retries",
            "Attempts beyond each segment's first",
            value=float(segments[1]),
        )
        yield GaugeMetricFamily(
            "rime_batch_queue_depth", "Segments waiting to be synthesized", value=float(segments[2])
        )
        yield CounterMetricFamily(
            "rime_batch_characters_billed",
            "Characters of every attempt that reached Rime",
            value=float(billed or 0),
        )


class Metrics:
    """The service's registry: the job table's figures and this process's own."""

    def __init__(self, db: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(JobTableCollector(db))
        self.latency = Histogram(
            "rime_batch_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "rime_batch_rime_rate_limited",
            "429s from Rime in this process's jobs (embedded executor; workers count their own)",
            registry=self.registry,
        )

    def on_event(self, event: Event) -> None:
        """The embedded executor's events: a retried 429 counts."""
        if event.kind == "attempt" and (event.error or "").startswith("Rime HTTP 429"):
            self.rate_limited.inc()

    def text(self) -> bytes:
        """The exposition."""
        return generate_latest(self.registry)
