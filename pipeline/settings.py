"""Settings from the environment: the only module that reads os.environ."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

RIME_CLOUD_HTTP_URL = "https://users.rime.ai/v1/rime-tts"
RIME_CLOUD_WS_URL = "wss://users-ws.rime.ai"


class Settings(BaseSettings):
    """Environment configuration; well-known names plus `RIME_BATCH_*`."""

    model_config = SettingsConfigDict(env_prefix="RIME_BATCH_", extra="ignore")

    # SecretStr keeps the key out of repr(), logs and tracebacks.
    rime_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("RIME_API_KEY", "RIME_BATCH_RIME_API_KEY")
    )
    rime_api_url: str = Field(
        default=RIME_CLOUD_HTTP_URL, validation_alias=AliasChoices("RIME_API_URL")
    )
    rime_ws_url: str = Field(
        default=RIME_CLOUD_WS_URL, validation_alias=AliasChoices("RIME_WS_URL")
    )
    database_url: str = Field(
        default="sqlite:///rime-batch.db", validation_alias=AliasChoices("DATABASE_URL")
    )
    celery_broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("CELERY_BROKER_URL")
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Rime's pay-as-you-go plan allows 5 concurrent generations per account.
    concurrency: int = 5
    requests_per_minute: int | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
