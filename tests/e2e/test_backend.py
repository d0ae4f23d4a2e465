"""End-to-end: the S3 state backend against moto_server (S3 + DynamoDB), the real CLI in
subprocesses. samples/two-environments with a reconciler.yaml, `-e staging`.

- the state object written by one runner (working directory) is what another runner reads;
- two applies at once: both wait for the lock, then run one after the other (the second
  applies its change or fails clearly, its plan being older than the first apply), no lost update;
- a lock left by a dead runner is reported with its details and removed with force-unlock
  (S3 lock object and DynamoDB lock item);
- migration of a local state directory, pull/push round trip, lineage/serial refusals, --force;
- a writer that ignores the lock is detected (If-Match), never overwritten."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from e2e_util import Project, check

pytestmark = pytest.mark.e2e

BUCKET = "team-state"
TABLE = "reconciler-locks"
KEY = "reconciler/staging/staging_use1.json"
FN = "greeter-staging"
# the CLI's credentials: distinctive, so that the test can prove none reaches the state
CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIAE2EBACKENDTEST",
    "AWS_SECRET_ACCESS_KEY": "e2e-secret-never-in-state",
    "AWS_SESSION_TOKEN": "e2e-session-token-never-in-state",
}


def reconciler_yaml(lock: str = "s3") -> str:
    return (
        f"# the team state: one object per infrastructure definition\nbackend:\n  type: s3\n  bucket: {BUCKET}\n"
        f"  key_prefix: reconciler\n  region: us-east-1\n  lock: {lock}\n  table: {TABLE}\n"
    )


class Runner(Project):
    """One CI runner: its own copy of the workspace and its own (unused) state directory."""

    def cli(self, *args, code: int | None = 0, env_extra=None, input=None):
        return super().cli(*args, code=code, env_extra={**CREDS, **(env_extra or {})}, input=input)

    def popen(self, *args):
        return self.run_cli.popen(*args, "--state-dir", self.state_dir, cwd=self.ws, env_extra=CREDS)

    def s3(self):
        return self.aws.client("s3")

    def ddb(self):
        return self.aws.client("dynamodb")

    def state_object(self) -> tuple[dict, str]:
        r = self.s3().get_object(Bucket=BUCKET, Key=KEY)
        body = r["Body"].read().decode()
        return json.loads(body), body

    def other_runner(self, name: str) -> "Runner":
        ws = self.ws.parent / name
        shutil.copytree(self.ws, ws)
        return Runner(self.run_cli, self.aws, ws, self.ws.parent / f"{name}-state", self.region)


@pytest.fixture
def team(aws, run_cli, workspace, tmp_path) -> Runner:
    r = Runner(run_cli, aws, workspace("two-environments"), tmp_path / "state-a", "us-east-1")
    aws.create_role("greeter-lambda-role")
    src = (r.ws / "src" / "handler.py").read_text()
    r.sha = aws.put_zip("reconciler-artifacts", "greeter/greeter-1.0.0.zip", aws.make_zip({"handler.py": src}))
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    aws.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "LockID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "LockID", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    (r.ws / "reconciler.yaml").write_text(reconciler_yaml("s3"))
    return r


def _no_lock_left(r: Runner) -> None:
    assert "Contents" not in r.s3().list_objects_v2(Bucket=BUCKET, Prefix=KEY + ".lock")
    assert r.ddb().scan(TableName=TABLE)["Items"] == []


# ---------------------------------------------------------------- shared state


def test_state_in_s3_is_shared_between_runners(team):
    team.cli("apply", "--auto-approve", "-e", "staging")
    doc, body = team.state_object()
    assert (doc["format_version"], doc["environment"], doc["infrastructure"]) == (1, "staging", "staging_use1")
    rec = doc["functions"][FN]
    assert rec["service"] == "greeter" and rec["version"] == "1" and rec["code_sha256"] == team.sha
    assert rec["aliases"]["live"]["version"] == "1"
    assert rec["configuration"]["MemorySize"] == 128 and rec["configuration"]["Timeout"] == 10
    assert doc["history"][-1]["status"] == "succeeded" and doc["serial"] >= 2
    assert not team.state_dir.exists(), "nothing is written locally with the s3 backend"
    _no_lock_left(team)
    for secret in CREDS.values():  # credentials come from the chain and never reach the state
        assert secret not in body
    versions = [v for v in team.s3().list_object_versions(Bucket=BUCKET, Prefix=KEY)["Versions"] if v["Key"] == KEY]
    assert len(versions) == doc["serial"], "a versioned bucket keeps every write"

    # another runner: another working directory, another state directory, the same state
    b = team.other_runner("runner-b")
    r = b.cli("plan", "-e", "staging", "--detailed-exitcode")
    assert "No changes" in r.stdout or "0 to create, 0 to update" in r.stdout, r.stdout
    r = b.cli("state", "list")
    assert "staging/staging_use1" in r.stdout and FN in r.stdout
    r = b.cli("state", "pull", "-e", "staging", "-i", "staging_use1")
    assert json.loads(r.stdout) == doc
    r = b.cli("state", "show", FN, "--format", "json")
    assert json.loads(r.stdout)["state_file"] == f"s3://{BUCKET}/{KEY}"
    assert not b.state_dir.exists()


# ---------------------------------------------------------------- two applies at once


def _stderr_reader(proc, lines: list) -> threading.Thread:
    t = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    t.start()
    return t


def test_two_applies_at_once_wait_for_each_other_no_lost_update(team):
    (team.ws / "reconciler.yaml").write_text(reconciler_yaml("dynamodb"))
    team.cli("apply", "--auto-approve", "-e", "staging")
    start_serial = team.state_object()[0]["serial"]
    b = team.other_runner("runner-b")

    # a third runner holds the lock while both start, so that both must wait
    lock_key = {"LockID": {"S": f"{BUCKET}/{KEY}"}}
    team.ddb().put_item(
        TableName=TABLE,
        Item={
            **lock_key,
            "ID": {"S": "runner-c"},
            "Info": {"S": json.dumps({"id": "runner-c", "who": "ci@c", "operation": "apply"})},
        },
    )
    procs = [
        team.popen("apply", "--auto-approve", "-e", "staging", "--var", "timeout=20", "--lock-timeout", "60"),
        b.popen("apply", "--auto-approve", "-e", "staging", "--var", "memorySize=256", "--lock-timeout", "60"),
    ]
    errs: list[list] = [[], []]
    readers = [_stderr_reader(p, e) for p, e in zip(procs, errs)]
    deadline = time.monotonic() + 30
    while not all(any("is locked" in line for line in e) for e in errs):
        assert time.monotonic() < deadline, errs
        assert all(p.poll() is None for p in procs), errs
        time.sleep(0.1)
    for e in errs:
        assert any("id=runner-c" in line and "waiting up to 60 s" in line for line in e), e
    team.ddb().delete_item(TableName=TABLE, Key=lock_key)
    # stderr belongs to the reader threads: communicate() would race them for its last lines
    for p in procs:
        p.wait(timeout=60)
    outs = [p.stdout.read() for p in procs]
    for t in readers:
        t.join(5)
    ok = 0
    for p, out, e in zip(procs, outs, errs):
        # the second in line either applies its own change after the first, or (its plan
        # predates the first apply) fails clearly: never half-applied, never a lost update
        err = [line for line in e if line.startswith("error:")]
        assert "Traceback" not in "".join(e)
        if p.returncode == 0:
            assert "Apply complete: 1 applied" in out
            ok += 1
        else:
            assert p.returncode == 1 and len(err) == 1 and "changed" in err[0], (out, "".join(e))
    assert ok >= 1

    doc = team.state_object()[0]
    applies = [h for h in doc["history"] if h["operation"] == "apply" and h["status"] == "succeeded"]
    assert len(applies) == 1 + ok, "every successful run is recorded: no lost update"
    assert len({h["id"] for h in applies}) == len(applies)
    assert doc["serial"] > start_serial + 2
    live = team.config(FN)
    rec = doc["functions"][FN]
    assert (rec["configuration"]["MemorySize"], rec["configuration"]["Timeout"]) == (
        live["MemorySize"],
        live["Timeout"],
    )
    assert (live["MemorySize"], live["Timeout"]) != (128, 10), "a change was applied"
    assert rec["version"] == str(1 + ok) and len(team.versions(FN)) == 1 + ok
    _no_lock_left(team)


# ---------------------------------------------------------------- a dead runner's lock


@pytest.mark.parametrize("lock", ["s3", "dynamodb"])
def test_lock_of_a_killed_runner_reported_and_force_unlocked(team, lock):
    (team.ws / "reconciler.yaml").write_text(reconciler_yaml(lock))
    holder = {
        "id": "dead-runner-42",
        "who": "ci@runner-7",
        "where": "https://ci.example.com/jobs/42",
        "pid": 4242,
        "operation": "apply",
        "created": "2026-01-02T03:04:05.000000Z",
        "path": f"s3://{BUCKET}/{KEY}",
    }
    if lock == "s3":
        team.s3().put_object(Bucket=BUCKET, Key=KEY + ".lock", Body=json.dumps(holder).encode())
    else:
        team.ddb().put_item(
            TableName=TABLE,
            Item={"LockID": {"S": f"{BUCKET}/{KEY}"}, "ID": {"S": holder["id"]}, "Info": {"S": json.dumps(holder)}},
        )
    r = team.cli("apply", "--auto-approve", "-e", "staging", code=1)
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert err == [
        f"error: s3://{BUCKET}/{KEY}: state is locked (id=dead-runner-42, who=ci@runner-7, "
        "where=https://ci.example.com/jobs/42, operation=apply, created=2026-01-02T03:04:05.000000Z) "
        "(wait with --lock-timeout, or if its runner died: reconciler force-unlock ID)"
    ], r.stderr
    assert team.lam().list_functions()["Functions"] == [], "nothing changed while locked"

    if lock == "s3":
        r = team.cli("force-unlock", "not-that-one", code=1)
        assert "no lock with ID not-that-one" in r.stderr
    r = team.cli("force-unlock", "dead-runner-42")
    assert f"Lock dead-runner-42 on s3://{BUCKET}/{KEY} removed." in r.stdout
    _no_lock_left(team)
    if lock == "s3":  # (the lock is free again: the other tests apply with both kinds)
        team.cli("apply", "--auto-approve", "-e", "staging")
        assert team.state_object()[0]["functions"][FN]["version"] == "1"
        _no_lock_left(team)


# ---------------------------------------------------------------- migration, pull and push


def test_migrate_local_state_then_pull_push_round_trip(team, tmp_path):
    (team.ws / "reconciler.yaml").unlink()
    team.cli("apply", "--auto-approve", "-e", "staging")  # local backend
    local = team.state_file("staging", "staging_use1")

    (team.ws / "reconciler.yaml").write_text(reconciler_yaml("s3"))
    r = team.cli("state", "push", team.state_dir)  # the one migration command
    assert f"→ s3://{BUCKET}/{KEY} (serial {local['serial']}" in r.stdout
    assert team.state_object()[0] == local, "the same JSON"
    team.cli("plan", "-e", "staging", "--detailed-exitcode", code=0)
    r = team.cli("state", "push", team.state_dir)
    assert "nothing to push" in r.stdout

    out = tmp_path / "pulled"
    team.cli("state", "pull", "--out", out)
    f = out / "staging" / "staging_use1.json"
    assert json.loads(f.read_text()) == local

    def edit(change) -> Path:
        doc = json.loads(f.read_text())
        change(doc)
        f.write_text(json.dumps(doc, indent=2))
        return f

    serial = local["serial"]
    edit(lambda d: d["functions"][FN].update(note="edited"))  # same serial, other content
    r = team.cli("state", "push", f, code=1)
    assert f"its serial {serial} is not higher than the stored state's {serial}" in r.stderr
    edit(lambda d: d.update(serial=serial + 1))
    r = team.cli("state", "push", f)
    assert f"(serial {serial + 1}, lineage {local['lineage']})" in r.stdout
    assert team.state_object()[0]["functions"][FN]["note"] == "edited"

    edit(lambda d: d.update(lineage="another-history", serial=serial + 10))
    r = team.cli("state", "push", f, code=1)
    assert f"its lineage another-history differs from the stored state's {local['lineage']}" in r.stderr
    assert "--force" in r.stderr
    edit(lambda d: d.update(serial=1))
    r = team.cli("state", "push", f, "--force")
    doc = team.state_object()[0]
    assert doc["lineage"] == "another-history" and doc["serial"] == serial + 2, "forced, and still moving forward"

    # and back to a local directory: push with the backend overridden on the command line
    r = team.cli("state", "push", f, "--backend-config", "type=local", "--force")
    assert str(team.state_dir / "staging" / "staging_use1.json") in r.stdout
    assert team.state_file("staging", "staging_use1")["lineage"] == "another-history"
    _no_lock_left(team)


# ---------------------------------------------------------------- a writer that ignores the lock


def test_concurrent_writer_is_detected_not_overwritten(team, fault_proxy, moto_server):
    team.cli("apply", "--auto-approve", "-e", "staging")
    before, _ = team.state_object()

    def behind_its_back():
        doc = json.loads(team.s3().get_object(Bucket=BUCKET, Key=KEY)["Body"].read())
        doc["serial"] += 1
        doc["history"].append({"id": "hand-edit", "operation": "state push", "status": "succeeded"})
        team.s3().put_object(Bucket=BUCKET, Key=KEY, Body=json.dumps(doc, indent=2).encode())

    # the 1st GET of the state is the plan's, the 2nd the apply's own read under the lock:
    # right after it, somebody else writes the object without taking the lock
    is_state_get = lambda e: e["method"] == "GET" and e["path"].endswith("/" + KEY)  # noqa: E731
    hook = fault_proxy.after(is_state_get, 2, behind_its_back)
    r = team.cli(
        "apply",
        "--auto-approve",
        "-e",
        "staging",
        "--var",
        "timeout=20",
        code=1,
        env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint},
    )
    assert hook.fired and hook.error is None
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"s3://{BUCKET}/{KEY}: state changed since this run read it" in err[0], r.stderr
    assert (
        f"serial {before['serial']}" in err[0]
        and f"serial {before['serial'] + 1}" in err[0]
        and "not overwritten" in err[0]
    )
    after, _ = team.state_object()
    assert after["serial"] == before["serial"] + 1 and after["history"][-1]["id"] == "hand-edit", (
        "the other write survives"
    )
    assert team.config(FN)["Timeout"] == 10, "refused before changing Lambda"
    _no_lock_left(team)
    check(team.run_cli("plan", "-e", "staging", "--state-dir", team.state_dir, cwd=team.ws), 0)


def test_writer_ignoring_the_lock_mid_apply_rolls_back_and_says_so(team, fault_proxy, moto_server):
    """Somebody writes the state object without the lock after the apply changed Lambda: the
    apply's next conditional write fails; the change is rolled back all the same, and the
    error says that it was and that the state could not record it."""
    team.cli("apply", "--auto-approve", "-e", "staging")

    def behind_its_back():
        doc = json.loads(team.s3().get_object(Bucket=BUCKET, Key=KEY)["Body"].read())
        doc["serial"] += 1
        doc["history"].append({"id": "hand-edit", "operation": "state push", "status": "succeeded"})
        team.s3().put_object(Bucket=BUCKET, Key=KEY, Body=json.dumps(doc, indent=2).encode())

    hook = fault_proxy.after("UpdateFunctionConfiguration", 1, behind_its_back)
    r = team.cli(
        "apply",
        "--auto-approve",
        "-e",
        "staging",
        "--var",
        "timeout=20",
        code=1,
        env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint},
    )
    assert hook.fired and hook.error is None
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "state changed since this run read it" in err[0], r.stderr
    assert "rolled back to what ran before" in err[0] and "the state could not record this" in err[0], r.stderr
    assert team.config(FN)["Timeout"] == 10, "the change was rolled back"
    after, _ = team.state_object()
    assert after["history"][-1]["id"] == "hand-edit", "the other write survives"
    _no_lock_left(team)
