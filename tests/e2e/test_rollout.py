"""Progressive delivery (issue 16) end to end: samples/canary with intervals of seconds,
the real CLI against moto_server. The test watches the alias through the emulator while
the apply runs, flips the gating alarm with set_alarm_state, and SIGKILLs the runner."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest
from e2e_util import Project, check

pytestmark = pytest.mark.e2e

FN = "billing-prod"
STATE = ("prod", "prod_use1")
ALARM = "billing-5xx"
BUCKET = "reconciler-artifacts"


class Canary(Project):
    def put_version(self, n: int) -> str:
        body = self.aws.make_zip({"handler.py": f"def handler(event, context):\n    return {n}\n"})
        return self.aws.put_zip(BUCKET, f"billing/billing-{n}.zip", body)

    def rule(self, strategy: str, extra: str = "") -> None:
        (self.ws / "reconciler.yaml").write_text(
            "rollout:\n"
            "  - match: {service: billing, environment: prod}\n"
            "    alias: live\n"
            f"    strategy: {strategy}\n"
            f"    alarms: [{ALARM}]\n" + extra
        )

    def alias(self) -> tuple[str, dict]:
        a = self.lam().get_alias(FunctionName=FN, Name="live")
        return a["FunctionVersion"], dict((a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})

    def alarm(self, state: str) -> None:
        self.aws.client("cloudwatch").set_alarm_state(AlarmName=ALARM, StateValue=state, StateReason="test")

    def state(self) -> dict:
        return self.state_file(*STATE)

    def start_apply(self):
        """`apply --var version=2` in the background."""
        return self.run_cli.popen(
            "apply", "--auto-approve", "--var", "version=2", "--state-dir", self.state_dir, cwd=self.ws
        )

    def kill_at_10(self, proc, watcher) -> None:
        """SIGKILL the apply once the alias holds 10% on version 2 (and the step is journaled:
        it is recorded right after Lambda answered)."""
        watcher.wait_for(("1", {"2": 0.1}))
        time.sleep(0.5)
        proc.kill()
        proc.communicate(timeout=30)

    def last_apply(self) -> dict:
        return [h for h in self.state()["history"] if h.get("function") == FN and h.get("operation") == "apply"][-1]


class Watcher:
    """Reads the alias every 0.2 s while a command runs: the routings Lambda held."""

    def __init__(self, project: Canary):
        self.p, self.seen, self._stop = project, [], threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        try:
            got = self.p.alias()
        except Exception:  # noqa: BLE001 - the alias may not exist yet
            got = None
        if got is not None and (not self.seen or self.seen[-1] != got):
            self.seen.append(got)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(0.2)

    def __enter__(self) -> Watcher:
        self.t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.t.join()
        self._read()  # the command has ended: what the alias holds now (a poll may have missed the last change)

    def wait_for(self, routing: tuple[str, dict], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while routing not in self.seen:
            assert time.monotonic() < deadline, f"never saw {routing}; saw {self.seen}"
            time.sleep(0.1)


@pytest.fixture
def canary(aws, run_cli, workspace, tmp_path) -> Canary:
    p = Canary(run_cli, aws, workspace("canary"), tmp_path / "state", "us-east-1")
    aws.create_role("billing-lambda-role")
    p.sha1, p.sha2 = p.put_version(1), p.put_version(2)
    aws.client("cloudwatch").put_metric_alarm(
        AlarmName=ALARM,
        Namespace="AWS/Lambda",
        MetricName="Errors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        Dimensions=[{"Name": "FunctionName", "Value": FN}],
    )
    p.rule("{type: canary, percentage: 10, interval: 3s}")
    p.cli("apply", "--auto-approve")  # version 1; the alias is created on it at once
    assert p.alias() == ("1", {})
    return p


def test_a_canary_completes_and_every_weight_is_seen(canary):
    canary.rule("{type: canary, percentage: 10, interval: 3s}", "    errors_alarm: true\n")
    r = canary.cli("plan", "--var", "version=2", code=0)
    assert (
        "alias live: version 1 → 2, canary 10% for 3s then 100%, stops on billing-5xx or errors of the new version"
        in r.stdout
    )
    r = canary.cli("plan", "--var", "version=2", "--format", "markdown")
    assert (
        "- `billing-prod`: alias live: version 1 → 2, canary 10% for 3s then 100%, stops on billing-5xx or errors of "
        "the new version" in r.stdout
    )
    r = canary.cli("plan", "--var", "version=2", "--format", "json")
    ro = json.loads(r.stdout)["functions"][0]["rollout"]
    assert ro["alias"] == "live" and ro["from"] == "1" and ro["to"] == "2" and ro["impossible"] is None
    assert [s["weight"] for s in ro["schedule"]["steps"]] == [10.0, 100.0]

    with Watcher(canary) as w:
        r = canary.cli("apply", "--auto-approve", "--var", "version=2")
    assert w.seen == [("1", {}), ("1", {"2": 0.1}), ("2", {})], w.seen
    assert re.search(r"alias live 10% on version 2, [0-9]s left", r.stderr), r.stderr
    assert canary.config(FN)["CodeSha256"] == canary.sha2
    rec = canary.last_apply()
    assert rec["status"] == "succeeded" and rec["rollout"]["status"] == "completed"
    assert rec["rollout"]["created_alarm"] == "reconciler-billing-prod-live-v2-errors"
    assert "alarm reconciler-billing-prod-live-v2-errors created" in r.stderr
    alarms = canary.aws.client("cloudwatch").describe_alarms()["MetricAlarms"]
    assert [a["AlarmName"] for a in alarms] == [ALARM], "the created alarm is deleted when the rollout ends"
    assert [s["weight"] for s in rec["rollout"]["steps"]] == [10.0, 100.0]
    assert canary.state()["functions"][FN]["aliases"]["live"] == {
        "version": "2",
        "description": canary.lam().get_alias(FunctionName=FN, Name="live")["Description"],
        "weights": {},
    }
    canary.cli("plan", "--var", "version=2", "--detailed-exitcode", code=0)


def test_an_alarm_mid_bake_puts_the_old_version_back(canary):
    canary.rule("{type: canary, percentage: 10, interval: 60s}")
    with Watcher(canary) as w:
        proc = canary.start_apply()
        w.wait_for(("1", {"2": 0.1}))
        canary.alarm("ALARM")
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "alarm billing-5xx is in ALARM" in err and "rolled back" in err
    assert canary.alias() == ("1", {}), w.seen
    assert ("2", {}) not in w.seen
    assert canary.config(FN)["CodeSha256"] == canary.sha1
    rec = canary.last_apply()
    assert (
        rec["status"] == "rolled_back"
        and rec["rollout"]["status"] == "stopped"
        and rec["rollout"]["stopped_by"] == ALARM
    )
    assert "billing-5xx" in rec["error"]
    r = canary.cli("history")
    assert "rolled_back (rollout of live stopped at 10% by billing-5xx)" in r.stdout, r.stdout
    rows = json.loads(canary.cli("history", "--format", "json").stdout)
    assert rows[-1]["rollout"]["stopped_by"] == ALARM


def test_sigterm_mid_bake_puts_the_old_version_back(canary):
    canary.rule("{type: canary, percentage: 10, interval: 60s}")
    with Watcher(canary) as w:
        proc = canary.start_apply()
        w.wait_for(("1", {"2": 0.1}))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "rollout of live interrupted at 10% (Ctrl-C or SIGTERM)" in err and "rolled back" in err
    assert canary.alias() == ("1", {}) and ("2", {}) not in w.seen
    assert canary.config(FN)["CodeSha256"] == canary.sha1
    rec = canary.last_apply()
    assert rec["status"] == "rolled_back" and rec["rollout"]["status"] == "stopped"


def test_a_killed_rollout_is_shown_by_plan_and_finished_by_apply(canary):
    canary.rule("{type: canary, percentage: 10, interval: 8s}")
    with Watcher(canary) as w:
        proc = canary.start_apply()
        canary.kill_at_10(proc, w)
    assert canary.alias() == ("1", {"2": 0.1})

    r = canary.cli("plan", "--var", "version=2")
    assert "rollout of live at 10% was interrupted" in r.stdout + r.stderr, r.stdout
    r = check(canary.cli("drift", code=None), 0)  # the recorded rollout's weights are not drift
    assert "rolling out" in r.stdout and "recorded at 10%" in r.stdout, r.stdout

    with Watcher(canary) as w:
        canary.cli("apply", "--auto-approve", "--var", "version=2")
    assert canary.alias() == ("2", {}) and ("1", {}) not in w.seen
    assert canary.versions(FN) == ["1", "2"], "the killed apply's version is reused, not published again"
    rec = canary.last_apply()
    assert rec["status"] == "succeeded" and rec["rollout"]["status"] == "completed"
    assert rec["rollout"]["resumes"]


def test_abort_rollout_returns_to_the_old_version(canary):
    canary.rule("{type: canary, percentage: 10, interval: 30s}")
    with Watcher(canary) as w:
        proc = canary.start_apply()
        canary.kill_at_10(proc, w)
    r = canary.cli("apply", "--auto-approve", "--abort-rollout", "--var", "version=2")
    assert "the rollout of alias live to version 2 is aborted: back to version 1" in r.stderr
    assert canary.alias() == ("1", {})
    killed = canary.last_apply()
    assert killed["status"] == "interrupted" and killed["rollout"]["status"] == "aborted"
    assert [h["operation"] for h in canary.state()["history"]][-1] == "rollback"
    canary.cli("apply", "--auto-approve", "--abort-rollout", code=1)  # nothing left to abort
    assert canary.config(FN)["CodeSha256"] == canary.sha1
    canary.cli("drift", code=0)


def test_weights_nobody_recorded_are_drift(canary):
    canary.cli("apply", "--auto-approve", "--var", "version=2")
    canary.lam().update_alias(
        FunctionName=FN, Name="live", FunctionVersion="2", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}
    )
    r = canary.cli("drift", code=2)
    assert "live.weights" in r.stdout, r.stdout


def test_a_role_change_cannot_be_gradual_and_the_plan_says_why(canary, aws):
    aws.create_role("billing-lambda-role-2")
    canary.edit_json(
        "lambda-definition.json", lambda d: d.update(role="arn:aws:iam::123456789012:role/billing-lambda-role-2")
    )
    r = canary.cli("plan", "--var", "version=2")
    assert "all at once (no gradual shift: the execution role changes" in r.stdout


# ---------------------------------------------------------------- the canary pipeline


def run(canary: Canary, *extra, code: int) -> str:
    r = canary.cli("run", "canaryDeploy", "--var", "version=2", *extra, code=code)
    return r.stdout + r.stderr


def test_the_pipeline_with_approval_reaches_100(canary):
    with Watcher(canary) as w:
        out = run(canary, "--approve", "approval", code=0)
    # the watcher may miss a step that lasted less than its poll; the state records each one
    assert all(x in [("1", {}), ("1", {"2": 0.1}), ("1", {"2": 0.5}), ("2", {})] for x in w.seen), (w.seen, out)
    assert w.seen[-1] == ("2", {})
    rec = canary.last_apply()
    assert [s["weight"] for s in rec["rollout"]["steps"]] == [10.0, 50.0, 100.0] and rec["rollout"][
        "status"
    ] == "completed"
    assert canary.config(FN)["CodeSha256"] == canary.sha2
    canary.cli("drift", code=0)


def test_the_pipeline_rolls_back_when_the_check_at_50_fails(canary):
    out = run(canary, "--approve", "approval", "--var", "fail_at=50", code=1)
    deployed = canary.last_apply()
    assert [s["weight"] for s in deployed["rollout"]["steps"]] == [10.0, 50.0], out
    assert deployed["status"] == "rolled_back" and deployed["rollout"]["status"] == "stopped"
    assert canary.alias() == ("1", {})
    assert canary.config(FN)["CodeSha256"] == canary.sha1
    assert re.search(r"verify50\s+ShellScript\s+Failed", out), out


def test_an_approval_without_a_person_or_approve_is_a_rejection(canary):
    out = run(canary, code=1)
    assert "--approve approval" in out and re.search(r"approval\s+HarnessApproval\s+Failed", out), out
    assert [s["weight"] for s in canary.last_apply()["rollout"]["steps"]] == [10.0, 50.0]
    assert canary.alias() == ("1", {})


def test_an_alarm_stops_the_pipeline_between_steps(canary):
    canary.alarm("ALARM")
    out = run(canary, "--approve", "approval", code=1)
    assert "alarm billing-5xx is in ALARM" in out and re.search(r"shift10\s+AwsLambdaTrafficShift\s+Failed", out), out
    assert canary.last_apply()["status"] == "rolled_back"
    assert canary.alias() == ("1", {}) and canary.config(FN)["CodeSha256"] == canary.sha1


def test_an_approval_on_a_terminal_asks(canary):
    code, out, err = canary.cli_pty("run", "canaryDeploy", "--var", "version=2", answer="y")
    assert code == 0, out + err
    assert "Half of the traffic of billing is on the new version. Move all of it?" in err
    assert "approve step approval? [y/N]" in err and "approved on the terminal" in err
    assert canary.alias() == ("2", {})

    canary.put_version(3)
    code, out, err = canary.cli_pty("run", "canaryDeploy", "--var", "version=3", answer="n")
    assert code == 1 and "approval 'approval' was rejected" in out + err
    assert canary.alias() == ("2", {})
