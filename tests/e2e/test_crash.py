"""Crash safety (issue 3, item 3): SIGKILL the `apply` process right after each mutating
Lambda call in turn and check that nothing is corrupted and that the next apply converges.

The CLI runs in a subprocess against moto_server through the FaultProxy. A clean apply
is run first to count its mutating Lambda calls; then for k = 1..count the same apply is
started afresh (moto reset and re-seeded, a fresh state directory) with
``proxy.after(is_mutating, k, kill)``: the proxy holds every further request while the
callback SIGKILLs the CLI and waits for it, so the k-th mutating call is the last one that
reached Lambda. Afterwards:

- the state file and its .backup are valid JSON with the same lineage;
- `plan` says the deployment was interrupted and that the plan converges it;
- the next `apply --auto-approve` exits 0;
- Lambda holds the desired code and configuration, alias `live` is on the newest
  version, and at most one version was published beyond what existed before (the one
  the killed apply was publishing, reused when it had already been published);
- the state records the outcome and no deployment is left in_progress.

What Lambda holds is read with boto3 straight from moto, not through the proxy.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from e2e_util import check
from harness.faultproxy import is_mutating
from harness.localstack import on_both_emulators

from reconciler.store import state as st

pytestmark = pytest.mark.e2e

BUCKET = "reconciler-artifacts"
KEY1 = "greeter/greeter-1.0.0.zip"
KEY2 = "greeter/greeter-2.0.0.zip"
FN = "greeter-staging"
STATE = ("staging", "staging_use1")


class Sweep:
    """The two-environments sample (staging only): v1 in one workspace copy, v2 (new S3
    key; memory 256 via --var) in another; one state directory per crash point."""

    def __init__(self, aws, workspace, tmp_path, run_cli, proxy, fresh):
        self.aws, self.run_cli, self.proxy, self.fresh = aws, run_cli, proxy, fresh
        self.tmp = tmp_path
        self.ws1 = workspace("two-environments")
        self.ws2 = tmp_path / "two-environments-v2"
        shutil.copytree(self.ws1, self.ws2)
        svc = self.ws2 / ".harness" / "service.yaml"
        svc.write_text(svc.read_text().replace(KEY1, KEY2))
        self.zip1 = aws.make_zip({"handler.py": "def handler(event, context):\n    return 'v1'\n"})
        self.zip2 = aws.make_zip({"handler.py": "def handler(event, context):\n    return 'v2'\n"})
        self.sha1, self.sha2 = aws.sha256_b64(self.zip1), aws.sha256_b64(self.zip2)
        self.lam = aws.client("lambda")

    def seed(self) -> None:
        """The emulator as new (moto reset, or a fresh LocalStack account): the role and
        both artifacts."""
        self.fresh()
        self.aws._clients.clear()
        self.aws.create_role("greeter-lambda-role")
        self.aws.put_zip(BUCKET, KEY1, self.zip1)
        self.aws.put_zip(BUCKET, KEY2, self.zip2)
        self.lam = self.aws.client("lambda")

    def args(self, cmd: str, ws: Path, state_dir: Path, *extra) -> list:
        return [cmd, "-w", ws, "--state-dir", state_dir, "-e", "staging", *extra]

    def cli(self, cmd, ws, state_dir, *extra, proxy=False):
        env = {"AWS_ENDPOINT_URL": self.proxy.endpoint} if proxy else None
        return self.run_cli(*self.args(cmd, ws, state_dir, *extra), cwd=ws, env_extra=env)

    def killed_apply(self, k: int, ws, state_dir, *extra) -> dict:
        """Run apply through the proxy and SIGKILL it right after the k-th mutating call."""
        self.proxy.clear(rules=True)
        holder = {}

        def kill():
            holder["proc"].kill()
            holder["proc"].wait()

        hook = self.proxy.after(is_mutating, k, kill)
        holder["proc"] = proc = self.run_cli.popen(
            *self.args("apply", ws, state_dir, "--auto-approve", *extra),
            cwd=ws,
            env_extra={"AWS_ENDPOINT_URL": self.proxy.endpoint},
        )
        out, err = proc.communicate(timeout=120)
        assert hook.fired and hook.error is None, f"not killed at mutating call {k}:\n{err}"
        assert proc.returncode == -9, (proc.returncode, err)
        done = [e["operation"] for e in self.proxy.mutating_requests(forwarded_only=True)]
        assert len(done) == k, done
        return {"pid": proc.pid, "operations": done}

    # -- checks ------------------------------------------------------------
    def state_path(self, state_dir: Path) -> Path:
        return state_dir / STATE[0] / f"{STATE[1]}.json"

    def check_state(self, state_dir: Path, killed_pid: int | None = None) -> dict:
        """The state file and its .backup are valid; returns the state as the product reads
        it: the file plus the steps a killed apply journaled beside it."""
        path = self.state_path(state_dir)
        raw = json.loads(path.read_text())
        assert raw["format_version"] == 1 and uuid.UUID(raw["lineage"]) and raw["serial"] >= 1
        backup = path.with_name(path.name + ".backup")
        if raw["serial"] >= 2:
            prev = json.loads(backup.read_text())
            assert prev["lineage"] == raw["lineage"] and prev["serial"] < raw["serial"]
        # a temp file can only be left by the process that was killed mid-write
        for tmp in path.parent.glob(".*.tmp"):
            assert killed_pid is not None and tmp.name.endswith(f".{killed_pid}.tmp"), tmp
        journal = path.with_name(path.name + ".journal")
        if killed_pid is None:
            assert not journal.exists(), "an apply that exits compacts its journal into the state file"
        else:
            # whole lines only (none: killed between creating the journal and its first write)
            data = journal.read_bytes() if journal.exists() else b""
            assert not data or data.endswith(b"\n"), "whole lines only"
        data = st.parse_file(path)
        assert data["lineage"] == raw["lineage"] and data["serial"] >= raw["serial"]
        return data

    def lambda_versions(self) -> list[str]:
        return self.aws.versions(FN)

    def assert_converged(self, sha: str, memory: int, max_versions: int, state_dir: Path) -> None:
        conf = self.aws.lambda_config(FN)
        assert (conf["CodeSha256"], conf["MemorySize"]) == (sha, memory)
        versions = self.lambda_versions()
        assert 1 <= len(versions) <= max_versions, versions
        newest = max(versions, key=int)
        assert self.aws.aliases(FN) == {"live": newest}
        v = self.lam.get_function_configuration(FunctionName=FN, Qualifier=newest)
        assert (v["CodeSha256"], v["MemorySize"]) == (sha, memory)
        state = self.check_state(state_dir)
        rec = state["functions"][FN]
        assert (rec["version"], rec["code_sha256"]) == (newest, sha)
        assert rec["aliases"]["live"]["version"] == newest
        mine = [h for h in state["history"] if h["function"] == FN]
        assert mine[-1]["status"] == "succeeded" and mine[-1]["version"] == newest
        assert not [h for h in mine if h["status"] == "in_progress"]


@pytest.fixture
def sweep(aws, workspace, tmp_path, run_cli, fault_proxy, emulator, request):
    if emulator == "moto":
        fresh = request.getfixturevalue("moto_server").reset
    else:
        server = request.getfixturevalue("localstack_server")

        def fresh() -> None:  # the CLI and the helper move to a new account together
            aws.access_key = aws.account = run_cli.env["AWS_ACCESS_KEY_ID"] = server.new_account()

    return Sweep(aws, workspace, tmp_path, run_cli, fault_proxy, fresh)


def _converge(sw: Sweep, k: int, killed: dict, ws, state_dir, extra: tuple, replan: bool = False) -> None:
    """What every crash point must lead to: a valid state, a plan that says so, an apply
    that succeeds."""
    state = sw.check_state(state_dir, killed["pid"])
    # the kill may also have landed mid atomic write, leaving the killed writer's temp
    # files (of the state and of its .backup); planted at every crash point, so that
    # their removal by the next apply is checked every time, not when the kill happens
    # to land there
    path = sw.state_path(state_dir)
    for name in (f".{path.name}.{killed['pid']}.tmp", f".{path.name}.backup.{killed['pid']}.tmp"):
        (path.parent / name).write_text(path.read_text()[:50])
    # or between creating the journal and writing its first line: an empty journal
    journal = path.with_name(path.name + ".journal")
    if not journal.exists():
        journal.write_bytes(b"")
    stuck = [h for h in state["history"] if h["function"] == FN and h["status"] == "in_progress"]
    assert len(stuck) == 1, state["history"]
    r = sw.cli("plan", ws, state_dir, "--detailed-exitcode", *extra)
    check(r, 2)
    assert f"an apply started at {stuck[0]['started_at']} was interrupted" in r.stdout, (k, r.stdout)
    assert "this plan converges it" in r.stdout
    r = sw.cli("apply", ws, state_dir, "--auto-approve", *extra)
    check(r, 0)
    assert "Apply complete: 1 applied" in r.stdout, r.stdout
    after = sw.check_state(state_dir)
    closed = next(h for h in after["history"] if h["id"] == stuck[0]["id"])
    assert closed["status"] == "interrupted", closed
    if replan:  # and it stays converged (asserted once per sweep: each CLI run costs ~1.5 s)
        check(sw.cli("plan", ws, state_dir, "--detailed-exitcode", *extra), 0)


def test_kill_update_at_every_mutating_call(sweep):
    sw = sweep
    v2 = ("--var", "memorySize=256")

    # the clean run: how many mutating Lambda calls an update makes
    sw.seed()
    base = sw.tmp / "state-clean"
    check(sw.cli("apply", sw.ws1, base, "--auto-approve"))
    assert sw.lambda_versions() == ["1"]
    sw.proxy.clear(rules=True)
    check(sw.cli("apply", sw.ws2, base, "--auto-approve", *v2, proxy=True))
    ops = [e["operation"] for e in sw.proxy.mutating_requests(forwarded_only=True)]
    assert ops == ["UpdateFunctionCode", "UpdateFunctionConfiguration", "PublishVersion", "UpdateAlias"], ops
    sw.assert_converged(sw.sha2, 256, 2, base)

    for k in range(1, len(ops) + 1):
        sw.seed()
        state_dir = sw.tmp / f"state-update-{k}"
        check(sw.cli("apply", sw.ws1, state_dir, "--auto-approve"))
        killed = sw.killed_apply(k, sw.ws2, state_dir, *v2)
        assert killed["operations"] == ops[:k]
        _converge(sw, k, killed, sw.ws2, state_dir, v2, replan=k == len(ops))
        # exactly one version beyond version 1: the one the killed apply was publishing
        sw.assert_converged(sw.sha2, 256, 2, state_dir)
        assert sw.lambda_versions() == ["1", "2"], (k, sw.lambda_versions())
        state = sw.check_state(state_dir)
        last = state["history"][-1]
        # rollback data of the converging apply: what ran before the killed one
        assert (last["previous"]["version"], last["previous"]["code_sha256"]) == ("1", sw.sha1), (k, last["previous"])
        if k >= 3:  # version 2 was published before the kill: reused, not published again
            assert any(s["step"] == "reused version 2" for s in last["steps"]), (k, last["steps"])


@on_both_emulators
def test_kill_create_at_every_mutating_call(sweep):
    sw = sweep

    sw.seed()
    base = sw.tmp / "state-clean"
    sw.proxy.clear(rules=True)
    check(sw.cli("apply", sw.ws1, base, "--auto-approve", proxy=True))
    ops = [e["operation"] for e in sw.proxy.mutating_requests(forwarded_only=True)]
    assert ops == ["CreateFunction", "PublishVersion", "CreateAlias"], ops
    sw.assert_converged(sw.sha1, 128, 1, base)

    for k in range(1, len(ops) + 1):
        sw.seed()
        state_dir = sw.tmp / f"state-create-{k}"
        killed = sw.killed_apply(k, sw.ws1, state_dir)
        assert killed["operations"] == ops[:k]
        _converge(sw, k, killed, sw.ws1, state_dir, (), replan=k == len(ops))
        sw.assert_converged(sw.sha1, 128, 1, state_dir)
        assert sw.lambda_versions() == ["1"]
        state = sw.check_state(state_dir)
        assert state["history"][-1]["previous"] == {"exists": False}
        assert state["functions"][FN]["service"] == "greeter"


def test_moto_publish_version_returns_the_existing_version_when_nothing_changed(aws):
    """What the reuse relies on, and what Lambda documents: PublishVersion with nothing
    changed since the last publish returns that version instead of a new one."""
    aws.create_role("greeter-lambda-role")
    lam = aws.client("lambda")
    lam.create_function(
        FunctionName="pv",
        Runtime="python3.12",
        Handler="h.h",
        Role=f"arn:aws:iam::{aws.account}:role/greeter-lambda-role",
        Code={"ZipFile": aws.make_zip({"h.py": "def h(e, c):\n    return 1\n"})},
    )
    assert lam.publish_version(FunctionName="pv", Description="reconciler a")["Version"] == "1"
    again = lam.publish_version(FunctionName="pv", Description="reconciler b")
    assert again["Version"] == "1" and again["Description"] == "reconciler a"
    lam.update_function_configuration(FunctionName="pv", MemorySize=256)
    assert lam.publish_version(FunctionName="pv")["Version"] == "2"
    assert aws.versions("pv") == ["1", "2"]
