"""The same checks on every state backend (reconciler.store.backend.BACKENDS, and each kind
of remote lock): what reconciler.store.state relies on of Storage and Locker. The local
backend runs in a temp directory; the s3 backend in-process on moto's mock_aws."""

from __future__ import annotations

import os
import threading
import time

import pytest

from reconciler.errors import LockError
from reconciler.store import backend as be
from reconciler.store import state as st
from reconciler.store.base import Backend
from reconciler.store.config import read_config

BUCKET, TABLE = "contract-state", "contract-locks"


@pytest.fixture(params=["local", "s3", "s3+dynamodb"])
def backend(request, monkeypatch):
    """Each backend, made current for the test."""
    if request.param == "local":
        prev = be.use(be.make(read_config(".", [], environ={})))
        yield be.current()
        be.use(prev)
        return
    for k in list(os.environ):
        if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    from moto import mock_aws

    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        lock = "dynamodb" if request.param.endswith("dynamodb") else "s3"
        cfg = read_config(".", ["type=s3", f"bucket={BUCKET}", f"lock={lock}", f"table={TABLE}"], environ={})
        prev = be.use(be.make(cfg))
        yield be.current()
        be.use(prev)


def test_a_write_is_conditional_on_the_version_read(backend: Backend, tmp_path):
    st.load(tmp_path, "env1", "infra1").write()
    mine, theirs = st.load(tmp_path, "env1", "infra1"), st.load(tmp_path, "env1", "infra1")
    theirs.functions["theirs"] = {}
    theirs.write()  # behind mine's back, without the lock
    mine.functions["mine"] = {}
    with pytest.raises(st.StateConflictError, match=r"serial 1.*serial 2"):
        mine.write()
    now = st.load(tmp_path, "env1", "infra1")
    assert now.serial == 2 and "theirs" in now.functions and "mine" not in now.functions
    first, second = st.load(tmp_path, "env1", "new"), st.load(tmp_path, "env1", "new")
    first.write()
    with pytest.raises(st.StateConflictError):
        second.write()
    assert backend.targets(tmp_path) == [("env1", "infra1"), ("env1", "new")]


def test_a_lock_excludes_others_and_is_free_again_once_released(backend: Backend, tmp_path):
    path = backend.state_path(tmp_path, "env1", "infra1")

    def take(operation: str) -> None:
        with backend.lock(path, operation, timeout=0):
            pass

    with backend.lock(path, "apply") as held:
        with pytest.raises(LockError) as refused:
            take("plan")
        assert f"state is locked (id={held}" in str(refused.value)
    outer = backend.lock(path, "apply")
    outer.__enter__()
    threading.Timer(0.5, lambda: outer.__exit__(None, None, None)).start()
    t0 = time.monotonic()
    with backend.lock(path, "apply", timeout=10) as second:
        assert second and time.monotonic() - t0 >= 0.4, "a waiter gets the lock once it is released"


def test_the_fingerprint_key_is_made_once_and_kept(backend: Backend, tmp_path):
    path = backend.state_path(tmp_path, "env1", "infra1")
    assert backend.read_key(path) is None
    assert backend.create_key(path, b"first") == b"first"
    assert backend.create_key(path, b"second") == b"first", "a key that is there is kept"
    assert backend.read_key(path) == b"first"
    assert backend.targets(tmp_path) == [], "a key is not a state"
