"""One Settings class, read by the API, the worker and the CLI alike.

Every field is an environment variable (prefix-free names as in DESIGN.md and
the README); defaults are the embedded, no-server setup under ./var.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    distill_home: Path = Field(Path("./var"), alias="DISTILL_HOME", description="Data folder (DB, broker, artifacts).")
    database_url: str | None = Field(None, alias="DATABASE_URL", description="Default: SQLite file in DISTILL_HOME.")
    broker_url: str | None = Field(None, alias="BROKER_URL", description="Default: filesystem transport in DISTILL_HOME.")
    api_keys: str = Field("", alias="DISTILL_API_KEYS", description="Comma-separated bearer keys; empty = no auth.")
    admin_keys: str = Field(
        "", alias="DISTILL_ADMIN_KEYS", description="Comma-separated keys that see every key's jobs, models, datasets."
    )
    key_hash_secret: str = Field(
        "", alias="DISTILL_KEY_HASH_SECRET",
        description="HMAC secret for the key fingerprints stored as owners; set it once, never change it.",
    )
    rate_limit_per_min: int = Field(
        0, alias="DISTILL_RATE_LIMIT_PER_MIN", ge=0, description="POST requests per key per minute; 0 = unlimited."
    )
    max_upload_mb: int = Field(512, alias="DISTILL_MAX_UPLOAD_MB", ge=1)
    max_unpacked_mb: int = Field(
        0, alias="DISTILL_MAX_UNPACKED_MB", ge=0,
        description="Largest unpacked size of an uploaded archive; 0 = 4 x DISTILL_MAX_UPLOAD_MB.",
    )
    max_zip_ratio: float = Field(
        200.0, alias="DISTILL_MAX_ZIP_RATIO", gt=1,
        description="Largest unpacked/packed size ratio of an uploaded archive (and of each member over 1 MiB).",
    )
    max_image_pixels: int = Field(
        50_000_000, alias="DISTILL_MAX_IMAGE_PIXELS", ge=1,
        description="Largest width x height of one uploaded image (PIL's decompression-bomb guard is set to it).",
    )
    upload_checks: int = Field(
        2, alias="DISTILL_UPLOAD_CHECKS", ge=1,
        description="Uploads checked at once, each in a child process; more answer 503 with Retry-After.",
    )
    tmp_max_age_s: float = Field(
        6 * 3600.0, alias="DISTILL_TMP_MAX_AGE_S", gt=0,
        description="Upload temp folders older than this are removed as abandoned (start-up and periodically).",
    )
    max_json_kb: int = Field(
        256, alias="DISTILL_MAX_JSON_KB", ge=1, description="Largest JSON request body; bigger gets 413 unread."
    )
    max_json_depth: int = Field(
        32, alias="DISTILL_MAX_JSON_DEPTH", ge=2, description="Deepest nesting of a JSON body; deeper gets 422."
    )
    named_datasets: str = Field(
        "", alias="DISTILL_DATASETS", description="Extra named datasets: 'name=/path/to/tree,other=/x.npz'."
    )
    heartbeat_s: float = Field(5.0, alias="DISTILL_HEARTBEAT_S", gt=0)
    stale_after_s: float = Field(30.0, alias="DISTILL_STALE_AFTER_S", gt=0)
    max_attempts: int = Field(3, alias="DISTILL_MAX_ATTEMPTS", ge=1)
    progress_interval_s: float = Field(1.0, alias="DISTILL_PROGRESS_INTERVAL_S", ge=0)
    torch_threads: int = Field(0, alias="DISTILL_TORCH_THREADS", ge=0, description="0 = torch default.")
    # Read by the engine itself (core.data) from the environment, so `distill run` honours them too;
    # declared here so they are validated and documented with the rest.
    data_memory_mb: float = Field(2048, alias="DISTILL_DATA_MEMORY_MB", gt=0,
                                  description="Image sets above this (uint8 pixels) are streamed from their files.")
    data_workers: int | None = Field(None, alias="DISTILL_DATA_WORKERS", ge=0,
                                     description="DataLoader processes of a streamed set; unset = up to 4.")
    data_cache_dir: str | None = Field(
        None, alias="DISTILL_DATA_CACHE_DIR",
        description="Where decoded image stores live; unset = DISTILL_HOME/cache/images.")
    data_cache_mb: float = Field(20480, alias="DISTILL_DATA_CACHE_MB", ge=0,
                                 description="Size of the decoded image stores; least recently used are evicted.")
    bucket_cache_mb: float = Field(20480, alias="DISTILL_BUCKET_CACHE_MB", ge=0,
                                   description="Size of the local copies of datasets registered by reference.")
    log_level: str = Field("INFO", alias="DISTILL_LOG_LEVEL")
    storage_url: str | None = Field(
        None, alias="DISTILL_STORAGE_URL", description="Unset: files under DISTILL_HOME; s3://bucket/prefix: S3."
    )
    storage_redirect: bool = Field(
        False, alias="DISTILL_STORAGE_REDIRECT", description="S3 downloads answer 307 to a presigned URL."
    )
    sweep_max_children: int = Field(64, alias="DISTILL_SWEEP_MAX_CHILDREN", ge=1, description="Jobs per sweep.")
    presign_expires_s: int = Field(300, alias="DISTILL_PRESIGN_EXPIRES_S", ge=1, le=7 * 24 * 3600)
    mlflow_tracking_uri: str = Field(
        "", alias="MLFLOW_TRACKING_URI", description="Log each finished job as an MLflow run; empty = off."
    )
    mlflow_experiment: str = Field("distill", alias="MLFLOW_EXPERIMENT_NAME", description="MLflow experiment name.")

    @field_validator("distill_home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.distill_home / 'distill.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Where the filesystem transport keeps its messages (used only when BROKER_URL is unset)."""
        return self.distill_home / "broker"

    @property
    def max_unpacked_bytes(self) -> int:
        """The unpacked-size bound of an uploaded archive, in bytes (default: 4 x the upload cap)."""
        return (self.max_unpacked_mb or 4 * self.max_upload_mb) * 1024 * 1024

    @property
    def jobs_dir(self) -> Path:
        return self.distill_home / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.distill_home / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.distill_home / "datasets"

    @property
    def api_key_set(self) -> frozenset[str]:
        """Every key that may call the API: DISTILL_API_KEYS plus DISTILL_ADMIN_KEYS."""
        return _split_keys(self.api_keys) | self.admin_key_set

    @property
    def admin_key_set(self) -> frozenset[str]:
        return _split_keys(self.admin_keys)

    @property
    def dataset_roots(self) -> dict[str, Path]:
        """Operator-registered dataset names -> paths (DISTILL_DATASETS)."""
        roots: dict[str, Path] = {}
        for item in self.named_datasets.split(","):
            if "=" in item:
                name, path = item.split("=", 1)
                roots[name.strip()] = Path(path.strip()).expanduser()
        return roots


def _split_keys(text: str) -> frozenset[str]:
    return frozenset(key.strip() for key in text.split(",") if key.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
