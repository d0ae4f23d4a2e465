"""Releases within Lambda's API quotas, end to end: the CLI against moto_server behind a
proxy that throttles as Lambda does (tests/harness/quotaproxy.py, at a low rate so the
tests take seconds), or that throttles every other Lambda call."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from e2e_util import check
from harness.benchfleet import load_fleet
from harness.faultproxy import FaultProxy
from harness.quotaproxy import QuotaProxy

pytestmark = pytest.mark.e2e

N = 8
NO_RETRY = {"status": 400, "error_type": "InvalidParameterValueException"}


fleet = load_fleet()
NAMES = [f"fn{i:04d}" for i in range(N)]


def _stats(stderr: str) -> dict:
    m = re.search(r"^stats: (\{.*\})$", stderr, re.M)
    assert m, stderr[-2000:]
    return json.loads(m.group(1))


@pytest.fixture
def seeded(aws, run_cli, tmp_path):
    """N functions with alias live → 1 deployed from v1 (straight to moto); the workspace
    then asks for v2 and 256 MB for all of them. Returns (common args, SHA-256 by artifact)."""
    aws.create_role(fleet.ROLE)
    sha = {v: aws.put_zip(fleet.BUCKET, f"{v}.zip", fleet.make_zip(v), region=fleet.REGION) for v in ("v1", "v2")}
    ws, state = tmp_path / "ws", tmp_path / "state"
    common = ["-w", ws, "--state-dir", state, "--parallelism", "4"]
    fleet.workspace(ws, N)
    check(run_cli("apply", "--auto-approve", *common))
    fleet.workspace(ws, N, changed=N)
    fn = json.loads((ws / "fn.json").read_text())
    (ws / "fn.json").write_text(json.dumps({**fn, "memorySize": 256}))
    return common, sha, state


def _live(aws, name: str) -> tuple:
    conf = aws.lambda_config(name, fleet.REGION)
    return conf["CodeSha256"], conf["MemorySize"], aws.aliases(name, fleet.REGION), aws.versions(name, fleet.REGION)


def test_a_release_throttled_on_every_other_call_succeeds(aws, seeded, run_cli, moto_server):
    common, sha, state = seeded
    flip = itertools.count()
    # every other call refused whatever the rate: the limiter slows down to its minimum
    # (1/s), so three functions keep the test short
    picked = NAMES[:3]
    with FaultProxy(moto_server.endpoint) as proxy:
        proxy.add_rule(lambda e: e["service"] == "lambda" and next(flip) % 2 == 0, "throttle", times=None)
        r = check(
            run_cli(
                "apply",
                "--auto-approve",
                "--stats",
                *common,
                *[a for n in picked for a in ("-s", n)],
                env_extra={"AWS_ENDPOINT_URL": proxy.endpoint},
            )
        )
        throttled = sum(1 for e in proxy.entries() if e["fault"] == "throttle")
    assert f"Apply complete: {len(picked)} applied" in r.stdout
    assert throttled >= len(picked) * 3
    for name in NAMES:
        assert _live(aws, name) == (
            (sha["v2"], 256, {"live": "2"}, ["1", "2"]) if name in picked else (sha["v1"], 128, {"live": "1"}, ["1"])
        ), name
    recorded = json.loads((state / "bench" / "bench.json").read_text())["functions"]
    assert all(recorded[n]["version"] == "2" and recorded[n]["code_sha256"] == sha["v2"] for n in picked)
    # --stats: the throttles, by quota class, as the proxy sent them
    q = _stats(r.stderr)["quotas"]
    assert sum(c["throttled"] for c in q.values()) == throttled
    assert "Lambda quotas" in r.stderr


def test_a_release_under_the_quota_succeeds_and_stats_show_throttles_and_waits(aws, seeded, run_cli, moto_server):
    common, sha, _ = seeded
    # a quarter of Lambda's rates: the limiter starts at the documented rate, is throttled, slows down
    with QuotaProxy(moto_server.endpoint, rates={"control": 4, "get-function": 25}) as proxy:
        r = check(
            run_cli("apply", "--auto-approve", "--stats", *common, env_extra={"AWS_ENDPOINT_URL": proxy.endpoint})
        )
        throttles, calls = proxy.throttles(), proxy.calls()
    assert f"Apply complete: {N} applied" in r.stdout
    for name in NAMES:
        assert _live(aws, name) == (sha["v2"], 256, {"live": "2"}, ["1", "2"]), name
    s = _stats(r.stderr)
    ctl = s["quotas"]["control"]
    assert throttles.get("control", 0) > 0 and ctl["throttled"] == throttles["control"]
    assert ctl["calls"] == calls["control"] + throttles["control"]  # every request sent, retries included
    assert ctl["waited_s"] > 0
    assert ctl["rate"] == 15 and s["floor_s"] == max(q["floor_s"] for q in s["quotas"].values())
    assert re.search(r"control\s+15\s+\d+\s+[1-9]\d*\s+\d+\.\d+s", r.stderr), r.stderr


def test_a_rollback_under_throttling_restores_every_function_exactly(aws, seeded, run_cli, moto_server):
    common, sha, state = seeded
    before = {n: _live(aws, n) for n in NAMES}
    with QuotaProxy(moto_server.endpoint, rates={"control": 4, "get-function": 25}) as proxy:
        proxy.add_rule("PublishVersion", "fail", times=None, **NO_RETRY)  # every release fails at publish
        r = check(run_cli("apply", "--auto-approve", *common, env_extra={"AWS_ENDPOINT_URL": proxy.endpoint}), 1)
        assert proxy.throttles().get("control", 0) > 0
    for name in NAMES:
        assert _live(aws, name) == before[name] == (sha["v1"], 128, {"live": "1"}, ["1"]), name
    history = json.loads((state / "bench" / "bench.json").read_text())["history"]
    started = {h["function"] for h in history if h.get("operation") == "apply" and h["status"] != "succeeded"}
    assert started and all(
        h["status"] == "rolled_back" for h in history if h["function"] in started and h["status"] != "succeeded"
    )
    assert "ROLLBACK FAILED" not in r.stderr and "internal error" not in r.stderr
    assert re.search(r"Apply failed: 0 applied, \d+ failed \(.*\)", r.stderr), r.stderr


def test_a_failure_in_one_function_of_a_parallel_apply_ends_in_the_normal_report(aws, seeded, run_cli, moto_server):
    common, sha, state = seeded
    with QuotaProxy(moto_server.endpoint, rates={"control": 4, "get-function": 25}) as proxy:
        proxy.add_rule(
            lambda e: e["operation"] == "PublishVersion" and e["function"] == "fn0000", "fail", times=None, **NO_RETRY
        )
        r = check(run_cli("apply", "--auto-approve", *common, env_extra={"AWS_ENDPOINT_URL": proxy.endpoint}), 1)
    assert "CancelledError" not in r.stderr and "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert re.search(r"^error: fn0000: .*injected fault.*rolled back", r.stderr, re.M), r.stderr
    m = re.search(r"^Apply failed: (\d+) applied, 1 failed \(fn0000\), (\d+) not started\.$", r.stderr, re.M)
    assert m, r.stderr
    applied, not_started = int(m.group(1)), int(m.group(2))
    assert applied + 1 + not_started == N and not_started > 0
    recorded = json.loads((state / "bench" / "bench.json").read_text())
    touched = {
        h["function"]
        for h in recorded["history"]
        if h.get("operation") == "apply"
        and h["status"] != "succeeded"
        or h["status"] == "succeeded"
        and recorded["functions"][h["function"]]["version"] == "2"
    }
    assert _live(aws, "fn0000") == (sha["v1"], 128, {"live": "1"}, ["1"])
    done = [n for n in NAMES if _live(aws, n)[0] == sha["v2"]]
    assert len(done) == applied and "fn0000" not in done
    for n in set(NAMES) - set(done) - {"fn0000"}:  # never started: untouched, nothing recorded
        assert _live(aws, n) == (sha["v1"], 128, {"live": "1"}, ["1"]), n
        assert n not in touched


def test_plan_reads_alias_versions_in_the_getfunction_quota_and_stays_exact(aws, run_cli, moto_server, tmp_path):
    aws.create_role(fleet.ROLE)
    for v in ("v1", "v2"):
        aws.put_zip(fleet.BUCKET, f"{v}.zip", fleet.make_zip(v), region=fleet.REGION)
    ws, state = tmp_path / "ws", tmp_path / "state"
    common = ["-w", ws, "--state-dir", state]
    n = 12  # a listed region (at least 10 functions)
    fleet.workspace(ws, n)
    check(run_cli("apply", "--auto-approve", *common))
    with FaultProxy(moto_server.endpoint) as proxy:
        via = {"AWS_ENDPOINT_URL": proxy.endpoint}
        r = check(run_cli("plan", "--detailed-exitcode", "--stats", *common, env_extra=via))
        ops = proxy.operations("lambda")
        assert ops.count("GetFunction") == n and "ListAliases" not in ops and "GetAlias" not in ops, ops
        assert all(e["query"].get("Qualifier") == ["live"] for e in proxy.entries() if e["operation"] == "GetFunction")
        assert _stats(r.stderr)["quotas"]["get-function"]["calls"] == n

        # an alias moved by hand: that function's aliases are read in full, the move is shown
        lam = aws.client("lambda", fleet.REGION)
        lam.update_function_configuration(FunctionName="fn0003", Description="by hand")
        v2 = lam.publish_version(FunctionName="fn0003")["Version"]
        lam.update_alias(FunctionName="fn0003", Name="live", FunctionVersion=v2)
        # a weight desired for every alias: each plan change shows Lambda's exact old value
        (ws / "alias.json").write_text(
            json.dumps({"name": "live", "routingConfig": {"additionalVersionWeights": {"1": 0.5}}})
        )
        proxy.clear()
        r = check(run_cli("plan", "--format", "json", *common, env_extra=via), 0)
        plan = {f["name"]: f for f in json.loads(r.stdout)["functions"]}
        listed = [e["function"] for e in proxy.entries() if e["operation"] == "ListAliases"]
        assert sorted(set(listed)) == [f"fn{i:04d}" for i in range(n)]  # every alias read in full
    moved = [c for c in plan["fn0003"]["changes"] if c["kind"] == "alias" and c["path"] == "live"]
    assert moved and moved[0]["old"] == v2, plan["fn0003"]["changes"]
    weights = [c for c in plan["fn0000"]["changes"] if c["kind"] == "alias" and c["path"] == "live.weights"]
    assert weights and weights[0]["old"] == {} and weights[0]["new"] == {"1": 0.5}, plan["fn0000"]["changes"]


def test_drift_still_sees_a_hand_change_of_alias_weights_alone(aws, run_cli, moto_server, tmp_path):
    aws.create_role(fleet.ROLE)
    aws.put_zip(fleet.BUCKET, "v1.zip", fleet.make_zip("v1"), region=fleet.REGION)
    ws, state = tmp_path / "ws", tmp_path / "state"
    fleet.workspace(ws, 12)
    check(run_cli("apply", "--auto-approve", "-w", ws, "--state-dir", state))
    lam = aws.client("lambda", fleet.REGION)
    lam.update_function_configuration(FunctionName="fn0005", Description="x")
    v2 = lam.publish_version(FunctionName="fn0005")["Version"]
    lam.update_alias(
        FunctionName="fn0005", Name="live", FunctionVersion="1", RoutingConfig={"AdditionalVersionWeights": {v2: 0.2}}
    )
    r = check(run_cli("drift", "--format", "json", "--state-dir", state), 2)
    fns = {f["name"]: f for f in json.loads(r.stdout)["functions"]}
    # the alias still points at version 1: only its weights changed, and drift says which
    assert [c for c in fns["fn0005"]["changes"] if c["kind"] == "alias"] == [
        {"kind": "alias", "path": "live.weights", "old": {}, "new": {v2: 0.2}, "action": "update"}
    ], fns["fn0005"]
