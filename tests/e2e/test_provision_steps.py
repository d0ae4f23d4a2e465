"""End-to-end tests of a Deploy stage's `environment.provisioner` steps (issue 18): the real
CLI against moto_server on samples/pipeline-smoke, with provisioner steps added to its
stage and its infrastructure's region mapped from `<+provisioner.region_name>`.

What Lambda and CloudFormation hold afterwards is read with boto3 straight from moto;
what reconciler recorded is read from the state file."""

from __future__ import annotations

import json

import pytest
from test_run import FN, PIPELINE, run_json, smoke, steps  # noqa: F401  (the smoke fixture)

pytestmark = pytest.mark.e2e

INFRA = ".harness/infrastructure.yaml"


def provisioner(p, steps_yaml: str, rollback_yaml: str = "") -> None:
    """Give the smoke stage an environment.provisioner and map the region from its outputs."""
    pipe = p.ws / PIPELINE
    block = "            provisioner:\n              steps:\n" + _indent(steps_yaml, 16)
    if rollback_yaml:
        block += "              rollbackSteps:\n" + _indent(rollback_yaml, 16)
    text = pipe.read_text()
    anchor = "            infrastructureDefinitions:\n"
    assert anchor in text
    pipe.write_text(text.replace(anchor, block + anchor, 1))
    infra = p.ws / INFRA
    infra.write_text(infra.read_text().replace("region: us-east-1", "region: <+provisioner.region_name>"))


def _indent(text: str, n: int) -> str:
    return "".join((" " * n + line if line.strip() else line) + "\n" for line in text.strip("\n").splitlines())


SHELL_STEP = """
- step:
    type: ShellScriptProvision
    identifier: makeInfra
    name: make infra
    timeout: 10m
    spec:
      source:
        type: Inline
        spec:
          script: |
            echo "provisioning in $WANT"
            printf '{"region_name": "%s", "db_password": "hunter2-secret"}' "$WANT" > "$PROVISIONER_OUTPUT_PATH"
      environmentVariables:
        - {name: WANT, type: String, value: us-east-2}
"""
SHELL_UNDO = """
- step:
    type: ShellScriptProvision
    identifier: undoInfra
    name: undo infra
    timeout: 1m
    spec:
      source: {type: Inline, spec: {script: 'echo undone > provision-undone.txt'}}
      environmentVariables: []
"""


def test_shell_script_provision_maps_the_region(smoke):
    """The script's JSON gives region_name: the function lands in us-east-2, the state's
    history records what was provisioned with the secret-looking output masked."""
    provisioner(smoke, SHELL_STEP, SHELL_UNDO)
    r = smoke.cli("validate")
    assert "(provisioner.region_name)" in r.stdout
    r = smoke.cli("plan", code=1)  # only `run` runs the stage's provisioner steps
    assert "comes from the provisioner steps of stage 'deploy' of pipeline 'smokeDeploy'" in r.stderr

    s = run_json(smoke)
    assert s["status"] == "Success"
    got = steps(s)
    assert got["makeInfra"]["phase"] == "provision" and got["makeInfra"]["status"] == "Success"
    assert got["makeInfra"]["outputs"] == {"region_name": "us-east-2", "db_password": "(sensitive)"}
    assert got["deployawslambda"]["outputs"]["region"] == "us-east-2"
    assert smoke.aws.aliases(FN, "us-east-2") == {"live": "1"}
    assert smoke.aws.client("lambda", "us-east-1").list_functions()["Functions"] == []
    assert "undoInfra" not in got  # no rollback: its rollback steps do not run
    assert not (smoke.ws / "provision-undone.txt").exists()

    state = smoke.state_file("dev", "dev_use1")
    prov = [h for h in state["history"] if h["operation"] == "provision"]
    assert len(prov) == 1 and prov[0]["status"] == "succeeded" and prov[0]["function"] == FN
    assert prov[0]["outputs"] == {"region_name": "us-east-2", "db_password": "(sensitive)"}
    assert prov[0]["provisioned"][0]["step"] == "makeInfra"
    text = (smoke.state_dir / "dev" / "dev_use1.json").read_text()
    assert "hunter2" not in text and "hunter2" not in s["_stderr"] and "hunter2" not in json.dumps(s)
    r = smoke.cli("history")
    assert "provision" in r.stdout and "makeInfra (ShellScriptProvision, succeeded): region_name=us-east-2, db_password=(sensitive)" in r.stdout


def test_failed_deployment_runs_the_provisioner_rollback_steps(smoke):
    """A smoke test that fails rolls the stage back: the execution's rollback steps first,
    then the provisioner's rollbackSteps; the provision record says it was rolled back."""
    provisioner(smoke, SHELL_STEP, SHELL_UNDO)
    s = run_json(smoke, "--var", "healthy=false", code=1)
    order = [(x["phase"], x["step"]) for x in s["steps"] if x["status"] != "Skipped"]
    assert order[-3:] == [("rollback", "awslambdarollback"), ("rollback", "rollbacknotice"), ("provision_rollback", "undoInfra")]
    assert steps(s)["undoInfra"]["status"] == "Success"
    assert (smoke.ws / "provision-undone.txt").read_text() == "undone\n"
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"]
    assert prov[-1]["status"] == "rolled_back"
    assert prov[-1]["rolled_back"] == [{"step": "undoInfra", "type": "ShellScriptProvision", "status": "Success"}]


def test_provisioner_step_failure_and_bad_output(smoke):
    """A provisioner script that fails stops the stage before anything deploys; one that
    writes something other than a JSON object fails with that said."""
    provisioner(smoke, SHELL_STEP.replace('echo "provisioning in $WANT"', "exit 3"), SHELL_UNDO)
    s = run_json(smoke, code=1)
    got = steps(s)
    assert got["makeInfra"]["status"] == "Failed" and "exited 3" in got["makeInfra"]["error"]
    assert got["deployawslambda"]["status"] == "Skipped"
    assert got["undoInfra"]["status"] == "Success"  # the provisioner ran (and failed): its rollback runs
    assert smoke.aws.client("lambda", "us-east-2").list_functions()["Functions"] == []

    pipe = smoke.ws / PIPELINE
    pipe.write_text(pipe.read_text().replace("exit 3", "echo '[1, 2]' > \"$PROVISIONER_OUTPUT_PATH\"; exit 0"))
    s = run_json(smoke, code=1)
    assert "must hold a JSON object" in steps(s)["makeInfra"]["error"]


def test_provisioner_step_checks_at_validate(smoke):
    """Unsupported provisioner types and malformed steps are validation errors with file:line."""
    provisioner(smoke, """
- step:
    type: TerraformCloudRun
    identifier: tfc
    name: tfc
    timeout: 10m
    spec: {}
- step:
    type: ShellScriptProvision
    identifier: noScript
    name: no script
    spec: {source: {type: Inline, spec: {}}}
""")
    r = smoke.cli("validate", code=1)
    assert "pipeline.yaml:" in r.stderr
    assert "type 'TerraformCloudRun', which reconciler run does not support in environment.provisioner" in r.stderr
    assert "Terraform Cloud runs are not supported" in r.stderr
    assert "needs source.spec.script" in r.stderr
    assert "Traceback" not in r.stderr
