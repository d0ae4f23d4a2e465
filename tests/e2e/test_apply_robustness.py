"""Apply robustness beyond AWS errors: Ctrl-C mid-apply rolls back, a rollback that cannot
delete a created function keeps it in the state, and `apply_plan(parallelism=N)` applies
the functions of one state file concurrently without losing a state update."""

from __future__ import annotations

import json
import signal
import threading

import pytest
from e2e_util import check

pytestmark = pytest.mark.e2e

BUCKET = "reconciler-artifacts"
KEY1 = "greeter/greeter-1.0.0.zip"
KEY2 = "greeter/greeter-2.0.0.zip"
FN = "greeter-staging"
SHA: dict[str, str] = {}
NO_RETRY = {"status": 400, "error_type": "InvalidParameterValueException"}


@pytest.fixture
def ws(aws, workspace):
    aws.create_role("greeter-lambda-role")
    SHA["1"] = aws.put_zip(BUCKET, KEY1, aws.make_zip({"handler.py": "def handler(e, c):\n    return 'v1'\n"}))
    SHA["2"] = aws.put_zip(BUCKET, KEY2, aws.make_zip({"handler.py": "def handler(e, c):\n    return 'v2'\n"}))
    return workspace("two-environments")


def _apply(run_cli, ws, state_dir, *extra, proxy=None):
    return run_cli(
        "apply",
        "--auto-approve",
        "-w",
        ws,
        "--state-dir",
        state_dir,
        "-e",
        "staging",
        *extra,
        cwd=ws,
        env_extra={"AWS_ENDPOINT_URL": proxy.endpoint} if proxy else None,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_apply_rolls_back(aws, ws, tmp_path, run_cli, fault_proxy, sig):
    """Ctrl-C, or the SIGTERM of a cancelled CI job, mid-apply: the function is put back as it was."""
    state_dir = tmp_path / "state"
    check(_apply(run_cli, ws, state_dir))
    svc = ws / ".harness" / "service.yaml"
    svc.write_text(svc.read_text().replace(KEY1, KEY2))
    holder = {}
    # the signal right after the configuration update was answered (the next request waits)
    fault_proxy.after("UpdateFunctionConfiguration", 1, lambda: holder["p"].send_signal(sig))
    holder["p"] = p = run_cli.popen(
        "apply",
        "--auto-approve",
        "-w",
        ws,
        "--state-dir",
        state_dir,
        "-e",
        "staging",
        "--var",
        "memorySize=256",
        cwd=ws,
        env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint},
    )
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "rolling back" in err and "rolled back to what ran before" in err, err
    assert "Traceback" not in err
    conf = aws.lambda_config(FN)
    assert (conf["CodeSha256"], conf["MemorySize"]) == (SHA["1"], 128)
    assert aws.versions(FN) == ["1"] and aws.aliases(FN) == {"live": "1"}
    state = json.loads((state_dir / "staging" / "staging_use1.json").read_text())
    last = state["history"][-1]
    assert (last["status"], last["error"]) == ("rolled_back", "interrupted")
    assert state["functions"][FN]["version"] == "1"


def test_created_function_that_cannot_be_deleted_stays_in_state(aws, ws, tmp_path, run_cli, fault_proxy):
    state_dir = tmp_path / "state"
    fault_proxy.add_rule("PublishVersion", "fail", times=None, **NO_RETRY)
    fault_proxy.add_rule("DeleteFunction", "fail", times=None, **NO_RETRY)
    r = _apply(run_cli, ws, state_dir, proxy=fault_proxy)
    check(r, 1)
    assert "ROLLBACK FAILED" in r.stderr and "delete the function" in r.stderr
    assert FN in [f["FunctionName"] for f in aws.client("lambda").list_functions()["Functions"]]
    state = json.loads((state_dir / "staging" / "staging_use1.json").read_text())
    assert state["history"][-1]["status"] == "rollback_failed"
    rec = state["functions"][FN]  # not forgotten: plan, drift and the next apply know it
    assert rec["service"] == "greeter" and rec["code_sha256"] == SHA["1"]
    assert rec["rollback_failed"] == state["history"][-1]["id"]

    # the next apply, without faults, finishes the deployment
    fault_proxy.clear_rules()
    check(_apply(run_cli, ws, state_dir, proxy=fault_proxy))
    assert aws.versions(FN) == ["1"] and aws.aliases(FN) == {"live": "1"}
    state = json.loads((state_dir / "staging" / "staging_use1.json").read_text())
    assert state["functions"][FN]["version"] == "1" and "rollback_failed" not in state["functions"][FN]


def _three_services(ws):
    svc = (ws / ".harness" / "service.yaml").read_text()
    for n in (2, 3):
        (ws / ".harness" / f"service-{n}.yaml").write_text(
            svc.replace("name: greeter\n", f"name: greeter{n}\n").replace(
                "identifier: greeter\n", f"identifier: greeter{n}\n"
            )
        )
    return ["greeter-staging", "greeter2-staging", "greeter3-staging"]


def _plan(ws, state_dir):
    from reconciler.aws.client import Aws
    from reconciler.engine.context import Context
    from reconciler.engine.planner import make_plan
    from reconciler.workspace.render import Options

    ctx = Context(workspace=ws, state_dir=state_dir, options=Options(environments=["staging"]))
    aws = Aws()
    return make_plan(ctx, aws), aws


@pytest.mark.parametrize("simultaneous", [False, True])
def test_parallelism_applies_functions_concurrently(aws, ws, tmp_path, simultaneous):
    from reconciler.engine.apply import apply_plan

    names = _three_services(ws)
    if simultaneous:
        infra = ws / ".harness" / "infrastructure-staging.yaml"
        infra.write_text(
            infra.read_text().replace("allowSimultaneousDeployments: false", "allowSimultaneousDeployments: true")
        )
    state_dir = tmp_path / "state"
    plan, client = _plan(ws, state_dir)
    assert [fp.action for fp in plan.functions] == ["create"] * 3
    assert all(fp.desired["allow_simultaneous"] is simultaneous for fp in plan.functions)
    threads, lines = set(), []

    def log(msg):
        threads.add(threading.current_thread().name)
        lines.append(msg)

    results = apply_plan(plan, client, state_dir, log, parallelism=3)
    assert sorted(results["applied"]) == names
    assert all(t.startswith("apply") for t in threads) and len(threads) > 1, threads
    state = json.loads((state_dir / "staging" / "staging_use1.json").read_text())
    assert sorted(state["functions"]) == names
    for n in names:
        assert aws.versions(n) == ["1"] and aws.aliases(n) == {"live": "1"}
        assert state["functions"][n]["version"] == "1"
        assert [h["status"] for h in state["history"] if h["function"] == n] == ["succeeded"]
    assert not list((state_dir / "staging").glob("*.lock.info"))


def test_parallelism_one_failure_rolls_back_that_function_only(aws, ws, tmp_path, fault_proxy, monkeypatch):
    from reconciler.engine.apply import ApplyFailed, apply_plan

    names = _three_services(ws)
    state_dir = tmp_path / "state"
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    plan, client = _plan(ws, state_dir)
    fault_proxy.add_rule(
        lambda e: e["operation"] == "PublishVersion" and e["function"] == "greeter2-staging",
        "fail",
        times=None,
        **NO_RETRY,
    )
    with pytest.raises(ApplyFailed, match="greeter2-staging: .*injected fault.*rolled back"):
        apply_plan(plan, client, state_dir, lambda m: None, parallelism=3)
    fns = [f["FunctionName"] for f in aws.client("lambda").list_functions()["Functions"]]
    assert "greeter2-staging" not in fns
    state = json.loads((state_dir / "staging" / "staging_use1.json").read_text())
    assert [h["status"] for h in state["history"] if h["function"] == "greeter2-staging"] == ["rolled_back"]
    assert "greeter2-staging" not in state["functions"]
    for n in set(names) - {"greeter2-staging"}:  # started together: they finish
        if n in fns:
            assert state["functions"][n]["version"] == "1"
            assert [h["status"] for h in state["history"] if h["function"] == n] == ["succeeded"]
    assert not [h for h in state["history"] if h["status"] in ("in_progress", "rolling_back")]
