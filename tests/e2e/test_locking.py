"""Locking (issue 3, item 4): concurrent applies on one infrastructure, with and without
allowSimultaneousDeployments, and `force-unlock` of a lock record left by a killed apply.

Two services (greeter, greeter2) of the two-environments sample deploy to the same
infrastructure (staging_use1, one state file). Each CLI process talks to moto through its
own FaultProxy, so a hook can pause one process mid-apply (its proxy holds its requests)
while the other runs freely.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from e2e_util import check
from filelock import FileLock
from harness.faultproxy import FaultProxy, is_mutating

pytestmark = pytest.mark.e2e

BUCKET = "reconciler-artifacts"
KEY1 = "greeter/greeter-1.0.0.zip"
FN1, FN2 = "greeter-staging", "greeter2-staging"


class Infra:
    def __init__(self, aws, workspace, tmp_path, run_cli, moto_server, simultaneous: bool):
        self.aws, self.run_cli = aws, run_cli
        self.ws = workspace("two-environments")
        svc = (self.ws / ".harness" / "service.yaml").read_text()
        (self.ws / ".harness" / "service-2.yaml").write_text(
            svc.replace("name: greeter\n", "name: greeter2\n").replace(
                "identifier: greeter\n", "identifier: greeter2\n"
            )
        )
        infra = self.ws / ".harness" / "infrastructure-staging.yaml"
        infra.write_text(
            infra.read_text().replace(
                "allowSimultaneousDeployments: false", f"allowSimultaneousDeployments: {str(simultaneous).lower()}"
            )
        )
        self.state_dir = tmp_path / "state"
        self.state_path = self.state_dir / "staging" / "staging_use1.json"
        aws.create_role("greeter-lambda-role")
        self.sha1 = aws.put_zip(BUCKET, KEY1, aws.make_zip({"handler.py": "def handler(e, c):\n    return 'v1'\n"}))
        self.proxies = [FaultProxy(moto_server.endpoint).start() for _ in range(2)]

    def close(self):
        for p in self.proxies:
            p.stop()

    def args(self, service: str, *extra) -> list:
        return [
            "apply",
            "--auto-approve",
            "-w",
            self.ws,
            "--state-dir",
            self.state_dir,
            "-e",
            "staging",
            "-s",
            service,
            *extra,
        ]

    def env(self, i: int) -> dict:
        return {"AWS_ENDPOINT_URL": self.proxies[i].endpoint}

    def popen(self, i: int, service: str, *extra) -> subprocess.Popen:
        return self.run_cli.popen(*self.args(service, *extra), cwd=self.ws, env_extra=self.env(i))

    def run(self, i: int, service: str, *extra) -> subprocess.CompletedProcess:
        return self.run_cli(*self.args(service, *extra), cwd=self.ws, env_extra=self.env(i))

    def state(self) -> dict:
        data = json.loads(self.state_path.read_text())
        backup = json.loads(self.state_path.with_name(self.state_path.name + ".backup").read_text())
        assert backup["lineage"] == data["lineage"] and backup["serial"] < data["serial"]
        assert not self.state_path.with_name(self.state_path.name + ".journal").exists(), "journal not compacted"
        return data

    def assert_deployed(self, state: dict, name: str, service: str) -> None:
        conf = self.aws.lambda_config(name)
        assert conf["CodeSha256"] == self.sha1
        assert self.aws.versions(name) == ["1"] and self.aws.aliases(name) == {"live": "1"}
        rec = state["functions"][name]
        assert (rec["service"], rec["version"], rec["code_sha256"]) == (service, "1", self.sha1)
        assert rec["aliases"]["live"]["version"] == "1"
        mine = [h for h in state["history"] if h["function"] == name]
        assert [h["status"] for h in mine] == ["succeeded"]

    def mutating_times(self, i: int) -> list[float]:
        return [e["time"] for e in self.proxies[i].mutating_requests(forwarded_only=True)]


@pytest.fixture
def infra_factory(aws, workspace, tmp_path, run_cli, moto_server):
    made = []

    def make(simultaneous: bool) -> Infra:
        made.append(Infra(aws, workspace, tmp_path, run_cli, moto_server, simultaneous))
        return made[-1]

    yield make
    for m in made:
        m.close()


def _pause_a_start_b(inf: Infra, b_service: str, b_extra: tuple, wait_b: float) -> dict:
    """Start A (greeter) through proxy 0; right after A's first mutating call (A holds its
    locks then), start B through proxy 1 and give it `wait_b` seconds while A is paused."""
    seen: dict = {}

    def start_b():
        seen["b"] = b = inf.popen(1, b_service, *b_extra)
        try:
            b.wait(timeout=wait_b)
            seen["b_done_while_a_paused"] = True
        except subprocess.TimeoutExpired:
            seen["b_done_while_a_paused"] = False

    hook = inf.proxies[0].after(is_mutating, 1, start_b)
    a = inf.popen(0, "greeter")
    a_out, a_err = a.communicate(timeout=180)
    assert hook.fired and hook.error is None, a_err
    b_out, b_err = seen["b"].communicate(timeout=180)
    seen.update(a=(a.returncode, a_out, a_err), b=(seen["b"].returncode, b_out, b_err))
    return seen


def test_not_simultaneous_second_apply_waits_for_the_lock(infra_factory):
    inf = infra_factory(False)
    seen = _pause_a_start_b(inf, "greeter2", ("--lock-timeout", "90"), wait_b=4)
    (a_rc, _, a_err), (b_rc, _, b_err) = seen["a"], seen["b"]
    assert a_rc == 0, a_err
    assert b_rc == 0, b_err
    assert seen["b_done_while_a_paused"] is False  # B could not deploy while A held the state lock
    # every change B made came after A's last one
    assert max(inf.mutating_times(0)) < min(inf.mutating_times(1))
    state = inf.state()
    inf.assert_deployed(state, FN1, "greeter")
    inf.assert_deployed(state, FN2, "greeter2")
    assert not Path(str(inf.state_path) + ".lock.info").exists()


def test_not_simultaneous_second_apply_fails_fast_without_lock_timeout(infra_factory):
    inf = infra_factory(False)
    seen = _pause_a_start_b(inf, "greeter2", (), wait_b=60)
    (a_rc, _, a_err), (b_rc, _, b_err) = seen["a"], seen["b"]
    assert a_rc == 0, a_err
    assert b_rc == 1 and seen["b_done_while_a_paused"] is True
    assert "state is locked" in b_err and "apply" in b_err and "--lock-timeout" in b_err, b_err
    assert f"{getpass.getuser()}@{socket.gethostname()}" in b_err
    assert "Traceback" not in b_err
    assert inf.proxies[1].mutating_requests() == []
    assert FN2 not in [f["FunctionName"] for f in inf.aws.client("lambda").list_functions()["Functions"]]
    state = inf.state()
    inf.assert_deployed(state, FN1, "greeter")
    assert FN2 not in state["functions"]


def test_simultaneous_different_functions_deploy_in_parallel(infra_factory):
    inf = infra_factory(True)
    seen = _pause_a_start_b(inf, "greeter2", (), wait_b=90)
    (a_rc, _, a_err), (b_rc, _, b_err) = seen["a"], seen["b"]
    assert b_rc == 0, b_err
    assert seen["b_done_while_a_paused"] is True  # B deployed entirely while A was mid-apply
    assert a_rc == 0, a_err
    a_times, b_times = inf.mutating_times(0), inf.mutating_times(1)
    assert a_times[0] < min(b_times) and max(b_times) < a_times[1]
    # no lost update: A re-read the state under its lock for each write and kept B's records
    state = inf.state()
    inf.assert_deployed(state, FN1, "greeter")
    inf.assert_deployed(state, FN2, "greeter2")
    assert not list(inf.state_path.parent.glob("*.lock.info"))


def test_simultaneous_one_function_is_never_deployed_twice_at_once(infra_factory):
    inf = infra_factory(True)
    seen = _pause_a_start_b(inf, "greeter", (), wait_b=60)
    (a_rc, _, a_err), (b_rc, _, b_err) = seen["a"], seen["b"]
    assert a_rc == 0, a_err
    assert b_rc == 1, b_err
    assert f"function {FN1} is being deployed by another reconciler process" in b_err, b_err
    assert "Traceback" not in b_err
    assert inf.proxies[1].mutating_requests() == []
    state = inf.state()
    inf.assert_deployed(state, FN1, "greeter")


def test_simultaneous_same_function_waiting_refuses_its_stale_plan(infra_factory):
    """B planned a create while A was creating the function; after waiting for the
    function's lock it refuses to act on that plan instead of creating (and then rolling
    back = deleting) what A deployed."""
    inf = infra_factory(True)
    seen = _pause_a_start_b(inf, "greeter", ("--lock-timeout", "90"), wait_b=3)
    (a_rc, _, a_err), (b_rc, _, b_err) = seen["a"], seen["b"]
    assert a_rc == 0, a_err
    assert b_rc == 1, b_err
    assert f"function {FN1} changed in Lambda since this plan was made" in b_err, b_err
    assert inf.proxies[1].mutating_requests() == []
    inf.assert_deployed(inf.state(), FN1, "greeter")


# ---------------------------------------------------------------- force-unlock


def test_force_unlock_of_a_lock_left_by_a_killed_apply(infra_factory):
    inf = infra_factory(False)
    info_path = Path(str(inf.state_path) + ".lock.info")
    seen = {}

    def kill():
        seen["info"] = json.loads(info_path.read_text())  # written by the apply, under its lock
        seen["proc"].kill()
        seen["proc"].wait()

    inf.proxies[0].after(is_mutating, 1, kill)
    seen["proc"] = proc = inf.popen(0, "greeter")
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    info = seen["info"]
    assert info["pid"] == proc.pid and info["operation"] == "apply"
    stale = info_path.read_text()
    assert json.loads(stale)["id"] == info["id"]  # left behind by the dead runner

    r = inf.run_cli("force-unlock", str(uuid.uuid4()), "--state-dir", inf.state_dir)
    check(r, 1)
    assert "no lock with ID" in r.stderr

    r = inf.run_cli("force-unlock", info["id"], "--state-dir", inf.state_dir)
    check(r)
    assert info["id"] in r.stdout and "removed" in r.stdout
    assert not info_path.exists()

    # the OS released the dead process's file lock: with its record still there, the next
    # apply simply proceeds (and converges the interrupted deployment)
    info_path.write_text(stale)
    r = inf.run(0, "greeter")
    check(r)
    assert not info_path.exists()
    state = inf.state()
    assert state["functions"][FN1]["version"] == "1"
    assert [h["status"] for h in state["history"]] == ["interrupted", "succeeded"]

    # a lock held by a live process is refused, with its details
    lock_id = str(uuid.uuid4())
    lock = FileLock(str(inf.state_path) + ".lock", thread_local=False)
    lock.acquire(timeout=0)
    try:
        info_path.write_text(
            json.dumps(
                {
                    "id": lock_id,
                    "who": "someone@ci-runner-7",
                    "pid": os.getpid(),
                    "operation": "apply",
                    "created": "2026-01-01T00:00:00.000000Z",
                }
            )
        )
        r = inf.run_cli("force-unlock", lock_id, "--state-dir", inf.state_dir)
        check(r, 1)
        assert (
            "held by a running process" in r.stderr
            and "someone@ci-runner-7" in r.stderr
            and str(os.getpid()) in r.stderr
        )
        assert info_path.exists()
    finally:
        info_path.unlink(missing_ok=True)
        lock.release()
