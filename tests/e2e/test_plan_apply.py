"""End-to-end: the real CLI in a subprocess against moto_server, on samples/hello-world.

Every test asserts what Lambda holds afterwards (through boto3) and what the state file
records, not only that a command ran.
"""

from __future__ import annotations

import json

import pytest
from harness.localstack import on_both_emulators
from e2e_util import HELLO_DEF, HELLO_FN, HELLO_STATE, check, hello  # noqa: F401 (hello is a fixture)

pytestmark = pytest.mark.e2e

SECRET = "s3cr3t-Value-4711"


def _no_mutations(proxy) -> None:
    assert proxy.log, "the CLI did not go through the fault proxy"
    assert proxy.mutating_requests() == [], [e["operation"] for e in proxy.mutating_requests()]


# ---------------------------------------------------------------- create, then nothing to do


@on_both_emulators
def test_hello_world_create_apply_and_idempotent_reapply(hello):
    # plan: a create, with the code SHA-256, where the code comes from and the version
    r = hello.cli("plan", "--detailed-exitcode", code=2)
    assert f"+ {HELLO_FN}" in r.stdout and "will be created" in r.stdout
    assert hello.sha1 in r.stdout
    assert "s3://mylambda/workloadNameValue" in r.stdout
    assert "version 1" in r.stdout
    assert "+ MemorySize: 128" in r.stdout and '+ Runtime: "nodejs14.x"' in r.stdout
    assert "Plan: 1 to create, 0 to update, 0 unchanged." in r.stdout
    assert not (hello.state_dir / "aws" / "awslambda.json").exists(), "plan wrote a state file"

    # --format json: valid, summary counts, per-function changes
    doc = json.loads(hello.cli("plan", "--format", "json").stdout)
    assert doc["summary"]["create"] == 1 and doc["summary"]["update"] == 0 and doc["summary"]["noop"] == 0
    (fn,) = doc["functions"]
    assert fn["name"] == HELLO_FN and fn["action"] == "create" and fn["next_version"] == "1"
    by_path = {(c["kind"], c["path"]): c for c in fn["changes"]}
    assert by_path[("code", "CodeSha256")]["new"] == hello.sha1
    assert by_path[("config", "MemorySize")]["new"] == 128
    assert by_path[("config", "Handler")]["new"] == "handler.hello"
    assert fn["code"]["source"]["uri"] == "s3://mylambda/workloadNameValue"

    # --format markdown: title, one summary line, a table, collapsed details
    md = hello.cli("plan", "--format", "markdown").stdout
    lines = md.splitlines()
    assert lines[0].startswith("## ") and "plan" in lines[0]
    assert sum("1 to create, 0 to update, 0 unchanged" in line for line in lines) == 1
    assert any(line.startswith("|---") for line in lines)
    assert any(f"`{HELLO_FN}`" in line and "create" in line for line in lines if line.startswith("|"))
    assert "<details>" in md and "</details>" in md and hello.sha1 in md

    # apply: the function as defined, with exactly version 1
    r = hello.cli("apply", "--auto-approve")
    assert "Apply complete: 1 applied" in r.stdout
    conf = hello.config(HELLO_FN)
    assert conf["Runtime"] == "nodejs14.x"
    assert conf["Handler"] == "handler.hello"
    assert conf["Role"] == "arn:aws:iam::123456789012:role/hello-world-lambda-role"
    assert conf["CodeSha256"] == hello.sha1
    assert hello.versions(HELLO_FN) == ["1"]
    published = hello.lam().get_function_configuration(FunctionName=HELLO_FN, Qualifier="1")
    assert published["CodeSha256"] == hello.sha1

    state = hello.state()
    assert state["format_version"] == 1 and state["lineage"] and state["serial"] > 0
    assert (state["environment"], state["infrastructure"]) == HELLO_STATE
    rec = state["functions"][HELLO_FN]
    assert rec["version"] == "1" and rec["code_sha256"] == hello.sha1 and rec["service"] == "helloworld"
    assert rec["code_source"]["uri"] == "s3://mylambda/workloadNameValue"
    (h,) = state["history"]
    assert (h["operation"], h["status"], h["version"]) == ("apply", "succeeded", "1")
    assert h["previous"] == {"exists": False}

    # again: nothing to do, nothing published, the state untouched
    r = hello.cli("apply", "--auto-approve")
    assert "No changes." in r.stdout
    assert hello.versions(HELLO_FN) == ["1"]
    assert hello.state()["serial"] == state["serial"]
    hello.cli("plan", "--detailed-exitcode", code=0)


# ---------------------------------------------------------------- code change, history, state, rollback


@on_both_emulators
def test_code_change_publishes_version_2_then_history_state_and_rollback(hello):
    hello.cli("apply", "--auto-approve")
    sha2 = hello.put("hello-v2.zip", "module.exports.hello = async () => ({statusCode: 200, body: 'v2'});\n")

    r = hello.cli("plan", "--var", "workload_name=hello-v2.zip", "--detailed-exitcode", code=2)
    assert f'CodeSha256: "{hello.sha1}" → "{sha2}"' in r.stdout
    assert "s3://mylambda/hello-v2.zip" in r.stdout
    assert "version 2" in r.stdout
    assert "MemorySize" not in r.stdout, "a code-only change planned configuration changes"

    hello.cli("apply", "--auto-approve", "--var", "workload_name=hello-v2.zip")
    assert hello.versions(HELLO_FN) == ["1", "2"]
    assert hello.config(HELLO_FN)["CodeSha256"] == sha2
    assert hello.lam().get_function_configuration(FunctionName=HELLO_FN, Qualifier="1")["CodeSha256"] == hello.sha1
    assert hello.lam().get_function_configuration(FunctionName=HELLO_FN, Qualifier="2")["CodeSha256"] == sha2
    state = hello.state()
    assert state["functions"][HELLO_FN]["version"] == "2"
    assert state["functions"][HELLO_FN]["code_sha256"] == sha2
    assert [h["version"] for h in state["history"]] == ["1", "2"]
    assert state["history"][1]["previous"]["version"] == "1"
    assert state["history"][1]["previous"]["code_sha256"] == hello.sha1

    # history, text and json
    text = hello.cli("history").stdout
    rows = [line for line in text.splitlines() if HELLO_FN in line]
    assert len(rows) == 2 and all("succeeded" in row and "apply" in row for row in rows)
    assert hello.sha1 in rows[0] and sha2 in rows[1]
    hist = json.loads(hello.cli("history", "--format", "json").stdout)
    assert [(x["function"], x["operation"], x["version"], x["status"]) for x in hist] == [
        (HELLO_FN, "apply", "1", "succeeded"),
        (HELLO_FN, "apply", "2", "succeeded"),
    ]
    assert hist[1]["code_sha256"] == sha2

    # state list / state show, text and json
    listing = hello.cli("state", "list").stdout
    (row,) = [line for line in listing.splitlines() if HELLO_FN in line]
    assert "aws/awslambda" in row and "helloworld" in row and sha2 in row and " 2 " in f" {row} "
    shown = hello.cli("state", "show", HELLO_FN).stdout
    assert "version: 2" in shown and f"code_sha256: {sha2}" in shown
    doc = json.loads(hello.cli("state", "show", HELLO_FN, "--format", "json").stdout)
    assert doc["function"] == HELLO_FN and doc["version"] == "2" and doc["code_sha256"] == sha2
    assert doc["environment"] == "aws" and doc["infrastructure"] == "awslambda"
    assert doc["configuration"]["Handler"] == "handler.hello"

    # rollback: $LATEST back to version 1's code, recorded in history
    r = hello.cli("rollback", "--auto-approve")
    assert "Rollback complete" in r.stdout
    assert hello.config(HELLO_FN)["CodeSha256"] == hello.sha1
    assert hello.versions(HELLO_FN) == ["1", "2"], "a rollback published a version"
    state = hello.state()
    assert state["functions"][HELLO_FN]["version"] == "1"
    assert state["functions"][HELLO_FN]["code_sha256"] == hello.sha1
    last = state["history"][-1]
    assert (last["operation"], last["status"], last["version"]) == ("rollback", "succeeded", "1")


def test_rollback_to_a_named_version(hello):
    hello.cli("apply", "--auto-approve")
    sha2 = hello.put("hello-v2.zip", "// v2\n")
    hello.cli("apply", "--auto-approve", "--var", "workload_name=hello-v2.zip")
    assert hello.config(HELLO_FN)["CodeSha256"] == sha2
    r = hello.cli("rollback", "--to-version", "1", "--auto-approve")
    assert "version 2 → 1" in r.stdout
    assert hello.config(HELLO_FN)["CodeSha256"] == hello.sha1
    assert hello.versions(HELLO_FN) == ["1", "2"]
    state = hello.state()
    assert state["functions"][HELLO_FN]["version"] == "1"
    assert state["functions"][HELLO_FN]["code_sha256"] == hello.sha1
    last = state["history"][-1]
    assert (last["operation"], last["status"], last["version"]) == ("rollback", "succeeded", "1")


# ---------------------------------------------------------------- configuration change and masking


def test_config_change_masks_sensitive_environment_values_unless_asked(hello):
    hello.cli("apply", "--auto-approve")

    def change(d):
        d["memorySize"] = 256
        d["environment"] = {"variables": {"API_TOKEN": SECRET, "LOG_LEVEL": "debug"}}

    hello.edit_json(HELLO_DEF, change)

    r = hello.cli("plan", "--detailed-exitcode", code=2)
    assert "MemorySize: 128 → 256" in r.stdout
    assert 'Environment.Variables.LOG_LEVEL: "debug"' in r.stdout, "a value that is not sensitive is shown"
    assert "version 2" in r.stdout and "CodeSha256" not in r.stdout
    assert "Environment.Variables.API_TOKEN" in r.stdout and "(sensitive)" in r.stdout
    assert SECRET not in r.stdout + r.stderr

    j = hello.cli("plan", "--format", "json")
    assert SECRET not in j.stdout + j.stderr
    doc = json.loads(j.stdout)
    changes = {c["path"]: c for c in doc["functions"][0]["changes"]}
    assert (changes["MemorySize"]["old"], changes["MemorySize"]["new"]) == (128, 256)
    assert changes["Environment.Variables.API_TOKEN"]["new"] == "(sensitive)"

    md = hello.cli("plan", "--format", "markdown")
    assert SECRET not in md.stdout + md.stderr and "(sensitive)" in md.stdout

    shown = hello.cli("plan", "--show-values")
    assert SECRET in shown.stdout

    r = hello.cli("apply", "--auto-approve")
    assert SECRET not in r.stdout + r.stderr
    conf = hello.config(HELLO_FN)
    assert conf["MemorySize"] == 256
    assert conf["Environment"]["Variables"] == {"API_TOKEN": SECRET, "LOG_LEVEL": "debug"}
    assert conf["CodeSha256"] == hello.sha1
    assert hello.versions(HELLO_FN) == ["1", "2"], "a configuration change publishes exactly one version"
    assert hello.lam().get_function_configuration(FunctionName=HELLO_FN, Qualifier="2")["MemorySize"] == 256
    rec = hello.state()["functions"][HELLO_FN]
    assert rec["version"] == "2" and rec["configuration"]["MemorySize"] == 256

    # the state keeps a keyed fingerprint of a sensitive value, not the value: `state show`
    # masks it, even when asked to show values, and shows the others
    assert SECRET not in (hello.state_dir / "aws" / "awslambda.json").read_text()
    shown = hello.cli("state", "show", HELLO_FN, "--format", "json").stdout
    assert SECRET not in shown
    assert json.loads(shown)["configuration"]["Environment"]["Variables"] == {
        "API_TOKEN": "(sensitive)",
        "LOG_LEVEL": "debug",
    }
    assert SECRET not in hello.cli("state", "show", HELLO_FN, "--show-values").stdout
    assert hello.cli("plan", "--detailed-exitcode").returncode == 0, "a sealed value that did not change is no change"


# ---------------------------------------------------------------- tags


def test_tag_change_applies_without_publishing(hello):
    hello.edit_json(
        HELLO_DEF,
        lambda d: d.update(tags={"team": "payments", "owner": "ops"}, environment={"variables": {"API_TOKEN": SECRET}}),
    )
    r = hello.cli("apply", "--auto-approve")
    # the create plan that apply prints masks the values too
    assert "(sensitive)" in r.stdout and SECRET not in r.stdout + r.stderr
    assert 'Tags.team: (none) → "payments"' in r.stdout
    owner = {
        "reconciler:service": "helloworld",
        "reconciler:environment": "aws",
        "reconciler:infrastructure": "awslambda",
    }
    assert hello.tags(HELLO_FN) == {"team": "payments", "owner": "ops", **owner}
    assert hello.config(HELLO_FN)["Environment"]["Variables"] == {"API_TOKEN": SECRET}
    assert hello.versions(HELLO_FN) == ["1"]

    hello.edit_json(HELLO_DEF, lambda d: d.update(tags={"team": "billing", "owner": "ops"}))
    r = hello.cli("plan", "--detailed-exitcode", code=2)
    assert 'Tags.team: "payments" → "billing"' in r.stdout
    assert "publish" not in r.stdout and "owner" not in r.stdout

    hello.cli("apply", "--auto-approve")
    assert hello.tags(HELLO_FN) == {"team": "billing", "owner": "ops", **owner}
    assert hello.versions(HELLO_FN) == ["1"], "tags are not versioned: nothing may be published"
    rec = hello.state()["functions"][HELLO_FN]
    assert rec["tags"] == {"team": "billing", "owner": "ops", **owner} and rec["version"] == "1"
    assert hello.state()["history"][-1]["status"] == "succeeded"


# ---------------------------------------------------------------- saved plans


def test_saved_plan_applied_exactly_and_refused_when_stale(hello):
    plan_file = hello.ws / "p.plan"
    hello.cli("plan", "--out", plan_file)
    assert plan_file.exists()
    # the workspace moves on after the plan: the saved plan is still what gets applied
    hello.edit_json(HELLO_DEF, lambda d: d.update(memorySize=512))

    r = hello.cli("apply", plan_file)  # no --auto-approve, no terminal: a saved plan needs neither
    assert "Apply complete: 1 applied" in r.stdout
    conf = hello.config(HELLO_FN)
    assert conf["MemorySize"] == 128 and conf["CodeSha256"] == hello.sha1
    assert hello.versions(HELLO_FN) == ["1"]
    serial = hello.state()["serial"]

    # the same plan again: the state moved on since it was made
    r = hello.cli("apply", plan_file, code=1)
    assert "stale" in r.stderr
    assert hello.versions(HELLO_FN) == ["1"] and hello.state()["serial"] == serial

    # a plan made now, then a change by hand in Lambda (a tag) before it is applied
    plan2 = hello.ws / "p2.plan"
    hello.cli("plan", "--out", plan2)  # MemorySize 128 → 512
    lam = hello.lam()
    lam.tag_resource(Resource=hello.config(HELLO_FN)["FunctionArn"], Tags={"changed-by": "hand"})
    _refused_as_stale(hello, plan2, serial)


def _refused_as_stale(hello, plan_file, serial) -> None:
    before = hello.config(HELLO_FN)
    r = hello.cli("apply", plan_file, code=1)
    assert "stale" in r.stderr and HELLO_FN in r.stderr
    after = hello.config(HELLO_FN)
    for key in ("MemorySize", "CodeSha256", "Environment", "Timeout"):
        assert after.get(key) == before.get(key), key
    assert hello.versions(HELLO_FN) == ["1"]
    assert hello.state()["serial"] == serial


def test_saved_plan_refused_after_hand_configuration_change(hello):
    hello.cli("apply", "--auto-approve")
    serial = hello.state()["serial"]
    hello.edit_json(HELLO_DEF, lambda d: d.update(memorySize=512))
    plan_file = hello.ws / "p.plan"
    hello.cli("plan", "--out", plan_file)
    hello.lam().update_function_configuration(FunctionName=HELLO_FN, MemorySize=1024)
    _refused_as_stale(hello, plan_file, serial)
    assert hello.config(HELLO_FN)["MemorySize"] == 1024


# ---------------------------------------------------------------- confirmation


def test_apply_asks_for_confirmation(hello):
    # no terminal and no --auto-approve: refused, nothing created
    r = hello.cli("apply", code=1)
    assert "--auto-approve" in r.stderr and "confirm" in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1
    assert hello.lam().list_functions()["Functions"] == []
    assert not (hello.state_dir / "aws" / "awslambda.json").exists()

    # on a terminal, answering anything but "yes" cancels
    code, out, err = hello.cli_pty("apply", answer="no")
    assert code == 1, (out, err)
    assert hello.lam().list_functions()["Functions"] == []

    # answering "yes" applies
    code, out, err = hello.cli_pty("apply", answer="yes")
    assert code == 0, (out, err)
    assert "Apply complete: 1 applied" in out
    assert hello.config(HELLO_FN)["CodeSha256"] == hello.sha1
    assert hello.versions(HELLO_FN) == ["1"]
    assert hello.state()["functions"][HELLO_FN]["version"] == "1"


# ---------------------------------------------------------------- plan is read-only


def test_plan_makes_no_mutating_call(hello, fault_proxy):
    via_proxy = {"AWS_ENDPOINT_URL": fault_proxy.endpoint}

    r = hello.cli("plan", "--detailed-exitcode", code=2, env_extra=via_proxy)  # a create
    assert "will be created" in r.stdout
    _no_mutations(fault_proxy)
    assert "GetFunction" in fault_proxy.operations()
    assert hello.lam().list_functions()["Functions"] == []

    hello.cli("apply", "--auto-approve")  # straight to moto
    hello.put("hello-v2.zip", "// v2\n")
    fault_proxy.clear()
    r = hello.cli("plan", "--var", "workload_name=hello-v2.zip", "--detailed-exitcode", code=2, env_extra=via_proxy)
    assert "will be updated" in r.stdout
    _no_mutations(fault_proxy)

    fault_proxy.clear()
    r = hello.cli("plan", "--detailed-exitcode", code=0, env_extra=via_proxy)  # nothing to do
    assert "No changes." in r.stdout
    _no_mutations(fault_proxy)
    assert hello.versions(HELLO_FN) == ["1"]
    assert hello.config(HELLO_FN)["CodeSha256"] == hello.sha1


def test_missing_s3_artifact_is_one_clear_error(aws, run_cli, workspace, tmp_path, fault_proxy):
    from e2e_util import HELLO_REGION, Hello

    ws = workspace("hello-world")
    aws.create_role("hello-world-lambda-role")
    aws.ensure_bucket("mylambda", HELLO_REGION)  # the bucket exists, the key does not
    h = Hello(run_cli, aws, ws, tmp_path / "state", HELLO_REGION)
    r = h.cli("plan", "--detailed-exitcode", code=1, env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "s3://mylambda/workloadNameValue" in lines[0] and lines[0].startswith("error:")
    assert r.stdout == ""
    _no_mutations(fault_proxy)
    assert h.lam().list_functions()["Functions"] == []


# ---------------------------------------------------------------- demo


def test_demo_runs_the_whole_story(run_cli, tmp_path):
    env = {k: None for k in run_cli.env if k.startswith("AWS_")}
    r = run_cli("demo", cwd=tmp_path, env_extra=env, timeout=180)
    check(r, 0)
    out = r.stdout.lower()
    assert "drift" in out and "rollback" in out.replace("roll back", "rollback")
    assert "rollback complete" in out
