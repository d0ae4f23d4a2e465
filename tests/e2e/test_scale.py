"""Fleet scale: 200 functions planned and applied through the CLI with --parallelism,
refresh at the API floor (--stats), one S3 HEAD per distinct artifact."""

from __future__ import annotations

import json
import re

import pytest

from e2e_util import check
from harness.benchfleet import load_fleet

pytestmark = pytest.mark.e2e


fleet = load_fleet()


def _stats(stderr: str) -> dict:
    m = re.search(r"^stats: (\{.*\})$", stderr, re.M)
    assert m, stderr[-2000:]
    return json.loads(m.group(1))


@pytest.fixture
def bench_aws(aws):
    """The bench's AWS: its role and bucket with v1/v2 zips (S3 SHA-256 checksums)."""
    aws.create_role(fleet.ROLE)
    sha = {v: aws.put_zip(fleet.BUCKET, f"{v}.zip", fleet.make_zip(v), region=fleet.REGION) for v in ("v1", "v2")}
    return sha


def test_200_functions_mixed_create_update_noop_then_a_no_change_plan_at_the_api_floor(
    aws, bench_aws, run_cli, tmp_path
):
    ws, state = tmp_path / "ws", tmp_path / "state"
    common = ["-w", ws, "--state-dir", state, "--parallelism", "10"]

    # 40 functions exist and are recorded: fn0000-fn0019 will change code, fn0020-fn0039 not
    fleet.workspace(ws, 40)
    check(run_cli("apply", "--auto-approve", *common))

    # the fleet grows to 200: 20 updates, 20 no-ops, 160 creates
    fleet.workspace(ws, 200, changed=20)
    r = check(run_cli("plan", "--format", "json", *common))
    actions = {f["name"]: f["action"] for f in json.loads(r.stdout)["functions"]}
    assert len(actions) == 200
    want = {f"fn{i:04d}": "update" if i < 20 else "noop" if i < 40 else "create" for i in range(200)}
    assert actions == want
    # output order is deterministic (sorted), whatever order the threads finished in
    assert list(actions) == sorted(actions)

    r = check(run_cli("apply", "--auto-approve", "--stats", *common))
    assert "Apply complete: 180 applied" in r.stdout, r.stdout

    lam = aws.client("lambda", fleet.REGION)
    recorded = json.loads((state / "bench" / "bench.json").read_text())["functions"]
    assert len(recorded) == 200
    live = {f["FunctionName"]: f for p in lam.get_paginator("list_functions").paginate() for f in p["Functions"]}
    assert len(live) == 200
    for i in range(200):
        name = f"fn{i:04d}"
        want_sha = bench_aws["v2" if i < 20 else "v1"]
        assert live[name]["CodeSha256"] == want_sha, name
        rec = recorded[name]
        assert rec["code_sha256"] == want_sha, name
        want_version = "2" if i < 20 else "1"
        assert rec["version"] == want_version, name
        assert rec["aliases"]["live"]["version"] == want_version, name
        assert aws.aliases(name, fleet.REGION) == {"live": want_version}, name
        assert aws.versions(name, fleet.REGION) == [str(v) for v in range(1, int(want_version) + 1)], name

    # nothing left to do; the refresh costs at most 1.1 Lambda calls per function
    r = check(run_cli("plan", "--detailed-exitcode", "--stats", *common))
    stats = _stats(r.stderr)
    calls = stats["calls"]
    lam_calls = sum(n for op, n in calls.items() if op.startswith("lambda."))
    assert lam_calls / 200 <= 1.1, calls
    # the version each recorded alias points to: GetFunction(Qualifier=alias), in GetFunction's
    # own quota (100/s), not ListAliases in the control plane's (15/s)
    assert calls["lambda.GetFunction"] == 200, calls
    assert calls.get("lambda.ListAliases", 0) == 0, calls
    assert calls.get("lambda.ListVersionsByFunction", 0) == 0, calls  # published versions are trusted from state
    assert stats["quotas"]["control"]["calls"] <= 5 and stats["quotas"]["get-function"]["calls"] == 200, stats["quotas"]
    assert calls.get("s3.HeadObject") == 2, calls  # one per distinct artifact (v1.zip, v2.zip), not per function
    assert set(stats["phases"]) >= {"load/render", "refresh", "plan"}
    assert stats["peak_rss_mb"] > 0
    assert "Lambda calls per function" in r.stderr  # the human table too

    # drift reads at the floor too, and finds nothing
    r = check(run_cli("drift", "--stats", *common))
    calls = _stats(r.stderr)["calls"]
    assert sum(n for op, n in calls.items() if op.startswith("lambda.")) / 200 <= 1.1, calls


def test_one_s3_head_per_distinct_artifact_and_listing_instead_of_get_function(
    aws, bench_aws, run_cli, fault_proxy, tmp_path
):
    ws = tmp_path / "ws"
    fleet.workspace(ws, 20)  # 20 functions sharing s3://bench-artifacts/v1.zip
    r = check(
        run_cli(
            "plan",
            "-w",
            ws,
            "--state-dir",
            tmp_path / "state",
            "--stats",
            env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint},
        )
    )
    assert "20 to create" in r.stdout or r.stdout.count("fn00") >= 20, r.stdout
    assert fault_proxy.count("HeadObject") == 1
    assert fault_proxy.count("GetObject") == 0
    assert fault_proxy.count("ListFunctions") == 1
    assert fault_proxy.count("GetFunction") == 0
    assert _stats(r.stderr)["calls"]["s3.HeadObject"] == 1


def test_an_apply_is_four_lambda_calls_per_function_and_numbers_versions_from_state(aws, bench_aws, run_cli, tmp_path):
    """A code change to 20 functions: GetFunction of the recorded alias (the plan's read),
    UpdateFunctionCode,
    PublishVersion, UpdateAlias; no read-back, no waiter poll (moto answers Successful at
    once), no version listing (the state knows the last version). A version published
    outside reconciler, seen on an alias, makes the plan list that function's versions."""
    ws, state = tmp_path / "ws", tmp_path / "state"
    common = ["-w", ws, "--state-dir", state]
    fleet.workspace(ws, 20)
    check(run_cli("apply", "--auto-approve", *common))

    fleet.workspace(ws, 20, changed=20)
    r = check(run_cli("apply", "--auto-approve", "--stats", *common))
    calls = {op: n for op, n in _stats(r.stderr)["calls"].items() if op.startswith("lambda.")}
    assert calls == {
        "lambda.ListFunctions": 1,
        "lambda.GetFunction": 20,
        "lambda.UpdateFunctionCode": 20,
        "lambda.PublishVersion": 20,
        "lambda.UpdateAlias": 20,
    }, calls
    lam = aws.client("lambda", fleet.REGION)
    doc = json.loads((state / "bench" / "bench.json").read_text())
    for i in range(20):
        name = f"fn{i:04d}"
        assert aws.aliases(name, fleet.REGION) == {"live": "2"}, name
        assert lam.get_function_configuration(FunctionName=name)["CodeSha256"] == bench_aws["v2"]
        assert doc["functions"][name]["version"] == "2" and doc["functions"][name]["code_sha256"] == bench_aws["v2"]
        assert doc["functions"][name]["aliases"]["live"]["version"] == "2"
    # the state lock covered the apply: no per-function lock files, and no journal left
    assert sorted(p.name for p in (state / "bench").iterdir() if p.name.startswith("bench.json")) == [
        "bench.json",
        "bench.json.backup",
        "bench.json.lock",
    ]

    # fn0000 gets a version 3 by hand, and its alias moves to it
    lam.update_function_configuration(FunctionName="fn0000", Description="by hand")
    lam.publish_version(FunctionName="fn0000")
    lam.update_alias(FunctionName="fn0000", Name="live", FunctionVersion="3")

    fleet.workspace(ws, 20, changed=0)  # back to v1 everywhere
    r = check(run_cli("plan", "--format", "json", "--stats", *common))
    plan = {f["name"]: f for f in json.loads(r.stdout)["functions"]}
    assert plan["fn0000"]["next_version"] == "4"
    assert all(plan[f"fn{i:04d}"]["next_version"] == "3" for i in range(1, 20))
    assert _stats(r.stderr)["calls"].get("lambda.ListVersionsByFunction") == 1

    check(run_cli("apply", "--auto-approve", *common))
    doc = json.loads((state / "bench" / "bench.json").read_text())
    assert aws.aliases("fn0000", fleet.REGION) == {"live": "4"} and doc["functions"]["fn0000"]["version"] == "4"
    assert lam.get_function_configuration(FunctionName="fn0000")["Description"] == ""  # the hand change is undone
    for i in range(1, 20):
        assert aws.aliases(f"fn{i:04d}", fleet.REGION) == {"live": "3"}
        assert doc["functions"][f"fn{i:04d}"]["version"] == "3"
