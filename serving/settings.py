"""Every `mlops-serve` option, declared once: its flag, environment variable, default and meaning.

The CLI (`build_parser`) and the README's settings table (`python -m serving.settings_table`) are
generated from `ServeSettings`; a flag wins over its variable, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MLOPS_SERVE_"
MIB = 1024 * 1024


def _option(default: Any, meaning: str, *, env: str | None = None, shown: str | None = None, internal=False):
    """A field with the README's words: `meaning`, the default as `shown` (else the value), and an
    environment variable other than MLOPS_SERVE_<NAME> where the pipeline already names it."""
    extra = {"shown": shown, "internal": internal}
    alias = AliasChoices(env) if env else None
    return Field(default, description=meaning, validation_alias=alias, json_schema_extra=extra)


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, populate_by_name=True)

    host: str = _option("0.0.0.0", "gRPC bind address")
    port: int = _option(8001, "gRPC port")
    metrics_port: int = _option(8002, "HTTP `/health`, `/ready`, `/metrics`; `-1` turns it off")
    http_port: int = _option(
        8000,
        "the Open Inference Protocol over HTTP/REST (`/v2/...`, Triton's port), behind the same token and TLS "
        "as gRPC; `-1` turns it off",
    )
    tracking_uri: str | None = _option(
        None,
        "MLflow tracking URI (the pipeline's local store by default)",
        env="MLFLOW_TRACKING_URI",
        shown="`sqlite:///$MLOPS_HOME/mlflow.db`",
    )
    registry_uri: str | None = _option(None, "MLflow registry URI", env="MLFLOW_REGISTRY_URI", shown="tracking URI")
    model_name: str = _option("flight_delay", "registered model to serve", env="MLOPS_MODEL_NAME")
    aliases: Annotated[list[str], NoDecode] = _option(
        ["champion"], "comma-separated aliases; the first is the default version", shown="`champion`"
    )
    model_path: str | None = _option(None, "serve this ONNX file instead of the registry")
    model_version: str = _option("1", "version label for `--model-path`")
    poll_interval: float = _option(10.0, "seconds between the mirror's registry polls")
    registry_backoff_initial: float = _option(
        1.0, "seconds before the first retry of a failed registry call or download; doubles on each failure"
    )
    registry_backoff_max: float = _option(60.0, "longest wait between those retries, in seconds")
    require_approval: bool = _option(
        False, "serve only versions tagged `promotion_decision=approved`", shown="off (on in `deploy/`)"
    )
    cache_dir: str | None = _option(None, "downloaded versions", shown="`$MLOPS_HOME/serving_cache`")
    batching: bool = _option(True, "dynamic batching")
    max_batch_size: int = _option(256, "most rows per request and per batch")
    max_queue_delay_us: int = _option(500, "longest a batch waits for more rows (only while more are expected)")
    queue_capacity: int = _option(
        1024, "queued requests per version before RESOURCE_EXHAUSTED (RPCs in flight without batching)"
    )
    workers: int = _option(1, "worker processes sharing the gRPC and REST ports (SO_REUSEPORT)")
    intra_op_threads: int = _option(
        1, "ONNX Runtime threads per run; wins over the threads recorded with the model (it is sized to the pod)"
    )
    nan_policy: Literal["reject", "allow_nan", "allow"] = _option(
        "reject", "`reject`, `allow_nan` or `allow` NaN/Inf in float inputs"
    )
    token: str | None = _option(
        None, "require this bearer token (`authorization: Bearer <token>`) for inference and metadata"
    )
    admin_token: str | None = _option(
        None, "bearer token of RepositoryIndex/ModelLoad/ModelUnload", shown="none (control plane off)"
    )
    tls_cert: str | None = _option(None, "PEM certificate; with `--tls-key` it turns TLS on")
    tls_key: str | None = _option(None, "PEM private key; with `--tls-cert` it turns TLS on")
    prediction_log_dir: str | None = _option(
        None, "prediction log folder", env="MLOPS_PREDICTION_LOG_DIR", shown="`$MLOPS_HOME/prediction_log`"
    )
    prediction_log_sample_rate: float = _option(
        1.0, "share of requests logged; `0` turns it off", env="MLOPS_PREDICTION_LOG_SAMPLE_RATE"
    )
    prediction_log_max_bytes: int = _option(
        64 * MIB, "rotate a segment past this size", env="MLOPS_PREDICTION_LOG_MAX_BYTES", shown="64 MiB"
    )
    prediction_log_max_age_s: float = _option(
        300.0, "rotate a segment past this age, in seconds", env="MLOPS_PREDICTION_LOG_MAX_AGE_S"
    )
    prediction_log_max_total_bytes: int = _option(
        1024 * MIB,
        "delete the oldest closed segments past this; `0` keeps all",
        env="MLOPS_PREDICTION_LOG_MAX_TOTAL_BYTES",
        shown="1 GiB",
    )
    log_ship_to: str | None = _option(
        None,
        "where closed segments ship (`prediction_log/yyyy/mm/dd/…`): a folder, `file://…` or `s3://bucket/prefix` "
        "(boto3's credential chain, `AWS_ENDPOINT_URL_S3`); `none` keeps them local",
        shown="`$MLOPS_HOME/artifacts`",
    )
    stall_timeout: float = _option(10.0, "seconds without progress before `/health` fails and a worker is restarted")
    max_message_bytes: int = _option(
        4 * MIB, "largest gRPC message in or out, and largest REST body in (413 past it)", shown="4 MiB"
    )
    max_concurrent_rpcs: int = _option(
        256, "RPCs handled at once per worker; more get RESOURCE_EXHAUSTED (REST: 429), counted per protocol"
    )
    max_queued_bytes: int = _option(64 * MIB, "request data queued for batching per worker", shown="64 MiB")
    grace_period: float = _option(
        30.0, "seconds requests in flight get on SIGTERM; the process ends by grace + 5 s whatever happens"
    )
    log_level: str = _option("INFO", "log level (`DEBUG` logs every request)")
    # Set by the parent for its workers, never by a user: no flag, no row in the table.
    manifest_path: str | None = _option(None, "the registry mirror's manifest", internal=True)
    metrics_dir: str | None = _option(None, "where workers write their metrics snapshots", internal=True)

    @field_validator("aliases", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [alias.strip() for alias in value.split(",") if alias.strip()]
        return value


@dataclass(frozen=True)
class Option:
    """One user-facing setting as the CLI and the README show it."""

    name: str
    flag: str
    env: str
    default: Any
    shown: str
    meaning: str
    kind: Any  # the field's type without None: bool, int, float, str or a Literal

    @property
    def choices(self) -> tuple[str, ...] | None:
        return get_args(self.kind) if get_origin(self.kind) is Literal else None


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return f"`{','.join(default)}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def options() -> Iterator[Option]:
    for name, field in ServeSettings.model_fields.items():
        extra = field.json_schema_extra or {}
        if extra.get("internal"):
            continue
        alias = field.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else ENV_PREFIX + name.upper()
        kinds = [k for k in get_args(field.annotation) if k is not type(None)] or [field.annotation]
        yield Option(
            name=name,
            flag="--" + name.replace("_", "-"),
            env=env,
            default=field.default,
            shown=extra.get("shown") or _shown(field.default),
            meaning=field.description or "",
            kind=kinds[0],
        )


def build_parser() -> argparse.ArgumentParser:
    """The `mlops-serve` CLI. Flags default to 'not given', so that pydantic-settings fills in the
    environment and the declared defaults: one order of precedence, kept in one place."""
    parser = argparse.ArgumentParser(
        prog="mlops-serve",
        description="Serve a registered ONNX model over the Open Inference Protocol (KServe v2) on gRPC and REST.",
        argument_default=argparse.SUPPRESS,
    )
    for option in options():
        words = option.meaning.replace("`", "")
        shown = option.shown.replace("`", "")
        extra: dict[str, Any] = {"help": f"{words} (default: {shown}) [{option.env}]"}
        if option.kind is bool:
            extra["action"] = argparse.BooleanOptionalAction
        elif option.choices:
            extra["choices"] = option.choices
        elif option.kind in (int, float):
            extra["type"] = option.kind
        parser.add_argument(option.flag, **extra)
    return parser


def mlops_home() -> Path:
    return Path(os.environ.get("MLOPS_HOME", "./.mlops"))


def parse_settings(argv: list[str] | None = None) -> ServeSettings:
    """The settings of one `mlops-serve` command line, checked as a whole; SystemExit when they do not hold."""
    given = vars(build_parser().parse_args(argv))
    try:
        settings = ServeSettings(**given)
    except ValidationError as exc:
        raise SystemExit(f"mlops-serve: {exc}") from exc
    if not settings.aliases:
        raise SystemExit("mlops-serve: --aliases needs at least one alias")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("mlops-serve: --tls-cert and --tls-key go together")
    if settings.workers > 1 and (settings.port == 0 or settings.http_port == 0):
        raise SystemExit("mlops-serve: --workers > 1 needs a fixed --port and --http-port (the workers share them)")
    if not settings.model_path and not settings.tracking_uri:
        # The pipeline's embedded default (resources.settings): MLflow on SQLite in $MLOPS_HOME.
        settings.tracking_uri = f"sqlite:///{mlops_home().resolve() / 'mlflow.db'}"
    return settings


def ship_destination(value: str | None) -> str | None:
    """The URI closed prediction log segments ship to: by default the embedded pipeline's artifact store,
    which reads them from there (resources/served_predictions.py); None for 'none'."""
    if value is None:
        return str(mlops_home() / "artifacts")
    return None if value.strip().lower() == "none" else value
