"""End-to-end tests of `reconciler run PIPELINE` (issue 7): the real CLI in a subprocess
against moto_server, on the seed's pipeline (samples/hello-world) and on
samples/pipeline-smoke (deploy, smoke-test script, rollback steps).

What Lambda holds afterwards is read with boto3 straight from moto; what reconciler
recorded is read from the state file."""

from __future__ import annotations

import json
import time

import pytest
from harness.localstack import on_both_emulators

from e2e_util import Project, hello  # noqa: F401  (the seed workspace fixture)

pytestmark = pytest.mark.e2e

BUCKET = "reconciler-artifacts"
FN = "smoke-dev"
REGION = "us-east-1"
PIPELINE = ".harness/pipeline.yaml"


def handler(release: str) -> str:
    return f"def handler(event, context):\n    return 'release {release}'\n"


@pytest.fixture
def smoke(aws, run_cli, workspace, tmp_path) -> Project:
    """samples/pipeline-smoke with its role and releases 1 and 2 uploaded."""
    ws = workspace("pipeline-smoke")
    aws.create_role("smoke-lambda-role")
    p = Project(run_cli, aws, ws, tmp_path / "state", REGION)
    p.sha = {
        v: aws.put_zip(BUCKET, f"smoke/smoke-{v}.zip", aws.make_zip({"handler.py": handler(v)})) for v in ("1", "2")
    }
    return p


def run_json(p: Project, *args, code: int = 0) -> dict:
    r = p.cli("run", "smokeDeploy", "--format", "json", *args, code=code)
    return json.loads(r.stdout) | {"_stderr": r.stderr}


def steps(summary: dict, phase: str | None = None) -> dict:
    return {s["step"]: s for s in summary["steps"] if phase is None or s["phase"] == phase}


# ---------------------------------------------------------------- the seed pipeline


def test_seed_pipeline_skips_its_deploy_step_and_echoes_the_service_variable(hello):
    """The seed's Deploy step has `when: condition: "false"`: Harness skips it, and so do we;
    its ShellScript step echoes <+serviceVariables.workload_name>."""
    r = hello.cli("run", "lambdaDeploy", "--format", "json")
    summary = json.loads(r.stdout)
    assert summary["status"] == "Success"
    got = steps(summary)
    assert got["deployawslambda"]["status"] == "Skipped"
    assert "condition" in got["deployawslambda"]["reason"]
    assert got["ShellScript"]["status"] == "Success"
    assert got["ShellScript"]["output"].strip() == "workloadNameValue"
    assert "awslambdarollback" not in got  # nothing failed: no rollback step ran
    lam = hello.lam()
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == []
    assert not (hello.state_dir / "aws" / "awslambda.json").exists()
    # the log (stderr) tells the same
    assert "skipped: when.condition 'false' evaluated to false" in r.stderr
    assert "\nworkloadNameValue\n" in r.stderr


# ---------------------------------------------------------------- deploy, smoke test, rollback


def test_deploy_and_passing_smoke_test(smoke):
    """Release 1: created, published as version 1, alias live → 1; the smoke script sees the
    deployment facts and its output variables reach the next step."""
    s = run_json(smoke)
    assert s["status"] == "Success", s["_stderr"]
    got = steps(s)
    assert got["deployawslambda"]["status"] == "Success"
    assert got["deployawslambda"]["outputs"]["version"] == "1"
    assert got["smoke"]["outputs"] == {"smokeResult": "healthy", "checkedVersion": "1"}
    assert "smoke testing smoke-dev version 1 (alias live) in us-east-1" in got["smoke"]["output"]
    assert "artifact smoke/smoke-1.zip of service smoke in environment dev" in got["smoke"]["output"]
    assert got["report"]["output"].strip() == "version 1 is healthy"
    assert got["notify"]["status"] == "Skipped"  # when: <+pipeline.variables.notify> == "yes", default no
    assert smoke.config(FN)["CodeSha256"] == smoke.sha["1"]
    assert smoke.aliases(FN) == {"live": "1"}
    # the deploy log in the spirit of the seed's
    for line in (
        "Aws Lambda Manifest Content",
        "Function: [smoke-dev] does not exist. Create and Publish.",
        "Published new version: [1]",
        "Successfully deployed lambda function: [smoke-dev]",
        "Aws Lambda Alias Manifest Content",
    ):
        assert line in s["_stderr"]


@on_both_emulators
def test_failing_smoke_test_rolls_back_to_the_previous_version(smoke):
    """Release 2 deploys (version 2, alias live → 2), its smoke test fails: the stage's
    rollback steps put $LATEST code and the alias back to release 1; exit 1."""
    run_json(smoke)
    s = run_json(smoke, "--var", "version=2", "--var", "healthy=false", code=1)
    assert s["status"] == "Failed"
    got = steps(s)
    assert got["deployawslambda"]["status"] == "Success" and got["deployawslambda"]["outputs"]["version"] == "2"
    assert got["smoke"]["status"] == "Failed" and "exited 1" in got["smoke"]["error"]
    assert got["smoke"]["outputs"] == {"smokeResult": "unhealthy", "checkedVersion": "2"}
    assert got["report"]["status"] == "Skipped"
    assert got["awslambdarollback"]["status"] == "Success" and got["awslambdarollback"]["phase"] == "rollback"
    assert got["rollbacknotice"]["output"].strip() == "rolled back smoke-dev to version 1"
    assert s["stages"][0]["rolled_back"] is True
    conf = smoke.config(FN)
    assert conf["CodeSha256"] == smoke.sha["1"]
    assert conf["Environment"]["Variables"]["RELEASE"] == "1"
    assert smoke.aliases(FN) == {"live": "1"}
    state = smoke.state_file("dev", "dev_use1")
    assert state["functions"][FN]["version"] == "1"
    ops = [(h["operation"], h["status"]) for h in state["history"]]
    assert ops == [("apply", "succeeded"), ("apply", "rolled_back"), ("rollback", "succeeded")]
    assert state["history"][-1]["pipeline"] == "smokeDeploy" and state["history"][-1]["version"] == "1"


def test_timed_out_smoke_test_is_killed_and_rolled_back(smoke):
    """A 2s step timeout on a script sleeping 30s: the script's process group is killed, the
    step fails with a timeout and the stage rolls back."""
    run_json(smoke)
    pipe = smoke.ws / PIPELINE
    pipe.write_text(
        pipe.read_text().replace(
            "identifier: smoke\n                  timeout: 1m", "identifier: smoke\n                  timeout: 2s"
        )
    )
    t0 = time.monotonic()
    s = run_json(smoke, "--var", "version=2", "--var", "smoke_sleep=30", code=1)
    assert time.monotonic() - t0 < 20
    got = steps(s)
    assert got["smoke"]["status"] == "Failed" and "timed out after 2s" in got["smoke"]["error"]
    assert got["awslambdarollback"]["status"] == "Success"
    assert smoke.config(FN)["CodeSha256"] == smoke.sha["1"]
    assert smoke.aliases(FN) == {"live": "1"}


def test_inputs_file_and_when_condition(smoke):
    """The sample input set picks release 2 and sets notify=yes, so the Notify step's
    `when` condition holds; plan --pipeline shows the same release before the run."""
    r = smoke.cli("plan", "--pipeline", "smokeDeploy", "--inputs", "inputs/release-2.yaml", "--format", "json")
    plan = json.loads(r.stdout)
    assert [f["name"] for f in plan["functions"]] == [FN] and plan["functions"][0]["action"] == "create"
    s = run_json(smoke, "--inputs", "inputs/release-2.yaml")
    got = steps(s)
    assert got["notify"]["status"] == "Success" and "announcing smoke version 1" in got["notify"]["output"]
    assert smoke.config(FN)["CodeSha256"] == smoke.sha["2"]


# ---------------------------------------------------------------- validation


def test_unsupported_step_type_is_a_validation_error(smoke):
    pipe = smoke.ws / PIPELINE
    text = pipe.read_text().replace(
        "type: ShellScript\n                  name: Report", "type: Http\n                  name: Report", 1
    )
    pipe.write_text(text)
    line = text.splitlines().index("                  type: Http") + 1
    r = smoke.cli("validate", code=1)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {PIPELINE}:{line}: step 'report' has type 'Http'")
    assert "supported: AwsLambdaDeploy, AwsLambdaRollback, ShellScript" in err[0]
    r = smoke.cli("run", "smokeDeploy", code=1)
    assert f"{PIPELINE}:{line}" in r.stderr and smoke.lam().list_functions()["Functions"] == []


def test_missing_runtime_input_names_it(smoke):
    pipe = smoke.ws / PIPELINE
    pipe.write_text(pipe.read_text().replace("value: <+input>.default(no)", "value: <+input>"))
    r = smoke.cli("run", "smokeDeploy", code=1)
    assert "runtime input variable 'notify' (<+input>) has no value" in r.stderr
    smoke.cli("run", "smokeDeploy", "--var", "notify=no")


# ---------------------------------------------------------------- provisioner outputs


def _dynamic_region(p: Project, provisioner: str = "") -> None:
    infra = p.ws / ".harness" / "infrastructure.yaml"
    infra.write_text(infra.read_text().replace("region: us-east-1", "region: <+provisioner.region_name>" + provisioner))


def test_region_from_a_cloudformation_stack(smoke):
    cfn = smoke.aws.client("cloudformation", REGION)
    cfn.create_stack(
        StackName="network",
        TemplateBody=json.dumps(
            {
                "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {"region_name": {"Value": "us-east-1"}},
            }
        ),
    )
    _dynamic_region(
        smoke, "\n    provisioner:\n      type: CloudFormation\n      stackName: network\n      region: us-east-1"
    )
    r = smoke.cli("validate")  # shape only, no AWS call
    assert "(provisioner.region_name)" in r.stdout
    s = run_json(smoke)
    assert steps(s)["deployawslambda"]["outputs"]["region"] == "us-east-1"
    assert smoke.aliases(FN) == {"live": "1"}
    # a missing output names itself and where it was looked for
    infra = smoke.ws / ".harness" / "infrastructure.yaml"
    infra.write_text(infra.read_text().replace("provisioner.region_name", "provisioner.aws_region"))
    r = smoke.cli("plan", code=1)
    assert "provisioner output 'aws_region' not found" in r.stderr and "CloudFormation stack 'network'" in r.stderr


def test_region_from_a_terraform_outputs_file(smoke, tmp_path):
    _dynamic_region(smoke)
    outputs = tmp_path / "tf.json"
    outputs.write_text(json.dumps({"region_name": {"value": "us-east-1", "type": "string", "sensitive": False}}))
    r = smoke.cli("plan", code=1)
    assert "provisioner output 'region_name' has no source" in r.stderr
    s = run_json(smoke, "--provisioner-outputs", outputs)
    assert s["status"] == "Success" and smoke.aliases(FN) == {"live": "1"}
    outputs.write_text(json.dumps({"vpc_id": "vpc-1"}))  # a flat map without the output
    r = smoke.cli("plan", "--provisioner-outputs", outputs, code=1)
    assert "provisioner output 'region_name' not found" in r.stderr and "tf.json (has: vpc_id)" in r.stderr


def test_deploy_to_all_infrastructures(smoke):
    """deployToAll: true runs the stage for every infrastructure of the environment."""
    second = (
        (smoke.ws / ".harness" / "infrastructure.yaml")
        .read_text()
        .replace("dev_use1", "dev_use2")
        .replace("dev-us-east-1", "dev-us-east-2")
    )
    (smoke.ws / ".harness" / "infrastructure-2.yaml").write_text(
        second.replace("region: us-east-1", "region: us-east-2")
    )
    pipe = smoke.ws / PIPELINE
    pipe.write_text(pipe.read_text().replace("deployToAll: false", "deployToAll: true"))
    smoke.aws.put_zip(BUCKET, "smoke/smoke-1.zip", smoke.aws.make_zip({"handler.py": handler("1")}))
    s = run_json(smoke)
    assert sorted(st["infrastructure"] for st in s["stages"]) == ["dev_use1", "dev_use2"]
    assert smoke.aws.aliases(FN, "us-east-1") == {"live": "1"} and smoke.aws.aliases(FN, "us-east-2") == {"live": "1"}
