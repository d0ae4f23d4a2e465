"""End-to-end failure tests: the real CLI in a subprocess, talking to moto_server
through the FaultProxy, with faults injected on chosen Lambda operations.

What Lambda holds afterwards is read with boto3 straight from moto (not through
the proxy); what reconciler recorded is read from the state file (SPEC §5, §6).

Injected failures that must not be retried use status 400 with
``InvalidParameterValueException`` (botocore retries 500s and throttling, with
backoff; 8 attempts of a persistent 500 would take far too long).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import io
import json
import os
import socket
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from harness.localstack import on_both_emulators
from filelock import FileLock


def make_zip(files: dict) -> bytes:
    """A deterministic zip (fixed timestamps), like conftest.make_zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), files[name])
    return buf.getvalue()


def sha256_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


pytestmark = pytest.mark.e2e

BUCKET = "reconciler-artifacts"
KEY1 = "greeter/greeter-1.0.0.zip"
KEY2 = "greeter/greeter-2.0.0.zip"
FN = "greeter-staging"
ZIP1 = make_zip({"handler.py": "def handler(event, context):\n    return 'v1'\n"})
ZIP2 = make_zip({"handler.py": "def handler(event, context):\n    return 'v2'\n"})
SHA1 = sha256_b64(ZIP1)
SHA2 = sha256_b64(ZIP2)

# a failure botocore does not retry
NO_RETRY = {"status": 400, "error_type": "InvalidParameterValueException"}


class Deploy:
    """The two-environments sample, staging target only, state in tmp_path,
    every CLI call through the fault proxy."""

    def __init__(self, aws, workspace, tmp_path, run_cli, fault_proxy):
        self.aws, self.run_cli, self.proxy = aws, run_cli, fault_proxy
        self.ws = workspace("two-environments")
        self.state_dir = tmp_path / "state"
        self.state_path = self.state_dir / "staging" / "staging_use1.json"
        self.lam = aws.client("lambda")  # straight to moto
        aws.create_role("greeter-lambda-role")
        aws.put_zip(BUCKET, KEY1, ZIP1)
        aws.put_zip(BUCKET, KEY2, ZIP2)

    def apply(self, *extra):
        return self.run_cli(
            "apply",
            "--auto-approve",
            "-w",
            self.ws,
            "--state-dir",
            self.state_dir,
            "-e",
            "staging",
            *extra,
            cwd=self.ws,
            env_extra={"AWS_ENDPOINT_URL": self.proxy.endpoint},
        )

    def to_v2(self):
        """The next release: a new artifact (another S3 key) and more memory."""
        svc = self.ws / ".harness" / "service.yaml"
        svc.write_text(svc.read_text().replace(KEY1, KEY2))
        return ("--var", "memorySize=256")

    def with_canary(self, service_text: str, alias: str = '{"name": "canary"}') -> None:
        """The service with a second alias file, `canary`, after `live`."""
        (self.ws / ".harness" / "service.yaml").write_text(
            service_text.replace(
                "- /lambda-alias.json\n", "- /lambda-alias.json\n                    - /lambda-canary.json\n"
            )
        )
        (self.ws / "lambda-canary.json").write_text(alias)

    def fail_the_second(self, operation: str) -> threading.Event:
        """Let the first `operation` through (the returned event is set then) and fail the next."""
        first = threading.Event()
        self.proxy.after(operation, 1, first.set)
        self.proxy.add_rule(lambda e: e["operation"] == operation and first.is_set(), "fail", times=1, **NO_RETRY)
        return first

    def deploy_v1(self):
        r = self.apply()
        assert r.returncode == 0, r.stderr
        assert self.code() == SHA1
        assert self.aws.aliases(FN) == {"live": "1"}
        self.proxy.clear()
        return r

    # -- what Lambda holds --------------------------------------------
    def config(self):
        return self.aws.lambda_config(FN)

    def code(self):
        return self.config()["CodeSha256"]

    def functions(self):
        return [f["FunctionName"] for f in self.lam.list_functions()["Functions"]]

    # -- what state says ----------------------------------------------
    def state(self):
        return check_state(self.state_path)

    def last(self):
        return self.state()["history"][-1]

    def assert_back_to_v1(self, versions=("1",)):
        conf = self.config()
        assert conf["CodeSha256"] == SHA1
        assert conf["MemorySize"] == 128
        assert conf["Timeout"] == 10
        assert conf["Environment"]["Variables"]["LOG_LEVEL"] == "DEBUG"
        assert self.aws.aliases(FN) == {"live": "1"}
        assert self.aws.versions(FN) == list(versions)
        # and version 1 itself is untouched
        v1 = self.lam.get_function_configuration(FunctionName=FN, Qualifier="1")
        assert (v1["CodeSha256"], v1["MemorySize"]) == (SHA1, 128)

    def assert_v2_released(self):
        """v2 (new code, MemorySize 256) is released as version 2 and recorded so."""
        conf = self.config()
        assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA2, 256)
        assert self.aws.versions(FN) == ["1", "2"]
        assert self.aws.aliases(FN) == {"live": "2"}
        v2 = self.lam.get_function_configuration(FunctionName=FN, Qualifier="2")
        assert (v2["CodeSha256"], v2["MemorySize"]) == (SHA2, 256)
        state = self.state()
        assert state["history"][-1]["status"] == "succeeded"
        rec = state["functions"][FN]
        assert (rec["version"], rec["code_sha256"]) == ("2", SHA2)
        assert rec["configuration"]["MemorySize"] == 256
        assert rec["aliases"]["live"]["version"] == "2"


def check_state(path: Path) -> dict:
    """State file integrity (SPEC §6): parses, has lineage and serial, and the
    previous copy is kept as .backup (same lineage, an earlier serial: the steps in
    between were journaled, then compacted when the apply ended)."""
    data = json.loads(path.read_text())
    assert data["format_version"] == 1
    assert uuid.UUID(data["lineage"])
    assert isinstance(data["serial"], int) and data["serial"] >= 1
    backup = path.with_name(path.name + ".backup")
    if data["serial"] >= 2:
        assert backup.exists()
        prev = json.loads(backup.read_text())
        assert prev["lineage"] == data["lineage"]
        assert prev["serial"] < data["serial"]
    assert not list(path.parent.glob(".*.tmp")), "temp files left behind"
    assert not path.with_name(path.name + ".journal").exists(), "journal not compacted"
    return data


@pytest.fixture
def d(aws, workspace, tmp_path, run_cli, fault_proxy):
    return Deploy(aws, workspace, tmp_path, run_cli, fault_proxy)


# ---------------------------------------------------------------- 1, 2: rollback of an update


@pytest.mark.parametrize("op", ["UpdateFunctionConfiguration", "PublishVersion"])
@on_both_emulators
def test_failed_update_rolls_back(d, op):
    d.deploy_v1()
    d.proxy.add_rule(op, "fail", times=None, **NO_RETRY)
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert "rolled back" in r.stderr
    assert "injected fault" in r.stderr
    assert "Traceback" not in r.stderr
    d.assert_back_to_v1()
    assert d.proxy.count("UpdateAlias") == 0

    state = d.state()
    last = state["history"][-1]
    assert last["operation"] == "apply"
    assert last["status"] == "rolled_back"
    assert "injected fault" in last["error"]
    assert last["previous"]["version"] == "1"
    assert last["previous"]["code_sha256"] == SHA1
    rec = state["functions"][FN]
    assert rec["version"] == "1"
    assert rec["code_sha256"] == SHA1
    assert rec["configuration"]["MemorySize"] == 128
    assert rec["aliases"]["live"]["version"] == "1"

    # the next apply, without the fault, deploys v2 cleanly
    d.proxy.clear_rules()
    r = d.apply("--var", "memorySize=256")
    assert r.returncode == 0, r.stderr
    conf = d.config()
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA2, 256)
    assert d.aws.aliases(FN)["live"] == d.state()["functions"][FN]["version"]
    assert d.last()["status"] == "succeeded"


def test_failed_alias_update_rolls_back(d):
    d.deploy_v1()
    d.proxy.add_rule("UpdateAlias", "fail", times=None, **NO_RETRY)
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert "rolled back" in r.stderr
    # version 2 was published before the alias failed: it may remain
    d.assert_back_to_v1(versions=("1", "2"))
    last = d.last()
    assert last["status"] == "rolled_back" and "injected fault" in last["error"]
    assert d.state()["functions"][FN]["version"] == "1"


def test_a_change_lambda_refuses_as_moved_is_stale_and_nothing_is_rolled_back(d):
    """Lambda refuses the first change (PreconditionFailed: the function's RevisionId moved
    since the plan read it, e.g. a hand change in between): nothing was changed, so nothing
    is "restored" over that change; the apply says it is stale and records the failure."""
    d.deploy_v1()
    d.proxy.add_rule("UpdateFunctionCode", "fail", times=1, status=412, error_type="PreconditionFailedException")
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert f"function {FN} changed in Lambda since this plan was made; nothing was changed" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "rolled back" not in r.stderr
    assert [e["operation"] for e in d.proxy.mutating_requests()] == ["UpdateFunctionCode"]
    assert d.code() == SHA1 and d.config()["MemorySize"] == 128
    assert d.aws.aliases(FN) == {"live": "1"} and d.aws.versions(FN) == ["1"]
    last = d.last()
    assert last["status"] == "failed" and "PreconditionFailedException" in last["error"]
    assert d.state()["functions"][FN]["version"] == "1"


def test_failure_after_alias_moved_moves_it_back(d):
    """Two aliases: `live` already points at the new version when moving `canary`
    fails: rollback moves `live` back to version 1 (and leaves `canary` there)."""
    d.with_canary((d.ws / ".harness" / "service.yaml").read_text(), '{"name": "canary", "description": "canary"}')
    r = d.apply()
    assert r.returncode == 0, r.stderr
    assert d.aws.aliases(FN) == {"live": "1", "canary": "1"}
    d.proxy.clear()
    moved = d.fail_the_second("UpdateAlias")
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert moved.is_set()
    assert "rolled back" in r.stderr
    conf = d.config()
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA1, 128)
    assert d.aws.aliases(FN) == {"live": "1", "canary": "1"}
    assert d.aws.versions(FN) == ["1", "2"]
    assert d.proxy.count("UpdateAlias") == 3  # live forward, canary refused, live back
    assert d.last()["status"] == "rolled_back"
    assert d.state()["functions"][FN]["aliases"]["live"]["version"] == "1"


def test_rollback_removes_alias_and_tags_the_apply_added(d):
    """v1 has no alias; v2 adds the alias `live` and a tag, then fails creating its
    second alias: rollback deletes the alias it created; the tag, changed last (after the
    aliases), was never set."""
    svc = d.ws / ".harness" / "service.yaml"
    text = svc.read_text()
    start = text.index("        - manifest:\n            identifier: lambdaAliasDefinition")
    end = text.index("- /lambda-alias.json\n", start) + len("- /lambda-alias.json\n")
    svc.write_text(text[:start] + text[end:])
    r = d.apply()
    assert r.returncode == 0, r.stderr
    assert d.aws.aliases(FN) == {} and d.aws.versions(FN) == ["1"]
    tags_v1 = d.lam.list_tags(Resource=d.config()["FunctionArn"])["Tags"]
    assert "release" not in tags_v1

    # the alias is back in the service, with a second one, whose creation fails
    d.with_canary(text)
    defn = d.ws / "lambda-definition.json"
    fdef = json.loads(defn.read_text())
    fdef["tags"]["release"] = "2"
    defn.write_text(json.dumps(fdef))
    d.proxy.clear()
    created = d.fail_the_second("CreateAlias")
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert created.is_set() and "rolled back" in r.stderr
    assert d.proxy.count("TagResource") == 0 and d.proxy.count("DeleteAlias") == 1

    conf = d.config()
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA1, 128)
    assert d.aws.aliases(FN) == {}
    assert d.lam.list_tags(Resource=conf["FunctionArn"])["Tags"] == tags_v1
    state = d.state()
    assert state["history"][-1]["status"] == "rolled_back"
    assert state["functions"][FN]["aliases"] == {}
    assert state["functions"][FN]["version"] == "1"


# ---------------------------------------------------------------- 3: failure after create


@on_both_emulators
def test_failure_after_create_deletes_the_function(d):
    d.proxy.add_rule("PublishVersion", "fail", times=None, **NO_RETRY)
    r = d.apply()
    assert r.returncode == 1, r.stderr
    assert "rolled back" in r.stderr
    assert d.proxy.count("CreateFunction") == 1
    assert d.proxy.count("DeleteFunction") == 1
    assert FN not in d.functions()

    state = d.state()
    assert FN not in state["functions"]
    last = state["history"][-1]
    assert last["function"] == FN
    assert last["status"] == "rolled_back"
    assert "injected fault" in last["error"]
    assert last["previous"] == {"exists": False}
    assert any(s["step"] == "created" for s in last["steps"])

    # and it can be created again
    d.proxy.clear_rules()
    r = d.apply()
    assert r.returncode == 0, r.stderr
    assert d.code() == SHA1 and d.aws.aliases(FN) == {"live": "1"}


# ---------------------------------------------------------------- 4: --no-rollback


def test_no_rollback_leaves_it_for_inspection(d):
    d.deploy_v1()
    d.proxy.add_rule("UpdateFunctionConfiguration", "fail", times=None, **NO_RETRY)
    r = d.apply(*d.to_v2(), "--no-rollback")
    assert r.returncode == 1, r.stderr
    assert "--no-rollback" in r.stderr and "inspection" in r.stderr
    assert "rolled back" not in r.stderr
    # half done: the new code is on $LATEST, the configuration and the alias are not
    conf = d.config()
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA2, 128)
    assert d.aws.aliases(FN) == {"live": "1"}
    assert d.aws.versions(FN) == ["1"]
    # no rollback was attempted
    assert d.proxy.count("UpdateFunctionCode") == 1

    state = d.state()
    last = state["history"][-1]
    assert last["status"] == "failed"
    assert "injected fault" in last["error"]
    assert [s["step"] for s in last["steps"]] == ["code updated"]
    assert state["functions"][FN]["version"] == "1"


# ---------------------------------------------------------------- 5: transient errors


def test_transient_errors_are_retried(d):
    d.deploy_v1()
    throttle = d.proxy.add_rule("UpdateFunctionCode", "throttle", times=2)
    err500 = d.proxy.add_rule("GetFunction", "fail", times=1)  # 500 ServiceException
    r = d.apply(*d.to_v2())
    assert r.returncode == 0, r.stderr
    assert (throttle.fired, err500.fired) == (2, 1)
    assert d.proxy.count("UpdateFunctionCode") == 3
    assert d.proxy.count("UpdateFunctionConfiguration") == 1
    assert d.proxy.count("PublishVersion") == 1

    d.assert_v2_released()


# ---------------------------------------------------------------- 6: rollback failing


def test_rollback_failure_is_reported(d):
    d.deploy_v1()
    d.proxy.add_rule("UpdateFunctionConfiguration", "fail", times=None, **NO_RETRY)
    # the apply's code update goes through; the rollback's code restore does not
    d.proxy.add_rule("UpdateFunctionCode", "fail", nth=2, times=None, **NO_RETRY)
    r = d.apply(*d.to_v2())
    assert r.returncode == 1, r.stderr
    assert "ROLLBACK FAILED" in r.stderr
    assert "by hand" in r.stderr
    assert SHA1 in r.stderr  # what to restore: the code, where it is...
    assert f"s3://{BUCKET}/{KEY1}" in r.stderr and "version 1" in r.stderr
    assert "configuration" in r.stderr
    assert "live → 1" in r.stderr  # ...and the aliases
    assert "Traceback" not in r.stderr
    assert d.code() == SHA2  # the rollback really did not happen
    assert d.aws.aliases(FN) == {"live": "1"}

    last = d.last()
    assert last["status"] == "rollback_failed"
    assert "injected fault" in last["error"]
    assert "injected fault" in last["rollback_error"]


# ---------------------------------------------------------------- 8: the state lock


def _hold_lock(state_path: Path, lock_id: str) -> FileLock:
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state_path) + ".lock", thread_local=False)  # released from another thread
    lock.acquire(timeout=0)
    Path(str(state_path) + ".lock.info").write_text(
        json.dumps(
            {
                "id": lock_id,
                "who": f"{getpass.getuser()}@{socket.gethostname()}",
                "pid": os.getpid(),
                "operation": "apply",
                "created": "2026-01-01T00:00:00.000000Z",
            }
        )
    )
    return lock


def _release_lock(state_path: Path, lock: FileLock) -> None:
    Path(str(state_path) + ".lock.info").unlink(missing_ok=True)
    lock.release()


def test_locked_state_refuses_apply(d):
    d.deploy_v1()
    serial = d.state()["serial"]
    lock_id = str(uuid.uuid4())
    lock = _hold_lock(d.state_path, lock_id)
    try:
        r = d.apply(*d.to_v2())
    finally:
        _release_lock(d.state_path, lock)
    assert r.returncode == 1, r.stderr
    assert "locked" in r.stderr
    assert lock_id in r.stderr
    assert f"{getpass.getuser()}@{socket.gethostname()}" in r.stderr
    assert "force-unlock" in r.stderr
    assert d.proxy.mutating_requests() == []
    assert d.code() == SHA1
    assert d.state()["serial"] == serial


def test_lock_timeout_waits_for_the_lock(d):
    """The lock is held by somebody else when the apply starts: it waits (--lock-timeout),
    reads nothing from AWS before it has the lock, then plans and applies."""
    d.deploy_v1()
    lock = _hold_lock(d.state_path, str(uuid.uuid4()))
    released = threading.Event()
    released_at = []

    def release_later():
        time.sleep(3)
        released_at.append(time.time())
        _release_lock(d.state_path, lock)
        released.set()

    t = threading.Thread(target=release_later, daemon=True)
    t.start()
    try:
        r = d.apply(*d.to_v2(), "--lock-timeout", "20")
    finally:
        t.join(10)
        if not released.is_set():
            _release_lock(d.state_path, lock)
    assert released_at and d.proxy.entries() and all(e["time"] >= released_at[0] for e in d.proxy.entries())
    assert r.returncode == 0, r.stderr
    assert d.code() == SHA2
    assert d.aws.aliases(FN) == {"live": "2"}
    assert d.last()["status"] == "succeeded"
    assert not Path(str(d.state_path) + ".lock.info").exists()
