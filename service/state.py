"""What every request of the service reaches: the job table, settings, signer, runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from pipeline.settings import Settings
from service.metrics import Metrics
from service.peaks import PeakCache
from service.runner import Runner
from service.sessions import Signer


@dataclass
class ServiceState:
    """The service's parts, built once by `service.app.create_app`."""

    db: Engine
    settings: Settings
    signer: Signer
    runner: Runner
    metrics: Metrics
    root: Path  # where a posted manifest is read as if it were (see service.api.jobs)
    peaks: PeakCache = field(default_factory=PeakCache)  # the console's peak strips
