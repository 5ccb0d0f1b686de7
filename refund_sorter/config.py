"""One settings object, read from ``REFUND_SORTER_*`` environment variables.

Every default is the embedded setup: a SQLite file and folders under ``./var``,
a Redis broker on localhost, the model shipped in ``assets/``.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFUND_SORTER_", extra="ignore")

    home: Path = Field(Path("var"), description="Folder holding the embedded defaults.")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in home.")
    broker_url: str = "redis://127.0.0.1:6379/0"
    model_path: Path = Path("assets/model/refund-sorter-resnet18.pt")
    incoming_dir: Path | None = None
    processed_dir: Path | None = None
    failed_dir: Path | None = None
    export_dir: Path | None = None
    sweep_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    batch_size: int = Field(32, ge=1)
    batch_max_wait: float = Field(2.0, gt=0, description="Seconds a worker waits to fill a batch.")
    review_threshold: float = Field(0.6, ge=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(0, ge=0, description="Threads per worker process; 0 = all cores.")
    sweep_stale_hours: float = Field(
        12.0, gt=0, description="A sweep with no progress for this long no longer blocks the next."
    )
    flower_basic_auth: SecretStr | None = Field(
        None,
        description="user:password (several separated by commas) that Flower asks for; "
        "`refund-sorter flower` does not start without it.",
    )

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, not by Flower, which would take "ops" as a user with no password.
        if value is not None and value.get_secret_value():
            for pair in value.get_secret_value().split(","):
                user, _, password = pair.partition(":")
                if not (user and password):
                    raise ValueError("expected user:password[,user:password...]")
        return value

    @model_validator(mode="after")
    def _fill_from_home(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'refund-sorter.db'}"
        for name in ("incoming", "processed", "failed"):
            if getattr(self, f"{name}_dir") is None:
                setattr(self, f"{name}_dir", self.home / name)
        if self.export_dir is None:
            self.export_dir = self.home / "exports"
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
