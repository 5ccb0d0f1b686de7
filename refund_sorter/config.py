"""One settings object, read from ``REFUND_SORTER_*`` environment variables.

Every default is the embedded setup: a SQLite file and folders under ``./var``,
a Redis broker on localhost, the model shipped in ``assets/``.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from refund_sorter.messages import IMAGES_PER_TASK
from refund_sorter.passwords import check_hash

# Seconds a worker may spend on the batches it holds besides any retry countdown: filling
# its batch, classifying the batches ahead of it and its own, committing (slow with a
# database under load). Part of the visibility timeout's lower bound.
BATCH_ALLOWANCE = 300

# The blind labels of unflagged photos the promotion gate needs before it judges the live
# nights: at this many an equal candidate passes the 1-point margin 95% of the time in the
# simulation of docs/operating.md ("The promotion gate by simulation").
GATE_MIN_LABELLED = 5000

# Where the model runs and in what arithmetic; the settings, the commands' options and the
# classifier all take their choices from here.
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Which engine runs the forward pass on a CPU (classifier.runtime); a GPU runs PyTorch.
Runtime = Literal["auto", "torch", "openvino"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFUND_SORTER_", extra="ignore")

    home: Path = Field(Path("var"), description="Folder holding the embedded defaults.")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in home.")
    broker_url: str = "redis://127.0.0.1:6379/0"
    model_path: Path = Field(
        Path("assets/model/refund-sorter-resnet18.pt"),
        description="The first serving model of a new install: stored and promoted when the "
        "registry has no serving model. After that the registry decides what serves.",
    )
    model_store: Path | None = Field(
        None,
        description="Folder of the registered model files, one per version; default: "
        "models/ in home. The producer, the workers and the review desk read it.",
    )
    incoming_dir: Path | None = None
    counter_dir: Path | None = Field(
        None,
        description="Folder of the photos the returns counter's API took (refund-sorter "
        "api-server), one file per content, named by its hash; default: counter/ in home, "
        "beside incoming/. The API writes it, the workers file its photos as a night's.",
    )
    processed_dir: Path | None = None
    failed_dir: Path | None = None
    export_dir: Path | None = None
    sweep_cron: str = "0 2 * * *"
    timezone: str = Field(
        "UTC",
        description="IANA time zone of the sweep's cron expression and of the review desk's "
        "days (its progress page).",
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Images a worker classifies together, at least: it gathers whole "
        f"tasks of up to {IMAGES_PER_TASK} images until it has as many.",
    )
    batch_max_wait: float = Field(2.0, gt=0, description="Seconds a worker waits to fill a batch.")
    review_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Below this sub confidence a prediction needs review, whatever model: it "
        "overrides the value set for a model version (refund-sorter threshold --set). Unset (or "
        "empty): that value, else the threshold stored in the model, chosen on held-out photos "
        "when it was trained.",
    )
    threshold_min_labelled: int = Field(
        100,
        ge=1,
        description="refund-sorter threshold suggests only thresholds with at least this many "
        "labelled photos (decided audits, reviewed flagged photos) at or above them.",
    )
    audit_rate: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of the confident (not flagged) photos drawn for a blind audit: the "
        "review desk shows them without the model's answer, and their decisions measure the "
        "accuracy of the photos nobody reviews. 0 draws none.",
    )
    audit_seed: str = Field(
        "refund-sorter",
        description="Seeds the audit draw (any text or number): the same seed, model and photo "
        "always give the same draw; change it to draw a different sample.",
    )
    audit_accuracy_target_main: float = Field(
        0.90,
        gt=0,
        le=1,
        description="The main category accuracy the photos nobody reviews should reach: "
        "RefundSorterAuditAccuracyLow fires when even the upper end of its 95% interval over "
        "the audits lies below it. The metrics endpoint exports it as "
        'refund_sorter_audit_accuracy_target{level="main"}.',
    )
    audit_accuracy_target_sub: float = Field(
        0.80,
        gt=0,
        le=1,
        description="The same for the sub category "
        '(refund_sorter_audit_accuracy_target{level="sub"}).',
    )
    shadow_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="While a candidate model is registered, the share of the photos neither "
        "flagged nor audited that workers also run it on (a fixed draw by content hash); the "
        "flagged and audited ones are always run. 0: those alone.",
    )
    blind_flagged_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="The share of the flagged photos the review desk shows without the "
        "model's answer, as it shows audits (a fixed draw by content hash), so that the "
        "promotion gate has blind labels of the flagged photos too. 0: none.",
    )
    gate_margin: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="model promote refuses a candidate whose accuracy (main or sub) may be "
        "lower than the serving model's by more than this (a one-sided 95% upper bound of "
        "the difference, over the photos the nights file).",
    )
    gate_min_labelled: int = Field(
        GATE_MIN_LABELLED,
        ge=1,
        description="model promote judges the live nights once this many photos the serving "
        "model did not flag are labelled blind (decided audits), or a --data folder once it "
        "has this many photos; with neither it refuses the candidate.",
    )
    device: Device = "auto"
    precision: Precision = Field(
        "auto",
        description="auto: fp16 on CUDA; on a CPU int8 when the model's int8 calibration "
        "agrees with fp32 on 99% of photos, else bf16 where native, else fp32.",
    )
    runtime: Runtime = Field(
        "auto",
        description="auto: OpenVINO on a CPU where it is installed (torch when the model has a "
        "passing PyTorch int8 calibration and no OpenVINO one), else torch; a GPU runs torch.",
    )
    torch_threads: int = Field(
        0, ge=0, description="Threads per worker process; 0 = the cores shared out among them."
    )
    sweep_stale_hours: float = Field(
        12.0, gt=0, description="A sweep with no progress for this long no longer blocks the next."
    )
    sweep_stall_seconds: float = Field(
        120.0,
        gt=0,
        description="A running sweep with no progress for this long, and an empty classify "
        "queue, has its queued images published again.",
    )
    sweep_stall_check_seconds: float = Field(
        60.0, gt=0, description="How often beat asks whether the running sweep stalled."
    )
    settle_seconds: float = Field(
        120.0,
        ge=0,
        description="A file that cannot be decoded and was modified less than this long ago "
        "is taken for one still being written: left in incoming/ for a later sweep, not "
        "filed in failed/.",
    )
    retry_delay: float = Field(
        60.0, gt=0, description="Seconds before a failed batch's first retry; doubles each time."
    )
    retry_limit: int = Field(
        4, ge=0, description="Retries of a failed batch before its images are marked failed."
    )
    visibility_timeout: float = Field(
        1200.0,
        gt=0,
        description="Seconds before Redis hands an unacknowledged message to another worker.",
    )

    drift_psi_threshold: float = Field(
        0.2,
        gt=0,
        description="A night's category mix has drifted when its population stability index "
        "against the baseline nights is above this (0.1: a moderate shift, 0.25: a large one) "
        "and its chi-square p-value is below REFUND_SORTER_DRIFT_P_VALUE.",
    )
    drift_p_value: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="A night's shift counts as drift only when its test puts the p-value below "
        "this (the chi-square test for the category mix, the Kolmogorov-Smirnov test for the "
        "confidences): sampling noise on a small night is not drift. The metrics endpoint "
        "exports it as refund_sorter_drift_p_value_threshold, which the drift alert reads.",
    )
    drift_ks_threshold: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="A night's confidences have drifted when the Kolmogorov-Smirnov statistic "
        "against the baseline nights (the largest gap between the two distributions, 0 to 1) "
        "is above this and its p-value is below REFUND_SORTER_DRIFT_P_VALUE. The metrics "
        "endpoint exports it as refund_sorter_drift_confidence_ks_threshold.",
    )
    drift_baseline_nights: int = Field(
        28,
        ge=1,
        description="Finished nights with classified photos, the newest before a night, that "
        "make up its drift baseline.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone this machine knows: use an IANA name such as "
                "UTC or Europe/Berlin"
            ) from None
        return value

    @field_validator("audit_seed", mode="before")
    @classmethod
    def _seed_as_text(cls, value):
        return str(value) if isinstance(value, int) else value

    @field_validator("review_threshold", mode="before")
    @classmethod
    def _empty_means_unset(cls, value):
        # compose passes an unset variable on as an empty one.
        return None if value == "" else value

    @field_validator("visibility_timeout")
    @classmethod
    def _outlasts_the_longest_hold(cls, value: float, info: ValidationInfo) -> float:
        # Redis has no delayed delivery: a worker holds a retry's message, unacknowledged, until
        # its countdown is due. A visibility timeout shorter than that hold makes Redis hand the
        # message to another worker meanwhile, and the retry would run twice.
        data = info.data
        if not {"retry_delay", "retry_limit", "batch_max_wait"} <= set(data):
            return value  # one of them is invalid itself, and reported
        longest = longest_retry_delay(data["retry_delay"], data["retry_limit"])
        hold = longest + data["batch_max_wait"] + BATCH_ALLOWANCE
        if value < hold:
            raise ValueError(
                f"must be at least {hold:.0f} s: the longest retry countdown ({longest:.0f} s: "
                "REFUND_SORTER_RETRY_DELAY x 2^(REFUND_SORTER_RETRY_LIMIT - 1)), plus "
                f"REFUND_SORTER_BATCH_MAX_WAIT, plus {BATCH_ALLOWANCE} s for the batches in hand"
            )
        return value

    flower_basic_auth: SecretStr | None = Field(
        None,
        description="user:password (several separated by commas) that Flower asks for; "
        "`refund-sorter flower` does not start without it.",
    )

    metrics_basic_auth: SecretStr | None = Field(
        None,
        description="user:password (several separated by commas) that the metrics endpoint "
        "(refund-sorter metrics-server) asks for; unset or empty: no password.",
    )

    @field_validator("flower_basic_auth", "metrics_basic_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, not by Flower, which would take "ops" as a user with no password.
        if value is not None and value.get_secret_value():
            for pair in value.get_secret_value().split(","):
                user, _, password = pair.partition(":")
                if not (user and password):
                    raise ValueError("expected user:password[,user:password...]")
        return value

    environment: Literal["production", "development"] = Field(
        "production",
        description="development lets the review desk start without a real session secret.",
    )
    file_by_category: bool = Field(
        False,
        description="File classified photos under processed/<main>/<sub>/ instead of "
        "incoming/'s folders.",
    )
    reviewers: SecretStr | None = Field(
        None,
        description="name:hash pairs, separated by commas: who may log in to the review desk "
        "(hashes from `refund-sorter review-server hash-password`).",
    )
    review_secret_key: SecretStr | None = Field(
        None,
        description="Signs the review desk's session cookies: 32 random characters or more.",
    )
    review_https: bool = Field(
        False,
        description="The review desk is reached over HTTPS (a TLS proxy): its session cookie "
        "is then never sent over plain HTTP.",
    )

    review_claim_seconds: float = Field(
        300.0,
        gt=0,
        description="How long the review desk holds a photo it shows a reviewer: nobody else "
        "is shown it, or may decide it, meanwhile.",
    )
    review_trust_proxy: bool = Field(
        False,
        description="The review desk is reached only through a proxy that appends the client's "
        "address to X-Forwarded-For: the login limit then counts that address, not the proxy's.",
    )
    api_max_bytes: int = Field(
        20 * 2**20,
        ge=1024,
        description="The largest photo the returns counter's API takes, in bytes (413 above): "
        "counted as the body arrives, so a chunked upload without a length is cut off too.",
    )
    api_wait_seconds: float = Field(
        10.0,
        gt=0,
        description="How long POST /v1/classify waits for the workers' answer; then it "
        "answers 504 with the row's id, to be read later at GET /v1/predictions/{id}.",
    )
    api_rate_limit: int = Field(
        600,
        ge=0,
        description="Requests per minute each API token may send, counted in Redis for all "
        "API processes together (429 above); 0: no limit.",
    )

    nights_failed_warning: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Failed share of the last night above which the review desk's Nights page "
        "warns (and `refund-sorter report` with it), and the alert RefundSorterFailedShareHigh "
        "fires: the metrics endpoint exports it as refund_sorter_failed_ratio_warning.",
    )

    @field_validator("reviewers")
    @classmethod
    def _names_and_hashes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            reviewer_hashes(value.get_secret_value())
        return value

    def reviewer_hashes(self) -> dict[str, str]:
        """Each reviewer's password hash, by name (none without REFUND_SORTER_REVIEWERS)."""
        return reviewer_hashes(self.reviewers.get_secret_value() if self.reviewers else "")

    @model_validator(mode="after")
    def _fill_from_home(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'refund-sorter.db'}"
        for name in ("incoming", "counter", "processed", "failed"):
            if getattr(self, f"{name}_dir") is None:
                setattr(self, f"{name}_dir", self.home / name)
        if self.export_dir is None:
            self.export_dir = self.home / "exports"
        if self.model_store is None:
            self.model_store = self.home / "models"
        return self

    @property
    def tasks_per_batch(self) -> int:
        """Classify tasks a worker gathers into one batch: enough to hold batch_size images."""
        return -(-self.batch_size // IMAGES_PER_TASK)

    def retry_countdown(self, attempt: int) -> float:
        """Seconds before a batch that failed on its ``attempt`` (0 = the first try) is
        tried again: REFUND_SORTER_RETRY_DELAY, doubled at each retry."""
        return self.retry_delay * 2**attempt


def reviewer_hashes(text: str) -> dict[str, str]:
    """``name:hash,name:hash`` as a dict; ValueError, saying which pair is wrong, else. A
    plain password where a hash belongs is refused: the setting never holds one."""
    found: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, _, encoded = pair.partition(":")
        if not name or not encoded:
            raise ValueError("expected name:hash[,name:hash...]")
        try:
            check_hash(encoded)
        except ValueError as exc:
            raise ValueError(f"reviewer {name!r}: {exc}") from None
        if name in found:
            raise ValueError(f"reviewer {name!r} is named twice")
        found[name] = encoded
    return found


def longest_retry_delay(retry_delay: float, retry_limit: int) -> float:
    """The countdown before the last retry, the longest a worker holds a retry's message."""
    return retry_delay * 2 ** (retry_limit - 1) if retry_limit else 0.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
