"""Unit tests of reconciler.state and reconciler.backend: the local backend (atomic write,
backup, serial/lineage, stale-read detection, locks), the backend configuration, and the
S3 backend (conditional writes, S3 and DynamoDB locks) in-process with moto's mock_aws."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from reconciler.store import backend as be
from reconciler.store.base import target_of
from reconciler.store.config import HISTORY_LIMIT, read_config
from reconciler.store.local import LocalBackend
from reconciler.store.s3 import RemotePath
from reconciler.store import state as st
from reconciler.errors import ConfigError, LockError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(autouse=True)
def _local_default():
    """Every test starts (and ends) with the default backend."""
    prev = be.use(None)
    yield
    be.use(prev)


# ---------------------------------------------------------------- local backend


def test_local_write_is_atomic_keeps_a_backup_and_bumps_the_serial(tmp_path):
    s = st.load(tmp_path, "dev", "infra1")
    assert not s.exists and s.ref == {"lineage": None, "serial": None}
    assert s.path == tmp_path / "dev" / "infra1.json"
    s.functions["f"] = {"service": "svc", "version": "1"}
    s.write()
    lineage = s.lineage
    assert s.serial == 1 and s.exists
    assert not (tmp_path / "dev" / "infra1.json.backup").exists(), "no backup of a file that did not exist"

    s.functions["f"]["version"] = "2"
    s.write()
    assert s.serial == 2 and s.lineage == lineage
    backup = json.loads((tmp_path / "dev" / "infra1.json.backup").read_text())
    assert backup["serial"] == 1 and backup["functions"]["f"]["version"] == "1"
    assert [p.name for p in (tmp_path / "dev").iterdir() if p.name.endswith(".tmp")] == [], "no temp file left"

    again = st.load(tmp_path, "dev", "infra1")
    assert again.exists and again.serial == 2 and again.lineage == lineage
    assert again.functions["f"]["version"] == "2"
    assert again.ref == {"lineage": lineage, "serial": 2}
    doc = json.loads(again.path.read_text())
    assert list(doc)[:3] == ["format_version", "lineage", "serial"]
    assert [(s_.environment, s_.infrastructure) for s_ in st.all_states(tmp_path)] == [("dev", "infra1")]


def test_local_stale_read_is_detected_not_overwritten(tmp_path):
    st.load(tmp_path, "dev", "i").write()
    a = st.load(tmp_path, "dev", "i")
    b = st.load(tmp_path, "dev", "i")
    a.functions["a"] = {"version": "1"}
    a.write()
    b.functions["b"] = {"version": "1"}
    with pytest.raises(st.StateConflictError) as ei:
        b.write()
    assert (
        "changed since this run read it" in str(ei.value)
        and "serial 1" in str(ei.value)
        and "serial 2" in str(ei.value)
    )
    assert b.serial == 1, "a refused write leaves the serial as it was"
    on_disk = json.loads((tmp_path / "dev" / "i.json").read_text())
    assert on_disk["serial"] == 2 and "a" in on_disk["functions"] and "b" not in on_disk["functions"]
    # the writer itself keeps writing: its own writes move its read version along
    a.functions["a"]["version"] = "2"
    a.write()
    assert st.load(tmp_path, "dev", "i").serial == 3


def test_local_two_creators_of_a_new_state(tmp_path):
    a = st.load(tmp_path, "dev", "new")
    b = st.load(tmp_path, "dev", "new")
    a.write()
    with pytest.raises(st.StateConflictError, match="read no state"):
        b.write()


def test_local_guard_reads_a_hand_formatted_file(tmp_path):
    p = tmp_path / "dev" / "i.json"
    p.parent.mkdir()
    p.write_text(json.dumps({"serial": 4, "format_version": 1, "lineage": "L", "functions": {}}))
    s = st.load(tmp_path, "dev", "i")
    assert (s.lineage, s.serial) == ("L", 4)
    s.write()
    assert json.loads(p.read_text())["serial"] == 5


def test_unreadable_local_state_points_at_the_backup(tmp_path):
    s = st.load(tmp_path, "dev", "i")
    s.write()
    s.write()
    (tmp_path / "dev" / "i.json").write_text("{not json")
    with pytest.raises(st.ReconcilerError, match="restore it from i.json.backup"):
        st.load(tmp_path, "dev", "i")


def test_local_lock_reports_its_holder_and_force_unlock(tmp_path):
    path = st.state_path(tmp_path, "dev", "i")
    with st.locked(path, "apply") as lock_id:
        info = json.loads(Path(str(path) + ".lock.info").read_text())
        assert info["id"] == lock_id and info["operation"] == "apply" and info["where"]
        with pytest.raises(LockError) as ei:
            with st.locked(path, "apply", timeout=0):
                pass
        msg = str(ei.value)
        assert lock_id in msg and "operation=apply" in msg and "who=" in msg and "force-unlock" in msg
        with pytest.raises(LockError, match="held by a running process"):
            st.force_unlock(tmp_path, lock_id)
    assert not Path(str(path) + ".lock.info").exists()
    # a record left by a dead runner
    Path(str(path) + ".lock.info").write_text(json.dumps({"id": "dead-1", "who": "x@y", "operation": "apply"}))
    assert st.force_unlock(tmp_path, "dead-1") == path
    with pytest.raises(LockError, match="no lock with ID nope"):
        st.force_unlock(tmp_path, "nope")


# ---------------------------------------------------------------- configuration


def test_every_configurable_backend_type_and_lock_kind_is_registered():
    from reconciler.store import config, locks

    assert set(be.BACKENDS) == set(config.TYPES)
    assert set(locks.REMOTE_LOCKS) == set(config.LOCKS)


def test_config_defaults_to_local(tmp_path):
    cfg = read_config(tmp_path, environ={})
    assert cfg.type == "local"
    assert isinstance(be.configure(tmp_path), LocalBackend)


def test_config_file_env_and_flags(tmp_path):
    (tmp_path / "reconciler.yaml").write_text(
        "backend:\n  type: s3\n  bucket: team-state\n  key_prefix: lambda/prod\n  region: eu-west-1\n  lock: dynamodb\n  table: locks\n"
    )
    cfg = read_config(tmp_path, environ={})
    assert (cfg.type, cfg.bucket, cfg.key_prefix, cfg.region, cfg.lock, cfg.table) == (
        "s3",
        "team-state",
        "lambda/prod",
        "eu-west-1",
        "dynamodb",
        "locks",
    )
    cfg = read_config(tmp_path, environ={"RECONCILER_BACKEND_BUCKET": "from-env", "RECONCILER_BACKEND_LOCK": "s3"})
    assert (cfg.bucket, cfg.lock) == ("from-env", "s3")
    cfg = read_config(tmp_path, ["bucket=from-flag", "key-prefix=x"], environ={"RECONCILER_BACKEND_BUCKET": "from-env"})
    assert (cfg.bucket, cfg.key_prefix) == ("from-flag", "x")
    cfg = read_config(tmp_path, ["type=local"], environ={})
    assert cfg.type == "local"
    b = be.make(read_config(tmp_path, environ={}))
    assert str(b.state_path(tmp_path, "prod", "use1")) == "s3://team-state/lambda/prod/prod/use1.json"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (
            "backend:\n  type: s3\n  buckett: x\n",
            [],
            "reconciler.yaml:3: unknown backend key 'buckett' (did you mean 'bucket'?)",
        ),
        ("backend:\n  type: gcs\n", [], "reconciler.yaml:2: backend type must be one of local, s3, not 'gcs'"),
        ("backend:\n  type: s3\n", [], "the s3 backend needs a bucket"),
        ("backend:\n  type: s3\n  bucket: b\n  lock: dynamodb\n", [], "lock: dynamodb needs a table"),
        ("backends:\n  type: s3\n", [], "unknown key 'backends'"),
        ("", ["nokey"], "--backend-config 'nokey' is not KEY=VALUE"),
        ("", ["colour=red"], "--backend-config: unknown key 'colour'"),
    ],
)
def test_config_errors(tmp_path, text, overrides, message):
    (tmp_path / "reconciler.yaml").write_text(text)
    with pytest.raises(ConfigError) as ei:
        read_config(tmp_path, overrides, environ={})
    assert message in str(ei.value)


def test_reconciler_yaml_is_not_a_harness_entity(tmp_path):
    import shutil

    from reconciler.workspace.load import load_workspace

    ws = tmp_path / "ws"
    shutil.copytree(SAMPLES / "two-environments", ws)
    before = load_workspace(ws)
    (ws / "reconciler.yaml").write_text("backend:\n  type: s3\n  bucket: team-state\n  region: us-east-1\n")
    after = load_workspace(ws)
    assert "reconciler.yaml" not in " ".join(map(str, after.files))
    assert (len(after.services), len(after.environments), len(after.infrastructures)) == (
        len(before.services),
        len(before.environments),
        len(before.infrastructures),
    )


# ---------------------------------------------------------------- S3 backend (mock_aws)

BUCKET = "team-state"
TABLE = "reconciler-locks"


@pytest.fixture
def mocked(monkeypatch):
    # MOTO.md trap 2: mock_aws only intercepts *.amazonaws.com
    for k in list(os.environ):
        if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(k, raising=False)
    for k, v in {
        "AWS_ACCESS_KEY_ID": "AKIDUNITTEST",
        "AWS_SECRET_ACCESS_KEY": "unit-secret-never-stored",
        "AWS_SESSION_TOKEN": "unit-token-never-stored",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    from moto import mock_aws

    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield s3


def _s3(lock="s3", prefix="reconciler"):
    cfg = read_config(
        ".", [f"type=s3", f"bucket={BUCKET}", f"key_prefix={prefix}", f"lock={lock}", f"table={TABLE}"], environ={}
    )
    return be.use(be.make(cfg)) or be.current()


def test_s3_round_trip_versions_and_no_credentials(mocked, tmp_path):
    b = _s3()
    s = st.load(tmp_path, "staging", "use1")
    assert not s.exists and str(s.path) == f"s3://{BUCKET}/reconciler/staging/use1.json"
    s.functions["f"] = {"service": "svc", "version": "1"}
    s.write()
    s.functions["f"]["version"] = "2"
    s.write()
    body = mocked.get_object(Bucket=BUCKET, Key="reconciler/staging/use1.json")["Body"].read().decode()
    doc = json.loads(body)
    assert doc["serial"] == 2 and doc["functions"]["f"]["version"] == "2" and doc["environment"] == "staging"
    assert len(mocked.list_object_versions(Bucket=BUCKET, Prefix="reconciler/staging/use1.json")["Versions"]) == 2
    for secret in ("AKIDUNITTEST", "unit-secret-never-stored", "unit-token-never-stored"):
        assert secret not in body
    again = st.load(tmp_path, "staging", "use1")
    assert (again.lineage, again.serial) == (s.lineage, 2)
    assert [(x.environment, x.infrastructure) for x in st.all_states(tmp_path)] == [("staging", "use1")]
    assert b.targets(tmp_path) == [("staging", "use1")]


def test_s3_concurrent_writer_is_detected(mocked, tmp_path):
    _s3()
    st.load(tmp_path, "e", "i").write()
    mine = st.load(tmp_path, "e", "i")
    theirs = st.load(tmp_path, "e", "i")
    theirs.functions["theirs"] = {}
    theirs.write()  # behind mine's back, no lock
    mine.functions["mine"] = {}
    with pytest.raises(st.StateConflictError) as ei:
        mine.write()
    assert (
        "serial 1" in str(ei.value)
        and "serial 2" in str(ei.value)
        and "s3://team-state/reconciler/e/i.json" in str(ei.value)
    )
    doc = json.loads(mocked.get_object(Bucket=BUCKET, Key="reconciler/e/i.json")["Body"].read())
    assert "theirs" in doc["functions"] and "mine" not in doc["functions"]
    # and two creators of a new object: If-None-Match
    a, c = st.load(tmp_path, "e", "new"), st.load(tmp_path, "e", "new")
    a.write()
    with pytest.raises(st.StateConflictError):
        c.write()


@pytest.mark.parametrize("lock", ["s3", "dynamodb"])
def test_s3_backend_locks(mocked, tmp_path, lock):
    import boto3

    _s3(lock)
    path = st.state_path(tmp_path, "e", "i")
    with st.locked(path, "apply") as lock_id:
        if lock == "s3":
            info = json.loads(mocked.get_object(Bucket=BUCKET, Key="reconciler/e/i.json.lock")["Body"].read())
        else:
            item = boto3.client("dynamodb", region_name="us-east-1").get_item(
                TableName=TABLE, Key={"LockID": {"S": f"{BUCKET}/reconciler/e/i.json"}}
            )["Item"]
            info = json.loads(item["Info"]["S"])
            assert item["ID"]["S"] == lock_id
        assert (
            info["id"] == lock_id and info["operation"] == "apply" and info["who"] and info["where"] and info["created"]
        )
        assert not any(k.lower().startswith(("aws", "secret", "token")) for k in info)
        t0 = time.monotonic()
        with pytest.raises(LockError) as ei:
            with st.locked(path, "plan", timeout=1):
                pass
        assert time.monotonic() - t0 >= 0.9, "--lock-timeout waits"
        msg = str(ei.value)
        assert msg.startswith("s3://team-state/reconciler/e/i.json: state is locked (id=" + lock_id)
        assert "operation=apply" in msg and "force-unlock" in msg and "\n" not in msg
    # released: free again, and a waiter gets it once the holder lets go
    ctx = st.locked(path, "apply")
    ctx.__enter__()
    threading.Timer(0.7, lambda: ctx.__exit__(None, None, None)).start()
    with st.locked(path, "apply", timeout=10) as second:
        assert second


@pytest.mark.parametrize("lock", ["s3", "dynamodb"])
def test_s3_force_unlock_removes_a_dead_runners_lock(mocked, tmp_path, lock):
    _s3(lock)
    path = st.state_path(tmp_path, "e", "i")
    ctx = st.locked(path, "apply")
    lock_id = ctx.__enter__()  # a runner that dies holding it: never exits
    with pytest.raises(LockError, match="no lock with ID other"):
        st.force_unlock(tmp_path, "other")
    assert str(st.force_unlock(tmp_path, lock_id)) == "s3://team-state/reconciler/e/i.json"
    with st.locked(path, "apply"):
        pass
    with pytest.raises(LockError):
        st.force_unlock(tmp_path, lock_id)


def test_s3_release_leaves_a_lock_taken_over_after_force_unlock(mocked, tmp_path, capsys):
    _s3("s3")
    path = st.state_path(tmp_path, "e", "i")
    first = st.locked(path, "apply")
    first_id = first.__enter__()
    st.force_unlock(tmp_path, first_id)
    with st.locked(path, "apply") as second_id:
        first.__exit__(None, None, None)  # the old holder wakes up and releases
        holder = json.loads(mocked.get_object(Bucket=BUCKET, Key="reconciler/e/i.json.lock")["Body"].read())
        assert holder["id"] == second_id, "the new holder's lock is still there"
    assert "removed by someone else" in capsys.readouterr().err


def test_remote_path_maps_back_to_its_target():
    p = RemotePath.of("bkt", "pre/fix/env1/infra_1.json")
    assert str(p) == "s3://bkt/pre/fix/env1/infra_1.json" and os.fspath(p) == str(p)
    assert target_of(p) == ("env1", "infra_1")
    assert target_of(Path(str(p))) == ("env1", "infra_1"), "a saved plan's state_file string works too"
    assert target_of("/x/state/env1/infra_1.json") == ("env1", "infra_1")


def test_s3_backend_region_from_the_environment_or_a_clear_error(monkeypatch, tmp_path):
    for k in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    b = be.make(read_config(".", ["type=s3", "bucket=b-state"], environ={}))
    with pytest.raises(ConfigError, match="the s3 backend needs a region"):
        b.client("s3")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert b.client("s3").meta.region_name == "eu-west-1"


def test_interrupted_deployment_follows_history_changes():
    """The per-history index sees appends, records replaced in place and status changes."""
    from reconciler.engine.diff import interrupted_deployment

    history = [
        {"id": "1", "function": "a", "operation": "apply", "status": "succeeded"},
        {"id": "2", "function": "b", "operation": "apply", "status": "in_progress"},
        {"id": "3", "function": "b", "operation": "delete", "status": "succeeded"},
    ]
    assert interrupted_deployment(history, "a") is None
    assert interrupted_deployment(history, "b") is history[1]
    assert interrupted_deployment(history, "c") is None
    history[1] = {**history[1], "status": "succeeded"}  # the outcome recorded in place
    assert interrupted_deployment(history, "b") is None
    history.append({"id": "4", "function": "a", "operation": "rollback", "status": "rolling_back"})
    assert interrupted_deployment(history, "a") is history[3]
    history[3]["status"] = "failed"
    assert interrupted_deployment(history, "a") is None
    assert interrupted_deployment([], "a") is None and interrupted_deployment(None, "a") is None


# ---------------------------------------------------------------- private files, SSE, history limit


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_local_state_file_is_created_0600_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0o022)
    try:
        s = st.load(tmp_path, "dev", "i")
        with st.locked(s.path, "apply"):
            lock = tmp_path / "dev" / "i.json.lock"
            assert _mode(lock) == 0o600 and _mode(lock.with_name("i.json.lock.info")) == 0o600
            s.functions["f"] = {"service": "svc", "version": "1"}
            s.write()
            s.functions["f"]["version"] = "2"
            s.append(["f"])
            journal = tmp_path / "dev" / "i.json.journal"
            assert _mode(journal) == 0o600
            s.write()
        for name in ("i.json", "i.json.backup"):
            assert _mode(tmp_path / "dev" / name) == 0o600, name
        assert _mode(tmp_path / "dev") == 0o700
    finally:
        os.umask(old)


def test_a_state_written_0644_by_an_earlier_version_is_narrowed(tmp_path):
    s = st.load(tmp_path, "dev", "i")
    s.write()
    os.chmod(s.path, 0o644)
    s.write()
    assert _mode(s.path) == 0o600 and _mode(s.path.with_name("i.json.backup")) == 0o600


def test_history_keeps_the_newest_records_of_each_function(tmp_path):
    s = st.load(tmp_path, "dev", "i")
    s.backend = be.current()
    be.current().history_limit = 3
    try:
        for n in range(5):
            for fn in ("a", "b"):
                s.history.append({"id": f"{fn}{n}", "function": fn, "status": "succeeded"})
        s.history.insert(0, {"id": "a-killed", "function": "a", "status": "in_progress"})
        s.write()
    finally:
        be.current().history_limit = HISTORY_LIMIT
    ids = [h["id"] for h in json.loads(s.path.read_text())["history"]]
    assert ids == ["a-killed", "a2", "b2", "a3", "b3", "a4", "b4"]


def test_history_limit_is_configured_and_checked(tmp_path):
    (tmp_path / "reconciler.yaml").write_text("backend:\n  history_limit: 5\n")
    assert be.make(read_config(tmp_path, environ={})).history_limit == 5
    assert LocalBackend().history_limit == 20
    (tmp_path / "reconciler.yaml").write_text("backend:\n  history_limit: none\n")
    with pytest.raises(ConfigError, match=r"reconciler.yaml:2: backend history_limit must be a whole number"):
        read_config(tmp_path, environ={})
    with pytest.raises(ConfigError, match="encryption must be one of AES256, aws:kms"):
        read_config(tmp_path, ["encryption=rot13", "history_limit=3"], environ={})


@pytest.mark.parametrize(
    "extra,want",
    [((), ("AES256", None)), (("encryption=aws:kms", "kms_key_id=alias/state"), ("aws:kms", "alias/state"))],
)
def test_s3_state_and_lock_objects_are_encrypted_at_rest(mocked, tmp_path, extra, want):
    cfg = read_config(".", ["type=s3", f"bucket={BUCKET}", "lock=s3", *extra], environ={})
    be.use(be.make(cfg))
    if want[1]:
        import boto3

        kms = boto3.client("kms", region_name="us-east-1")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/state", TargetKeyId=key)
    s = st.load(tmp_path, "staging", "use1")
    with st.locked(s.path, "apply"):
        lock_head = mocked.head_object(Bucket=BUCKET, Key="reconciler/staging/use1.json.lock")
        s.write()
    head = mocked.head_object(Bucket=BUCKET, Key="reconciler/staging/use1.json")
    for h in (head, lock_head):
        assert h["ServerSideEncryption"] == want[0]
        if want[1]:
            assert h.get("SSEKMSKeyId"), h
