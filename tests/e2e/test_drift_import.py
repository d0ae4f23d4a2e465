"""Drift, refresh, import and state rm against a real moto_server, through the CLI."""

from __future__ import annotations

import json

import pytest
from harness.localstack import on_both_emulators

pytestmark = pytest.mark.e2e

FN = "greeter-staging"
SECRET = "Hello from staging"  # GREETING's value: shown only where GREETING changes (it is not sensitive)


@pytest.fixture
def deployed(aws, run_cli, workspace, tmp_path):
    """two-environments applied to staging: one function with alias `live` on version 1."""
    ws = workspace("two-environments")
    aws.create_role("greeter-lambda-role")
    aws.put_zip(
        "reconciler-artifacts",
        "greeter/greeter-1.0.0.zip",
        aws.make_zip({"handler.py": "def handler(e, c):\n    return 1\n"}),
    )
    state = tmp_path / "state"
    r = run_cli("apply", "--auto-approve", "-e", "staging", "-w", str(ws), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    return ws, state


def drift(run_cli, state, *extra):
    return run_cli("drift", "--state-dir", str(state), *extra)


def state_json(state):
    return json.loads((state / "staging" / "staging_use1.json").read_text())


@on_both_emulators
def test_no_drift_right_after_apply(deployed, run_cli):
    """A function just applied is in sync: drift exits 0 in every format."""
    _, state = deployed
    for fmt in ("text", "json", "markdown"):
        r = drift(run_cli, state, "--format", fmt)
        assert r.returncode == 0, (fmt, r.stdout, r.stderr)
    assert json.loads(drift(run_cli, state, "--format", "json").stdout)["summary"] == {
        "checked": 1,
        "drifted": 0,
        "deleted": 0,
    }


@pytest.mark.parametrize(
    "change, expect",
    [
        ("memory", "MemorySize"),
        ("env", 'Environment.Variables.GREETING_TOKEN: "(sensitive)"'),
        ("env-plain", 'Environment.Variables.GREETING: "Hello from staging" → "plain-value"'),
        ("code", "CodeSha256"),
        ("alias", "live"),
        ("tag", "Tags.service"),
        ("version", "published outside reconciler"),
    ],
)
@on_both_emulators
def test_each_hand_change_is_reported(deployed, aws, run_cli, change, expect):
    """Each kind of hand change shows in text, JSON and Markdown, exits 2, and changes nothing."""
    _, state = deployed
    lam = aws.client("lambda")
    arn = lam.get_function(FunctionName=FN)["Configuration"]["FunctionArn"]

    def idle():  # a hand update is InProgress for a moment on LocalStack (at once over on moto)
        lam.get_waiter("function_updated_v2").wait(FunctionName=FN, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})

    if change == "memory":
        lam.update_function_configuration(FunctionName=FN, MemorySize=1024)
    elif change == "env":  # a sensitive one (by its name): masked
        env = lam.get_function_configuration(FunctionName=FN)["Environment"]["Variables"]
        lam.update_function_configuration(
            FunctionName=FN, Environment={"Variables": {**env, "GREETING_TOKEN": "hacked-value"}}
        )
    elif change == "env-plain":  # not sensitive: shown, like Terraform
        env = lam.get_function_configuration(FunctionName=FN)["Environment"]["Variables"]
        lam.update_function_configuration(
            FunctionName=FN, Environment={"Variables": {**env, "GREETING": "plain-value"}}
        )
    elif change == "code":
        lam.update_function_code(FunctionName=FN, ZipFile=aws.make_zip({"handler.py": "# by hand\n"}))
    elif change == "alias":
        lam.update_function_configuration(FunctionName=FN, Description="by hand")
        idle()
        v2 = lam.publish_version(FunctionName=FN)["Version"]
        lam.update_alias(FunctionName=FN, Name="live", FunctionVersion=v2)
    elif change == "tag":
        lam.tag_resource(Resource=arn, Tags={"service": "someone-else"})
    elif change == "version":
        lam.update_function_configuration(FunctionName=FN, Description="by hand")
        idle()
        lam.publish_version(FunctionName=FN)
    idle()
    before_state = state_json(state)
    before_live = lam.get_function(FunctionName=FN)["Configuration"]

    text = drift(run_cli, state)
    assert text.returncode == 2, text.stderr
    assert expect in text.stdout
    js = drift(run_cli, state, "--format", "json")
    assert js.returncode == 2
    doc = json.loads(js.stdout)
    assert doc["summary"]["drifted"] == 1
    assert doc["functions"][0]["status"] == "drifted"
    md = drift(run_cli, state, "--format", "markdown")
    assert md.returncode == 2 and "<details>" in md.stdout and FN in md.stdout
    for out in (text.stdout, js.stdout, md.stdout):
        assert "hacked-value" not in out
        assert (SECRET in out) == (change == "env-plain"), out

    assert state_json(state) == before_state
    assert lam.get_function(FunctionName=FN)["Configuration"] == before_live


@on_both_emulators
def test_deleted_function_is_reported(deployed, aws, run_cli):
    """A function deleted by hand is drift of its own kind."""
    _, state = deployed
    aws.client("lambda").delete_function(FunctionName=FN)
    r = drift(run_cli, state, "--format", "json")
    assert r.returncode == 2
    f = json.loads(r.stdout)["functions"][0]
    assert f["status"] == "deleted"


def test_plan_shows_drift_apart_and_show_values(deployed, aws, run_cli):
    """plan reports a hand change under 'changed outside reconciler', apart from the plan; sensitive values masked unless --show-values."""
    ws, state = deployed
    lam = aws.client("lambda")
    env = lam.get_function_configuration(FunctionName=FN)["Environment"]["Variables"]
    lam.update_function_configuration(
        FunctionName=FN, Environment={"Variables": {**env, "GREETING_PASSWORD": "hacked-value"}}
    )
    r = run_cli("plan", "-e", "staging", "-w", str(ws), "--state-dir", str(state))
    assert r.returncode == 0
    assert "Changed outside reconciler" in r.stdout and "hacked-value" not in r.stdout
    shown = run_cli("plan", "-e", "staging", "-w", str(ws), "--state-dir", str(state), "--show-values")
    assert "hacked-value" in shown.stdout
    md = run_cli("plan", "-e", "staging", "-w", str(ws), "--state-dir", str(state), "--format", "markdown")
    assert "### Changed outside reconciler" in md.stdout and "drift: 1" in md.stdout


def test_refresh_accepts_live_into_state(deployed, aws, run_cli):
    """refresh records a hand change as the new truth, after which drift is clean; Lambda is untouched."""
    _, state = deployed
    lam = aws.client("lambda")
    lam.update_function_configuration(FunctionName=FN, MemorySize=1024)
    refused = run_cli("refresh", "--state-dir", str(state))
    assert refused.returncode == 1 and "auto-approve" in refused.stderr
    assert state_json(state)["functions"][FN]["configuration"]["MemorySize"] == 128
    r = run_cli("refresh", "--state-dir", str(state), "--auto-approve")
    assert r.returncode == 0, r.stderr
    assert state_json(state)["functions"][FN]["configuration"]["MemorySize"] == 1024
    assert drift(run_cli, state).returncode == 0
    assert lam.get_function_configuration(FunctionName=FN)["MemorySize"] == 1024


def test_state_rm_forgets_without_touching_aws(deployed, aws, run_cli):
    """state rm removes the function from the state; Lambda still has it."""
    _, state = deployed
    r = run_cli("state", "rm", FN, "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert FN not in state_json(state)["functions"]
    assert aws.client("lambda").get_function(FunctionName=FN)["Configuration"]["FunctionName"] == FN
    missing = run_cli("state", "rm", "nope", "--state-dir", str(state))
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_import_then_plan_shows_no_change(deployed, aws, run_cli, tmp_path):
    """A function adopted with import is recorded as it is; the next plan shows no change and publishes nothing."""
    ws, state = deployed
    fresh = tmp_path / "fresh-state"
    versions = aws.versions(FN)
    r = run_cli("import", FN, "-e", "staging", "-w", str(ws), "--state-dir", str(fresh))
    assert r.returncode == 0, r.stderr
    rec = json.loads((fresh / "staging" / "staging_use1.json").read_text())["functions"][FN]
    assert rec["version"] == "1" and rec["aliases"]["live"]["version"] == "1"
    p = run_cli("plan", "-e", "staging", "-w", str(ws), "--state-dir", str(fresh), "--detailed-exitcode")
    assert p.returncode == 0, p.stdout + p.stderr
    assert aws.versions(FN) == versions


def test_import_refuses_a_function_of_another_service(deployed, aws, run_cli, tmp_path):
    """A function tagged as managed by another service is not taken over."""
    ws, _ = deployed
    lam = aws.client("lambda")
    arn = lam.get_function(FunctionName=FN)["Configuration"]["FunctionArn"]
    lam.tag_resource(Resource=arn, Tags={"reconciler:service": "billing"})
    r = run_cli("import", FN, "-e", "staging", "-w", str(ws), "--state-dir", str(tmp_path / "other"))
    assert r.returncode == 1
    assert "billing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "other" / "staging" / "staging_use1.json").exists()


def test_ci_samples_are_valid_yaml_using_documented_exit_codes():
    """The CI samples parse as YAML and rely only on the documented commands and exit codes."""
    from pathlib import Path

    from ruamel.yaml import YAML

    root = Path(__file__).resolve().parents[2] / "samples" / "ci"
    files = sorted(root.rglob("*.yml"))
    assert {f.name for f in files} >= {"plan.yml", "apply.yml", "drift.yml", ".gitlab-ci.yml"}
    for f in files:
        doc = YAML(typ="safe").load(f.read_text())
        assert isinstance(doc, dict), f
        text = f.read_text()
        assert "reconciler" in text
        for cmd in ("state pull", "state push"):
            assert cmd not in text, f"{f} uses an undocumented command"


def test_plan_refuses_to_take_over_another_services_function(deployed, aws, run_cli, tmp_path):
    """A function tagged as another service's is an error in plan, not a silent takeover."""
    ws, _ = deployed
    lam = aws.client("lambda")
    arn = lam.get_function(FunctionName=FN)["Configuration"]["FunctionArn"]
    lam.tag_resource(Resource=arn, Tags={"reconciler:service": "billing"})
    r = run_cli("plan", "-e", "staging", "-w", str(ws), "--state-dir", str(tmp_path / "lost-state"))
    assert r.returncode == 1
    assert "billing" in r.stderr and "take it over" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_deployed_functions_carry_ownership_tags(deployed, aws):
    """Deployed functions are tagged with their service, environment and infrastructure, so a lost state can be rebuilt
    with import and another infrastructure's function is not taken over."""
    lam = aws.client("lambda")
    tags = lam.list_tags(Resource=lam.get_function(FunctionName=FN)["Configuration"]["FunctionArn"])["Tags"]
    assert tags["reconciler:service"] == "greeter" and tags["reconciler:environment"] == "staging"
    assert tags["reconciler:infrastructure"] == "staging_use1"
