"""Settings from the environment: the one module that reads os.environ, for every process.

`render`, the Celery workers and the service read the same `Settings`. Names are the
well-known `RIME_API_KEY`, `RIME_API_URL`, `RIME_WS_URL`, `DATABASE_URL` and
`CELERY_BROKER_URL`, and `RIME_BATCH_<FIELD>` for the rest. A setting left unset takes the
default of the part it configures (the limits, the retry policy), so each default has one home.

Worker timings: who holds a unit of work is in the job table (a claim names its executor,
whose heartbeat says it is alive), so a second delivery of a task while the first worker is
still on it is skipped, never billed twice. A worker silent for `executor_timeout_seconds` is
gone and its claims are taken over. The Redis broker redelivers a message unacknowledged for
`visibility` seconds, kept longer than the longest task runs (a segment's every retry, or one
stitch), and a job whose rows have not moved for that long is taken to have lost its messages.

The job table defaults to a SQLite file in the user's data folder (`platformdirs`), so every
command finds the same jobs from any working folder.

A plain pydantic model rather than pydantic-settings: this is read by every command, and
`status` must start in a fraction of a second.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
)

from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.limits import LimitConfig
    from pipeline.retry import RetryPolicy
    from pipeline.webhook import DeliveryPolicy

RIME_CLOUD_HTTP_URL = "https://users.rime.ai/v1/rime-tts"
RIME_CLOUD_WS_URL = "wss://users-ws.rime.ai"
# Stitching a book-length script (decode, two loudness passes, encode) takes minutes on one
# core; this is the room left for it on top of the longest synthesis.
STITCH_SECONDS = 600.0
APP_NAME = "rime-batch"
# The levels RIME_BATCH_LOG_LEVEL takes, in any case.
LogLevel = Literal["debug", "info", "warning", "error"]

_WELL_KNOWN = {
    "rime_api_key": ("RIME_API_KEY", "RIME_BATCH_RIME_API_KEY"),
    "rime_api_url": ("RIME_API_URL",),
    "rime_ws_url": ("RIME_WS_URL",),
    "database_url": ("DATABASE_URL",),
    "celery_broker_url": ("CELERY_BROKER_URL",),
}
# Fields whose value an error never echoes.
_SECRETS = ("rime_api_key", "webhook_secret", "session_secret")


def _names(field: str) -> tuple[str, ...]:
    return _WELL_KNOWN.get(field, (f"RIME_BATCH_{field.upper()}",))


def _variables(field: str) -> AliasChoices:
    # The field's own name too, for code that builds settings by hand.
    return AliasChoices(*_names(field), field)


def default_database_url() -> str:
    """The job table used when DATABASE_URL is unset: a SQLite file in the user's data folder."""
    from platformdirs import user_data_path

    return f"sqlite:///{user_data_path(APP_NAME) / 'rime-batch.db'}"


class SettingsError(InputError):
    """An environment variable with a value that cannot be used; names the variable."""


class Settings(BaseModel):
    """Environment configuration of every process; `get_settings()` reads it once."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        allow_inf_nan=False,
        alias_generator=AliasGenerator(validation_alias=_variables),
        populate_by_name=True,
    )

    # SecretStr keeps the key out of repr(), logs and tracebacks.
    rime_api_key: SecretStr | None = None
    rime_api_url: str = RIME_CLOUD_HTTP_URL
    rime_ws_url: str = RIME_CLOUD_WS_URL
    database_url: str = Field(default_factory=default_database_url)
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    # The workers' shared cap and request budget.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Our own log lines at this level; other libraries' (botocore, urllib3, httpx, celery's
    # internals) stay at WARNING unless this is "debug".
    log_level: LogLevel = "info"

    # The limits of the Rime account (None: pipeline.limits.LimitConfig's defaults).
    concurrency: PositiveInt | None = None
    requests_per_minute: PositiveInt | None = None
    # Find the account's real limit (a cap set too high, live traffic): see pipeline.limits.
    adaptive: bool | None = None
    probe_after: PositiveInt | None = None
    # After a step back or a halving, further 429s for this long are the same overload.
    cooldown_seconds: PositiveFloat | None = None
    # Workers that share a namespace share one cap: one namespace per Rime account.
    limit_namespace: str = "rime-batch"

    # The retry policy of one segment (None: pipeline.retry.RetryPolicy's defaults).
    retry_max_attempts: PositiveInt | None = None
    retry_max_seconds: PositiveFloat | None = None
    retry_initial_wait: NonNegativeFloat | None = None
    retry_max_wait: NonNegativeFloat | None = None
    retry_jitter: NonNegativeFloat | None = None

    # Stitches at once per process, embedded or worker: ffmpeg is CPU-bound.
    stitch_parallelism: PositiveInt = 2
    # Task threads per worker process (requests it can keep in flight); None = twice the cap.
    worker_threads: PositiveInt | None = None
    # Segments one synthesis task carries, run side by side in its worker: a task's trip
    # through the broker costs about as much CPU as a short prompt's whole synthesis. One by
    # default: after a broker restart, Celery 5.7.0 closes its lost connection twice, and the
    # second close, restoring the messages still unacknowledged, fails outside kombu's
    # connection errors and stops the worker's consumer; longer tasks make that likelier.
    segments_per_task: PositiveInt = 1
    # A worker's slot of the shared cap lives this long in Redis unless renewed.
    lease_seconds: PositiveFloat = 30.0
    # How long a request may wait for its next bytes before it counts as stalled (and is
    # retried; Rime bills a stalled generation whose audio had begun, and so do we).
    read_timeout_seconds: PositiveFloat = 60.0
    # Every render and worker process beats its row in the job table this often; a cancel
    # stops its requests in flight within one beat.
    heartbeat_seconds: PositiveFloat = 1.0
    # A process that has not beaten for this long is gone: its claims may be taken over and
    # its job shows as interrupted.
    executor_timeout_seconds: PositiveFloat = 30.0
    # None: computed from the retry policy (see `visibility`).
    visibility_timeout: PositiveFloat | None = None
    stitch_seconds: PositiveFloat = STITCH_SECONDS
    # Celery task events from the start (Flower turns them on by itself when it runs); each
    # task then publishes three more messages.
    task_events: bool = False
    # What Rime charges for 1,000 characters on the account's plan, for `diff` and `plan`'s
    # estimate (None: characters only; Rime's price depends on the plan).
    price_per_1k_chars: NonNegativeFloat | None = None
    # How often one of the workers looks for dead workers' claims and stalled jobs.
    sweep_seconds: PositiveFloat = 15.0
    # A running job with no claim or finish for this long gets its work sent again;
    # None = the visibility timeout.
    stall_seconds: PositiveFloat | None = None
    # How often the schedules are looked at (times are UTC): `rime-batch beat` sends the
    # workers a tick this often, `rime-batch schedule serve` ticks itself.
    tick_seconds: PositiveFloat = 30.0

    # Every webhook event is signed with this (see pipeline.webhook); a job that notifies
    # anyone is refused without it.
    webhook_secret: SecretStr | None = None
    # One delivery's policy (None: pipeline.webhook.DeliveryPolicy's defaults).
    webhook_timeout_seconds: PositiveFloat | None = None
    webhook_initial_wait: NonNegativeFloat | None = None
    webhook_max_wait: NonNegativeFloat | None = None
    webhook_jitter: NonNegativeFloat | None = None
    webhook_give_up_seconds: PositiveFloat | None = None
    # How long the process that ends a job (a render, a cancel) tries its webhooks before it
    # exits; what is left stays pending for the workers' sweeper or `rime-batch deliver`.
    webhook_wait_seconds: NonNegativeFloat = 5.0

    # The service (`rime-batch serve`): the folder a manifest sent in a request is read as if it
    # were in (its text files, CSV and relative output); None = where `serve` starts.
    service_root: str | None = None
    # Signs the console's session cookies and CSRF tokens; None = a random one per process
    # (sessions then end when the server restarts).
    session_secret: SecretStr | None = None

    @field_validator("webhook_secret", "session_secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings in `environ` (os.environ by default); one clear error for a bad value."""
        environ = os.environ if environ is None else environ
        known = {name: field for field in cls.model_fields for name in _names(field)}
        values = {name: value for name, value in environ.items() if name in known}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            variable = str(first["loc"][0]) if first["loc"] else "the environment"
            # Never echo a secret, whatever went wrong with it.
            secret = known.get(variable, variable) in _SECRETS
            shown = "" if secret else f" (got {first['input']!r})"
            raise SettingsError(f"{variable}: {first['msg']}{shown}") from None

    @property
    def limits(self) -> LimitConfig:
        """The limits of the Rime account, with any overrides from the environment."""
        from pipeline.limits import LimitConfig

        overrides: dict[str, Any] = {
            "concurrency": self.concurrency,
            "requests_per_minute": self.requests_per_minute,
            "adaptive": self.adaptive,
            "probe_after": self.probe_after,
            "cooldown_seconds": self.cooldown_seconds,
        }
        return replace(
            LimitConfig(),
            **{k: v for k, v in overrides.items() if v is not None},
        )

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy, with any overrides from the environment."""
        from pipeline.retry import DEFAULT_POLICY

        overrides: dict[str, Any] = {
            "max_attempts": self.retry_max_attempts,
            "max_seconds": self.retry_max_seconds,
            "initial_wait": self.retry_initial_wait,
            "max_wait": self.retry_max_wait,
            "jitter": self.retry_jitter,
        }
        return replace(DEFAULT_POLICY, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def delivery(self) -> DeliveryPolicy:
        """The policy of one webhook delivery, with any overrides from the environment."""
        from pipeline.webhook import DEFAULT_DELIVERY

        overrides: dict[str, Any] = {
            "timeout_seconds": self.webhook_timeout_seconds,
            "initial_wait": self.webhook_initial_wait,
            "max_wait": self.webhook_max_wait,
            "jitter": self.webhook_jitter,
            "give_up_seconds": self.webhook_give_up_seconds,
        }
        return replace(DEFAULT_DELIVERY, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def broker_configured(self) -> bool:
        """Whether CELERY_BROKER_URL was given: the service submits to workers only then."""
        return "celery_broker_url" in self.model_fields_set

    @property
    def threads(self) -> int:
        """Task threads per worker process."""
        return self.worker_threads or 2 * self.limits.concurrency

    @property
    def visibility(self) -> float:
        """The broker's visibility timeout in seconds (see the module's docstring)."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.policy.longest_seconds + self.stitch_seconds

    @property
    def stall(self) -> float:
        """Seconds without progress after which a running job's work is sent again."""
        return self.stall_seconds if self.stall_seconds is not None else self.visibility


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_environment()
