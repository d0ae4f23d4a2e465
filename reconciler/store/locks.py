"""Lock records (who holds a lock, where, for what: never a credential) and the two remote
locks of the s3 backend: an S3 lock object `<key>.lock` created with `If-None-Match: *`
(as Terraform >= 1.10), and a DynamoDB item (hash key `LockID`, conditional put
`attribute_not_exists`). The local backend's lock is reconciler.store.files.file_lock.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from reconciler.errors import ReconcilerError
from reconciler.util.secrets import scrub


class S3Host(Protocol):
    """What a remote lock uses of the s3 backend (reconciler.store.s3.S3Backend)."""

    bucket: str
    prefix: str
    cfg: Any

    @property
    def s3(self) -> Any: ...

    def client(self, service: str) -> Any: ...

    def encryption(self) -> dict: ...

    def _aws_error(self, what: str, exc: Exception) -> ReconcilerError: ...


LOCK_POLL_SECONDS = 0.5


log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _where() -> str:
    """The CI job holding the lock when there is one, else host:working directory."""
    e = os.environ
    if e.get("GITHUB_RUN_ID") and e.get("GITHUB_REPOSITORY"):
        return f"{e.get('GITHUB_SERVER_URL', 'https://github.com')}/{e['GITHUB_REPOSITORY']}/actions/runs/{e['GITHUB_RUN_ID']}"
    for var in ("CI_JOB_URL", "BUILD_URL", "CIRCLE_BUILD_URL"):
        if e.get(var):
            return e[var]
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "?"
    return f"{socket.gethostname()}:{cwd}"


def lock_info(operation: str, path: str) -> dict:
    """What a lock records: never a credential."""
    return {
        "id": str(uuid.uuid4()),
        "who": _who(),
        "where": _where(),
        "pid": os.getpid(),
        "operation": operation,
        "created": _now(),
        "path": path,
    }


def describe_holder(holder: dict) -> str:
    return (
        ", ".join(f"{k}={holder[k]}" for k in ("id", "who", "where", "operation", "created") if holder.get(k))
        or "unknown holder"
    )


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


LOCK_HINT = "wait with --lock-timeout, or if its runner died: reconciler force-unlock ID"


# S3's answers to a conditional request whose condition failed: 412, or 409 while another
# conditional request on the same key is in flight
CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def error_code(exc: Exception) -> str:
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def _lock_holder(body: bytes, etag: str) -> dict:
    """What a lock object says about its holder. A damaged one (not a JSON object with an
    id) gets the ID `damaged-<ETag>`, which force-unlock accepts like any other."""
    try:
        holder = json.loads(body)
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not isinstance(holder.get("id"), str):
        return {"id": "damaged-" + str(etag).strip('"'), "who": "unknown (the lock object is not a lock record)"}
    return holder


class S3Lock:
    """`<key>.lock` created with If-None-Match: * (fails if it exists); removed with
    If-Match on its own ETag, so a lock taken over after a force-unlock is never removed."""

    def __init__(self, backend: S3Host, key: str):
        self.b = backend
        self.key = key + ".lock"
        self.etag = None

    def acquire(self, info: dict) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self.b.s3
        try:
            r = s3.put_object(
                Bucket=self.b.bucket,
                Key=self.key,
                Body=json.dumps(info).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
                **self.b.encryption(),
            )
            self.etag = r["ETag"]
            return None
        except ClientError as exc:
            if error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise self.b._aws_error(f"cannot lock the state s3://{self.b.bucket}/{self.key}", exc) from None
        except BotoCoreError as exc:
            raise self.b._aws_error(f"cannot lock the state s3://{self.b.bucket}/{self.key}", exc) from None
        try:
            r = s3.get_object(Bucket=self.b.bucket, Key=self.key)
        except (ClientError, BotoCoreError):
            return {"id": "?"}  # released meanwhile: poll again
        return _lock_holder(r["Body"].read(), r["ETag"])

    def release(self, info: dict) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.b.s3.delete_object(Bucket=self.b.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                log(
                    f"warning: the state lock {info['id']} on s3://{self.b.bucket}/{self.key} was removed by someone else "
                    "(force-unlock) while this run held it"
                )
                return
            log(
                f"warning: could not release the state lock s3://{self.b.bucket}/{self.key}: {scrub(str(exc), errors=True)} "
                f"(remove it with: reconciler force-unlock {info['id']})"
            )
        except BotoCoreError as exc:
            log(
                f"warning: could not release the state lock s3://{self.b.bucket}/{self.key}: {scrub(str(exc), errors=True)} "
                f"(remove it with: reconciler force-unlock {info['id']})"
            )

    @staticmethod
    def remove(b: S3Host, lock_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{b.prefix}/" if b.prefix else ""
        try:
            for page in b.s3.get_paginator("list_objects_v2").paginate(Bucket=b.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith(".json.lock"):
                        continue
                    try:
                        r = b.s3.get_object(Bucket=b.bucket, Key=obj["Key"])
                    except ClientError:
                        continue
                    holder = _lock_holder(r["Body"].read(), r["ETag"])
                    if holder.get("id") != lock_id:
                        continue
                    try:  # only the lock object read: not one that replaced it meanwhile
                        b.s3.delete_object(Bucket=b.bucket, Key=obj["Key"], IfMatch=r["ETag"])
                    except ClientError as exc:
                        if error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey"):
                            return None
                        raise
                    return obj["Key"][: -len(".lock")]
        except (ClientError, BotoCoreError) as exc:
            raise b._aws_error("cannot remove the lock", exc) from None
        return None


class DynamoLock:
    """An item LockID = "<bucket>/<key>" (Terraform's convention) put with
    attribute_not_exists(LockID); deleted only if its ID is ours."""

    def __init__(self, backend: S3Host, key: str):
        self.b = backend
        self.lock_key = f"{backend.bucket}/{key}"

    def acquire(self, info: dict) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        ddb = self.b.client("dynamodb")
        item = {
            "LockID": {"S": self.lock_key},
            "ID": {"S": info["id"]},
            "Operation": {"S": info["operation"]},
            "Who": {"S": info["who"]},
            "Created": {"S": info["created"]},
            "Info": {"S": json.dumps(info)},
        }
        try:
            ddb.put_item(
                TableName=self.b.cfg.table,
                Item=item,
                ConditionExpression="attribute_not_exists(LockID)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise self.b._aws_error(f"cannot lock the state in DynamoDB table {self.b.cfg.table}", exc) from None
            old = exc.response.get("Item") or {}
        except BotoCoreError as exc:
            raise self.b._aws_error(f"cannot lock the state in DynamoDB table {self.b.cfg.table}", exc) from None
        try:
            return (
                json.loads(old.get("Info", {}).get("S", ""))
                if old.get("Info")
                else {"id": old.get("ID", {}).get("S", "?")}
            )
        except ValueError:
            return {"id": old.get("ID", {}).get("S", "?")}

    def release(self, info: dict) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.b.client("dynamodb").delete_item(
                TableName=self.b.cfg.table,
                Key={"LockID": {"S": self.lock_key}},
                ConditionExpression="ID = :id",
                ExpressionAttributeValues={":id": {"S": info["id"]}},
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                log(
                    f"warning: the state lock {info['id']} ({self.lock_key}) was removed by someone else (force-unlock) "
                    "while this run held it"
                )
                return
            log(
                f"warning: could not release the state lock {self.lock_key}: {scrub(str(exc), errors=True)} (remove it with: reconciler force-unlock {info['id']})"
            )
        except BotoCoreError as exc:
            log(
                f"warning: could not release the state lock {self.lock_key}: {scrub(str(exc), errors=True)} (remove it with: reconciler force-unlock {info['id']})"
            )

    @staticmethod
    def remove(b: S3Host, lock_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        ddb = b.client("dynamodb")
        mine = f"{b.bucket}/{b.prefix + '/' if b.prefix else ''}"
        try:
            for page in ddb.get_paginator("scan").paginate(
                TableName=b.cfg.table, FilterExpression="ID = :id", ExpressionAttributeValues={":id": {"S": lock_id}}
            ):
                for item in page.get("Items", []):
                    lock_key = item["LockID"]["S"]
                    if not lock_key.startswith(mine):
                        continue
                    try:
                        ddb.delete_item(
                            TableName=b.cfg.table,
                            Key={"LockID": {"S": lock_key}},
                            ConditionExpression="ID = :id",
                            ExpressionAttributeValues={":id": {"S": lock_id}},
                        )
                    except ClientError as exc:
                        if error_code(exc) == "ConditionalCheckFailedException":
                            return None
                        raise
                    return lock_key[len(b.bucket) + 1 :]
        except (ClientError, BotoCoreError) as exc:
            raise b._aws_error("cannot remove the lock", exc) from None
        return None


class RemoteLock(Protocol):
    """One kind of remote lock: taken for one operation (acquire: None, or who holds it),
    released, or removed by ID (force-unlock: the state's key, None if there is none)."""

    def __init__(self, backend: S3Host, key: str) -> None: ...

    def acquire(self, info: dict) -> dict | None: ...

    def release(self, info: dict) -> None: ...

    @staticmethod
    def remove(b: S3Host, lock_id: str) -> str | None: ...


# backend.lock in the configuration → its kind of lock (config.LOCKS names the same)
REMOTE_LOCKS: dict[str, type[RemoteLock]] = {"s3": S3Lock, "dynamodb": DynamoLock}
