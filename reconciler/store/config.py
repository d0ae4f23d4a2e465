"""The backend configuration: `backend:` in reconciler.yaml, then the
`RECONCILER_BACKEND_*` environment variables, then `--backend-config KEY=VALUE` (highest),
checked and returned as a BackendConfig. The command line reads it and hands it to
reconciler.store.backend.make(); no backend reads a configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.util.settings import config_document

ENV_PREFIX = "RECONCILER_BACKEND_"
KEYS = ("type", "bucket", "key_prefix", "region", "lock", "table", "encryption", "kms_key_id", "history_limit")
TYPES = ("local", "s3")
LOCKS = ("s3", "dynamodb")
ENCRYPTIONS = ("AES256", "aws:kms")
NEEDS_BUCKET = (
    "the s3 backend needs a bucket: backend.bucket in reconciler.yaml, RECONCILER_BACKEND_BUCKET "
    "or --backend-config bucket=NAME"
)
HISTORY_LIMIT = 20  # history records kept per function (backend.history_limit)


@dataclass(frozen=True)
class BackendConfig:
    type: str = "local"
    bucket: str | None = None
    key_prefix: str = "reconciler"
    region: str | None = None
    lock: str = "s3"
    table: str | None = None
    encryption: str = "AES256"  # S3 server-side encryption of the state and lock objects
    kms_key_id: str | None = None  # with encryption aws:kms (None: the account's aws/s3 key)
    history_limit: str = str(HISTORY_LIMIT)
    sources: dict = field(default_factory=dict, compare=False, repr=False)  # key → where its value came from


def read_config(
    workspace: Path | str = ".", overrides: list[str] | tuple = (), environ: Mapping[str, str] | None = None
) -> BackendConfig:
    """The backend configuration: defaults < reconciler.yaml < RECONCILER_BACKEND_* < --backend-config."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    doc = config_document(workspace)
    if doc is not None:
        from reconciler.errors import did_you_mean

        shown = doc.file
        be = doc.data.get("backend")
        if be is not None and not isinstance(be, dict):
            raise doc.error(("backend",), "'backend' must be a mapping (type, bucket, key_prefix, region, lock, table)")
        for k, v in (be or {}).items():
            if k not in KEYS:
                raise doc.error(("backend", k), f"unknown backend key '{k}'", did_you_mean(str(k), KEYS))
            if v is None:
                continue
            if isinstance(v, (dict, list)):
                raise doc.error(("backend", k), f"backend.{k} must be a string")
            values[k] = str(v)
            line = doc.line(("backend", k))
            sources[k] = f"{shown}:{line}" if line else shown
    for k in KEYS:
        v = env.get(ENV_PREFIX + k.upper())
        if v:
            values[k] = v
            sources[k] = ENV_PREFIX + k.upper()
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--backend-config '{item}' is not KEY=VALUE (keys: {', '.join(KEYS)})")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in KEYS:
            from reconciler.errors import did_you_mean

            raise ConfigError(f"--backend-config: unknown key '{k}'", hint=did_you_mean(k, KEYS))
        values[k] = v.strip()
        sources[k] = "--backend-config"
    cfg = BackendConfig(**dict(values.items()), sources=sources)
    return _validated(cfg)


def _validated(cfg: BackendConfig) -> BackendConfig:
    def bad(key: str, message: str) -> ConfigError:
        src = cfg.sources.get(key)
        if not src:
            return ConfigError(message)
        if src == "--backend-config" or src.startswith(ENV_PREFIX):
            return ConfigError(f"{src}: {message}")
        file, _, line = src.rpartition(":")
        return ConfigError(message, file, int(line)) if line.isdigit() else ConfigError(message, src)

    if cfg.type not in TYPES:
        raise bad("type", f"backend type must be one of {', '.join(TYPES)}, not '{cfg.type}'")
    if cfg.type == "s3":
        if not cfg.bucket:
            raise ConfigError(NEEDS_BUCKET)
        if cfg.lock not in LOCKS:
            raise bad("lock", f"backend lock must be one of {', '.join(LOCKS)}, not '{cfg.lock}'")
        if cfg.lock == "dynamodb" and not cfg.table:
            raise bad(
                "lock",
                "lock: dynamodb needs a table (backend.table, RECONCILER_BACKEND_TABLE or --backend-config table=NAME)",
            )
    if cfg.encryption not in ENCRYPTIONS:
        raise bad("encryption", f"backend encryption must be one of {', '.join(ENCRYPTIONS)}, not '{cfg.encryption}'")
    if cfg.kms_key_id and cfg.encryption != "aws:kms":
        raise bad("kms_key_id", "backend.kms_key_id needs encryption: aws:kms")
    if not str(cfg.history_limit).strip().isdigit() or int(cfg.history_limit) < 1:
        raise bad(
            "history_limit",
            f"backend history_limit must be a whole number of records of at least 1, not '{cfg.history_limit}'",
        )
    return cfg
