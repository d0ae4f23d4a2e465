"""The s3 backend: `s3://<bucket>/<key_prefix>/<environment>/<infrastructure>.json`, the same
JSON as a local state. Writes are conditional on the version read (`If-Match: <ETag>`, or
`If-None-Match: *` for a new object), so a concurrent writer is detected, never
overwritten. Locked with an S3 lock object or a DynamoDB item (reconciler.store.locks).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from reconciler.errors import AwsError, ConfigError, LockError, ReconcilerError
from reconciler.store.base import (
    CONFLICT_HINT,
    KEY_SUFFIX,
    Backend,
    StateConflictError,
    conflict_message,
    keep_one_key,
    path_part,
    target_of,
)
from reconciler.store.config import NEEDS_BUCKET, BackendConfig
from reconciler.store.locks import (
    CONDITION_FAILED,
    LOCK_HINT,
    LOCK_POLL_SECONDS,
    REMOTE_LOCKS,
    describe_holder,
    error_code,
    lock_info,
    log,
)
from reconciler.util.secrets import scrub


class RemotePath(PurePosixPath):
    """`s3://bucket/key` as a path: str() gives the URL; .parent.name / .stem give the
    environment and infrastructure like a local state path."""

    @classmethod
    def of(cls, bucket: str, key: str) -> RemotePath:
        return cls("s3:", bucket, *key.split("/"))

    def __str__(self) -> str:
        parts = self.parts
        return "s3://" + "/".join(parts[1:]) if parts and parts[0] == "s3:" else super().__str__()

    def __fspath__(self) -> str:
        return str(self)


class S3Backend(Backend):
    """One object per infrastructure: s3://bucket/key_prefix/environment/infrastructure.json."""

    type = "s3"

    def __init__(self, cfg: BackendConfig, session: Any = None):
        if not cfg.bucket:
            raise ConfigError(NEEDS_BUCKET)
        self.cfg = cfg
        self.bucket: str = cfg.bucket
        self.prefix = (cfg.key_prefix or "").strip("/")
        self._session = session
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # -- AWS: the default credential chain, as deployments without a connector
    def client(self, service: str):
        with self._clients_lock:
            return self._client(service)

    def _client(self, service: str):
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            session = self._session or boto3.session.Session()
            region = self.cfg.region or session.region_name or os.environ.get("AWS_REGION")
            if not region:
                raise ConfigError(
                    "the s3 backend needs a region: backend.region in reconciler.yaml, RECONCILER_BACKEND_REGION "
                    "or AWS_REGION / AWS_DEFAULT_REGION"
                )
            self._clients[service] = session.client(
                service,
                region_name=region,
                config=Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60),
            )
        return self._clients[service]

    @property
    def s3(self):
        return self.client("s3")

    def _aws_error(self, what: str, exc: Exception) -> ReconcilerError:
        """What failed, with AWS's error text scrubbed of every known secret and environment
        value (it can echo a request), as reconciler.aws.client.call does."""
        code = error_code(exc)
        if code == "NoSuchBucket":
            return AwsError(
                f"{what}: the state bucket '{self.bucket}' does not exist", hint="create it, with versioning enabled"
            )
        if code == "ResourceNotFoundException" and self.cfg.lock == "dynamodb":
            return AwsError(
                f"{what}: the lock table '{self.cfg.table}' does not exist",
                hint="create it with the string hash key LockID",
            )
        return AwsError(scrub(f"{what}: {exc}", errors=True))

    def encryption(self) -> dict:
        """The server-side encryption every object reconciler puts is written with."""
        if self.cfg.encryption == "aws:kms":
            return {
                "ServerSideEncryption": "aws:kms",
                **({"SSEKMSKeyId": self.cfg.kms_key_id} if self.cfg.kms_key_id else {}),
            }
        return {"ServerSideEncryption": "AES256"}

    def describe(self, state_dir: Path | None = None) -> str:
        lock = f"DynamoDB table {self.cfg.table}" if self.cfg.lock == "dynamodb" else "S3 lock objects"
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''} (lock: {lock})"

    def key(self, environment: str, infrastructure: str) -> str:
        return "/".join(
            p
            for p in (
                self.prefix,
                path_part(environment, "environment"),
                f"{path_part(infrastructure, 'infrastructure')}.json",
            )
            if p
        )

    def state_path(self, state_dir: Path, environment: str, infrastructure: str) -> RemotePath:
        return RemotePath.of(self.bucket, self.key(environment, infrastructure))

    def _key_of(self, path) -> str:
        return self.key(*target_of(path))

    def unreadable_hint(self, path) -> str | None:
        return "restore an earlier version of the object (keep versioning enabled on the bucket)"

    def read_key(self, path) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key_of(path) + KEY_SUFFIX
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().strip() or None
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._aws_error(f"cannot read the state's fingerprint key s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot read the state's fingerprint key s3://{self.bucket}/{key}", exc) from None

    def create_key(self, path, key: bytes) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._key_of(path) + KEY_SUFFIX
        where = f"s3://{self.bucket}/{name}"

        def put_if_none() -> bool:
            """False: a key object is there, or another run's put of it is in flight (409)."""
            try:
                self.s3.put_object(Bucket=self.bucket, Key=name, Body=key + b"\n", IfNoneMatch="*", **self.encryption())
                return True
            except ClientError as exc:
                if error_code(exc) in CONDITION_FAILED:
                    return False
                raise self._aws_error(f"cannot store the state's fingerprint key {where}", exc) from None
            except BotoCoreError as exc:
                raise self._aws_error(f"cannot store the state's fingerprint key {where}", exc) from None

        return keep_one_key(key, put_if_none, lambda: self.read_key(path), where)

    def read(self, path) -> tuple[str | None, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key_of(path)
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=key)
            return r["Body"].read().decode("utf-8"), r["ETag"]
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise self._aws_error(f"cannot read the state s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot read the state s3://{self.bucket}/{key}", exc) from None

    def write(self, path, text: str, expected: Any, unbumped: tuple[str, int] | None, backup: str | None = None) -> Any:
        """PutObject conditional on the ETag read (If-Match), or on there being no object
        (If-None-Match: *): a concurrent writer makes S3 refuse the put. No backup object:
        the bucket's versioning keeps the earlier versions."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key_of(path)
        cond = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
        try:
            r = self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=text.encode("utf-8"),
                ContentType="application/json",
                **cond,
                **self.encryption(),
            )
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "ConditionalRequestConflict", "409"):
                now = None
                try:
                    now_text, _ = self.read(path)
                    if now_text:
                        d = json.loads(now_text)
                        now = (d.get("lineage"), d.get("serial"))
                except (ReconcilerError, ValueError):
                    pass
                raise StateConflictError(
                    conflict_message(unbumped, now), f"s3://{self.bucket}/{key}", hint=CONFLICT_HINT
                ) from None
            raise self._aws_error(f"cannot write the state s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._aws_error(f"cannot write the state s3://{self.bucket}/{key}", exc) from None
        return r["ETag"]

    def targets(self, state_dir: Path) -> list[tuple[str, str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self.prefix}/" if self.prefix else ""
        rx = re.compile(re.escape(prefix) + r"([^/]+)/([^/]+)\.json$")
        out = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    m = rx.fullmatch(obj["Key"])
                    if m:
                        out.append((m.group(1), m.group(2)))
        except (ClientError, BotoCoreError) as exc:
            raise self._aws_error(f"cannot list the states in s3://{self.bucket}/{prefix}", exc) from None
        return sorted(out)

    # -- locking
    @contextmanager
    def lock(self, path, operation: str, timeout: float = 0) -> Iterator[str]:
        key = self._key_of(path)
        where = f"s3://{self.bucket}/{key}"
        info = lock_info(operation, where)
        locker = REMOTE_LOCKS[self.cfg.lock](self, key)
        deadline = time.monotonic() + max(0.0, timeout or 0)
        announced = False
        while True:
            holder = locker.acquire(info)
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LockError(f"state is locked ({describe_holder(holder)})", where, hint=LOCK_HINT)
            if not announced:
                log(f"State {where} is locked ({describe_holder(holder)}); waiting up to {timeout:g} s for it.")
                announced = True
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        try:
            yield info["id"]
        finally:
            locker.release(info)

    def force_unlock(self, state_dir: Path, lock_id: str) -> RemotePath:
        key = REMOTE_LOCKS[self.cfg.lock].remove(self, lock_id)
        if key is None:
            raise LockError(f"no lock with ID {lock_id} in {self.describe()}")
        return RemotePath.of(self.bucket, key)
