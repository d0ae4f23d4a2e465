"""End-to-end tests of a Deploy stage's `environment.provisioner` steps (issue 18): the real
CLI against moto_server on samples/pipeline-smoke, with provisioner steps added to its
stage and its infrastructure's region mapped from `<+provisioner.region_name>`.

What Lambda and CloudFormation hold afterwards is read with boto3 straight from moto;
what reconciler recorded is read from the state file."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    pipe = smoke.ws / PIPELINE
    pipe.write_text(
        pipe.read_text().replace(
            'script: echo "version <+pipeline',
            'script: echo "provisioned <+provisioner.region_name> (password <+provisioner.db_password>); version <+pipeline',
        )
    )
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
    # the outputs reach every expression of the stage; a sensitive one is scrubbed from the output
    assert "provisioned us-east-2 (password (sensitive)); version 1 is healthy" in s["_stderr"]
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
    assert (
        "provision" in r.stdout
        and "makeInfra (ShellScriptProvision, succeeded): region_name=us-east-2, db_password=(sensitive)" in r.stdout
    )


def test_failed_deployment_runs_the_provisioner_rollback_steps(smoke):
    """A smoke test that fails rolls the stage back: the execution's rollback steps first,
    then the provisioner's rollbackSteps; the provision record says it was rolled back."""
    provisioner(smoke, SHELL_STEP, SHELL_UNDO)
    s = run_json(smoke, "--var", "healthy=false", code=1)
    order = [(x["phase"], x["step"]) for x in s["steps"] if x["status"] != "Skipped"]
    assert order[-3:] == [
        ("rollback", "awslambdarollback"),
        ("rollback", "rollbacknotice"),
        ("provision_rollback", "undoInfra"),
    ]
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
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"]
    assert (
        len(prov) == 1
        and prov[0]["provisioned"][0]["status"] == "failed"
        and "exited 3" in prov[0]["provisioned"][0]["error"]
    )

    pipe = smoke.ws / PIPELINE
    pipe.write_text(pipe.read_text().replace("exit 3", "echo '[1, 2]' > \"$PROVISIONER_OUTPUT_PATH\"; exit 0"))
    s = run_json(smoke, code=1)
    assert "must hold a JSON object" in steps(s)["makeInfra"]["error"]


def test_provisioner_step_checks_at_validate(smoke):
    """Unsupported provisioner types and malformed steps are validation errors with file:line."""
    provisioner(
        smoke,
        """
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
""",
    )
    r = smoke.cli("validate", code=1)
    assert "pipeline.yaml:" in r.stderr
    assert "type 'TerraformCloudRun', which reconciler run does not support in environment.provisioner" in r.stderr
    assert "Terraform Cloud runs are not supported" in r.stderr
    assert "needs source.spec.script" in r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- CloudFormation

STACK = "smoke-network-dev"
TEMPLATE = """Parameters:
  Target: {Type: String}
Resources:
  Param:
    Type: AWS::SSM::Parameter
    Properties: {Name: /smoke/region, Type: String, Value: !Ref Target}
Outputs:
  region_name: {Value: !Ref Target}
"""
CFN_CREATE = """
- step:
    type: CloudformationCreateStack
    identifier: createStack
    name: create stack
    timeout: 10m
    spec:
      provisionerIdentifier: network
      configuration:
        stackName: smoke-network-<+env.name>
        connectorRef: awscp
        region: us-east-1
        templateFile:
          type: Remote
          spec:
            store: {type: Github, spec: {connectorRef: git, gitFetchType: Branch, branch: main, paths: [cfn/network.yaml]}}
        parameterOverrides:
          - {name: Target, type: String, value: us-east-2}
        tags: {type: Inline, spec: {content: '[{"key": "team", "value": "smoke"}]'}}
"""
CFN_ROLLBACK = """
- step:
    type: CloudformationRollbackStack
    identifier: rollbackStack
    name: rollback stack
    timeout: 10m
    spec:
      configuration: {provisionerIdentifier: network}
"""


def _stack(p):
    cfn = p.aws.client("cloudformation", "us-east-1")
    try:
        return cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    except cfn.exceptions.ClientError:
        return None


def test_cloudformation_stack_created_by_the_pipeline_gives_the_region(smoke):
    """The create step makes the stack from a template in the workspace; its Outputs give
    region_name; the function lands there; the stack id is recorded in the state."""
    (smoke.ws / "cfn").mkdir()
    (smoke.ws / "cfn" / "network.yaml").write_text(TEMPLATE)
    provisioner(smoke, CFN_CREATE, CFN_ROLLBACK)
    s = run_json(smoke)
    assert s["status"] == "Success", s["_stderr"]
    stack = _stack(smoke)
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert {"Key": "team", "Value": "smoke"} in stack["Tags"]
    assert stack["Outputs"] == [{"OutputKey": "region_name", "OutputValue": "us-east-2"}] or [
        (o["OutputKey"], o["OutputValue"]) for o in stack["Outputs"]
    ] == [("region_name", "us-east-2")]
    assert smoke.aws.aliases(FN, "us-east-2") == {"live": "1"}
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"][-1]
    assert prov["provisioned"][0]["stack_id"] == stack["StackId"] and prov["provisioned"][0]["action"] == "created"
    # a second run finds the stack as it is: nothing to update, same outputs
    s = run_json(smoke)
    assert s["status"] == "Success"
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"][-1]
    assert prov["provisioned"][0]["action"] == "unchanged"


def test_failed_deployment_deletes_the_stack_this_run_created(smoke):
    """The smoke test fails: the execution's rollback steps run, then the provisioner's
    CloudformationRollbackStack deletes the stack the run created."""
    (smoke.ws / "cfn").mkdir()
    (smoke.ws / "cfn" / "network.yaml").write_text(TEMPLATE)
    provisioner(smoke, CFN_CREATE, CFN_ROLLBACK)
    s = run_json(smoke, "--var", "healthy=false", code=1)
    got = steps(s)
    assert got["createStack"]["status"] == "Success" and got["awslambdarollback"]["status"] == "Success"
    assert got["rollbackStack"]["status"] == "Success" and got["rollbackStack"]["outputs"]["action"] == "deleted"
    assert _stack(smoke) is None or _stack(smoke)["StackStatus"] == "DELETE_COMPLETE"
    assert smoke.aws.client("lambda", "us-east-2").list_functions()["Functions"] == []  # the stage created it: deleted
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"][-1]
    assert prov["status"] == "rolled_back"


def test_rollback_returns_an_existing_stack_to_its_previous_template(smoke):
    """A stack that existed before the run is updated by the create step; the rollback
    updates it back to the template and parameters it had."""
    cfn = smoke.aws.client("cloudformation", "us-east-1")
    old = TEMPLATE.replace("Outputs:", "Outputs:\n  generation: {Value: old}")
    cfn.create_stack(
        StackName=STACK, TemplateBody=old, Parameters=[{"ParameterKey": "Target", "ParameterValue": "us-east-1"}]
    )
    (smoke.ws / "cfn").mkdir()
    (smoke.ws / "cfn" / "network.yaml").write_text(TEMPLATE)
    provisioner(smoke, CFN_CREATE, CFN_ROLLBACK)
    s = run_json(smoke, "--var", "healthy=false", code=1)
    got = steps(s)
    assert got["deployawslambda"]["outputs"]["region"] == "us-east-2"  # the updated stack's output
    assert got["rollbackStack"]["outputs"]["action"] == "restored"
    stack = _stack(smoke)
    assert stack is not None and stack["StackStatus"] in ("UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE")
    assert {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]} == {
        "region_name": "us-east-1",
        "generation": "old",
    }
    assert "generation" in cfn.get_template(StackName=STACK)["TemplateBody"]


# ---------------------------------------------------------------- Terraform / Terragrunt (tests/bin stand-in)

STANDIN = Path(__file__).resolve().parent.parent / "bin"
TF_STEPS = """
- step:
    type: TerraformPlan
    identifier: tfPlan
    name: tf plan
    timeout: 10m
    spec:
      provisionerIdentifier: net
      configuration:
        command: Apply
        configFiles:
          store: {type: Github, spec: {connectorRef: git, gitFetchType: Branch, branch: main, folderPath: infra/tf}}
        varFiles:
          - varFile: {identifier: dev, type: Remote, spec: {store: {type: Github, spec: {paths: [infra/tf/dev.tfvars]}}}}
          - varFile: {identifier: extra, type: Inline, spec: {content: 'db_password = "hunter2-tf"'}}
        backendConfig: {type: Inline, spec: {content: 'path = "network.tfstate"'}}
        workspace: <+env.name>
- step:
    type: TerraformApply
    identifier: tfApply
    name: tf apply
    timeout: 10m
    spec:
      provisionerIdentifier: net
      configuration: {type: InheritFromPlan}
"""
TF_ROLLBACK = """
- step:
    type: TerraformRollback
    identifier: tfRollback
    name: tf rollback
    timeout: 10m
    spec: {provisionerIdentifier: net}
"""


def _terraform_workspace(p, folder: str = "infra/tf") -> Path:
    d = p.ws / folder
    d.mkdir(parents=True)
    (d / "main.tf").write_text('resource "null_resource" "this" {}\n')
    (p.ws / "infra" / "tf").mkdir(parents=True, exist_ok=True)
    (p.ws / "infra" / "tf" / "dev.tfvars").write_text('region_name = "us-east-2"\n')
    return d


def _path_with_standin() -> dict:
    return {"PATH": f"{STANDIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_terraform_plan_apply_gives_the_region_and_rollback_destroys(smoke):
    """TerraformPlan (init, workspace, plan -out) and TerraformApply (the saved plan, then
    output -json) give region_name; a failed smoke test runs TerraformRollback, which
    destroys what this run's apply created."""
    d = _terraform_workspace(smoke)
    provisioner(smoke, TF_STEPS, TF_ROLLBACK)
    env = _path_with_standin()
    smoke.cli("validate", env_extra=env)
    r = smoke.cli("run", "smokeDeploy", "--format", "json", "--var", "healthy=false", env_extra=env, code=1)
    s = json.loads(r.stdout)
    got = steps(s)
    assert got["tfApply"]["outputs"] == {"region_name": "us-east-2", "db_password": "(sensitive)"}
    assert got["deployawslambda"]["outputs"]["region"] == "us-east-2"
    assert got["tfRollback"]["status"] == "Success" and got["tfRollback"]["outputs"]["action"] == "destroyed"
    calls = [c.split()[1:3] for c in (d / ".terraform" / "calls.log").read_text().splitlines()]
    assert [c[0] for c in calls] == [
        "init",
        "workspace",
        "plan",
        "init",
        "workspace",
        "state",
        "apply",
        "output",
        "init",
        "workspace",
        "destroy",
    ]
    state = json.loads((d / "terraform.tfstate.d" / "dev" / "terraform.tfstate").read_text())
    assert state["resources"] == [] and state["serial"] == 2  # applied, then destroyed
    assert "hunter2" not in r.stdout + r.stderr
    assert "hunter2" not in (smoke.state_dir / "dev" / "dev_use1.json").read_text()
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"][-1]
    assert [p["step"] for p in prov["provisioned"]] == ["tfPlan", "tfApply"] and prov["status"] == "rolled_back"
    assert prov["provisioned"][1]["folder"] == "infra/tf" and prov["provisioned"][1]["workspace"] == "dev"


def test_terragrunt_module_and_a_failing_apply(smoke):
    """TerragruntPlan/TerragruntApply run in folderPath/moduleConfig.path; an apply that fails
    fails the step, and its rollback, over a state that held resources before this run,
    fails saying so instead of destroying them."""
    d = _terraform_workspace(smoke, "infra/live/dev")
    steps_yaml = TF_STEPS.replace("Terraform", "Terragrunt").replace(
        "folderPath: infra/tf}}",
        "folderPath: infra/live}}\n        moduleConfig: {terragruntRunType: RunModule, path: dev}",
    )
    provisioner(smoke, steps_yaml, TF_ROLLBACK.replace("Terraform", "Terragrunt"))
    env = _path_with_standin()
    s = json.loads(smoke.cli("run", "smokeDeploy", "--format", "json", env_extra=env).stdout)
    assert (
        steps(s)["tfApply"]["type"] == "TerragruntApply"
        and steps(s)["deployawslambda"]["outputs"]["region"] == "us-east-2"
    )
    assert (d / ".terraform" / "calls.log").read_text().startswith("terragrunt init")

    (smoke.ws / "infra" / "tf" / "dev.tfvars").write_text('region_name = "us-east-2"\nfail_apply = "true"\n')
    r = smoke.cli("run", "smokeDeploy", "--format", "json", env_extra=env, code=1)
    s = json.loads(r.stdout)
    assert steps(s)["tfApply"]["status"] == "Failed" and "terragrunt exited 1" in steps(s)["tfApply"]["error"]
    assert "the provider said no" in steps(s)["tfApply"]["output"]
    assert steps(s)["deployawslambda"]["status"] == "Skipped"
    assert (
        steps(s)["tfRollback"]["status"] == "Failed"
        and "held resources before this run" in steps(s)["tfRollback"]["error"]
    )
    state = json.loads((d / "terraform.tfstate.d" / "dev" / "terraform.tfstate").read_text())
    assert state["resources"] != []  # the first run's resources are left alone


def test_terraform_steps_without_the_executable_fail_validate(smoke):
    """Without terraform on PATH, validate names every step that needs it; TerraformCloudRun
    is not supported."""
    _terraform_workspace(smoke)
    provisioner(smoke, TF_STEPS, TF_ROLLBACK)
    r = smoke.cli("validate", env_extra={"PATH": "/nonexistent"}, code=1)
    assert r.stderr.count("runs the terraform executable, and there is none on PATH") == 3, r.stderr
    assert "pipeline.yaml:" in r.stderr


# ---------------------------------------------------------------- plan --pipeline, apply of its plan


def test_plan_pipeline_shows_provisioner_steps_and_apply_refuses_its_plan(smoke, tmp_path):
    """plan --pipeline lists the provisioner steps `run` would run; a value that waits for
    them shows as (provisioner.NAME) and its function is not planned; --provisioner-outputs
    or an existing stack gives the value; apply of such a saved plan says to use run."""
    (smoke.ws / "cfn").mkdir()
    (smoke.ws / "cfn" / "network.yaml").write_text(TEMPLATE)
    provisioner(smoke, CFN_CREATE, CFN_ROLLBACK)
    saved = tmp_path / "plan.json"
    r = smoke.cli("plan", "--pipeline", "smokeDeploy", "--out", saved, "--detailed-exitcode", code=2)
    assert "createStack (CloudformationCreateStack)" in r.stdout and "on rollback: rollbackStack" in r.stdout
    assert "smoke-dev  [smoke → dev/dev_use1, (provisioner.region_name)] planned when the pipeline runs" in r.stdout
    assert json.loads(saved.read_text())["provisioners"][0]["waiting_for"] == ["provisioner.region_name"]
    r = smoke.cli("apply", saved, code=1)
    assert "which `apply` does not run" in r.stderr and "reconciler run smokeDeploy" in r.stderr
    assert smoke.aws.client("lambda", "us-east-2").list_functions()["Functions"] == []

    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"region_name": "us-east-2"}))
    r = smoke.cli("plan", "--pipeline", "smokeDeploy", "--provisioner-outputs", outputs, "--format", "json")
    plan = json.loads(r.stdout)
    assert [(f["name"], f["region"], f["action"]) for f in plan["functions"]] == [(FN, "us-east-2", "create")]
    assert plan["provisioners"][0]["waiting_for"] == []

    # the stack exists (made by a run): its outputs give the region to the plan, read-only
    run_json(smoke)
    r = smoke.cli("plan", "--pipeline", "smokeDeploy")
    assert "provisioner.region_name: from the outputs of existing stack smoke-network-dev" in r.stdout
    assert "smoke-dev  [smoke → dev/dev_use1, us-east-2] no changes" in r.stdout


# ---------------------------------------------------------------- samples/provisioned


def test_sample_provisioned(aws, run_cli, workspace, tmp_path):
    """samples/provisioned as its README says: validate without AWS, then run: the stack
    is created from the workspace template, its region_name output sends the function to
    us-east-2, and the history shows the provision record with the stack id."""
    from e2e_util import HELLO_FN, Project

    ws = workspace("provisioned")
    aws.create_role("hello-world-lambda-role")
    p = Project(run_cli, aws, ws, tmp_path / "state", "us-east-2")
    aws.put_zip(
        "mylambda",
        "workloadNameValue",
        aws.make_zip({"handler.js": "exports.hello = async () => 1;\n"}),
        region="us-east-2",
    )
    assert "(provisioner.region_name)" in p.cli("validate").stdout
    r = p.cli("run", "lambdaDeployProvisioned", "--format", "json")
    s = json.loads(r.stdout)
    assert s["status"] == "Success", r.stderr
    cfn = aws.client("cloudformation", "us-east-1")
    stack = cfn.describe_stacks(StackName="helloworld-aws-region")["Stacks"][0]
    assert {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["region_name"] == "us-east-2"
    assert (
        aws.client("ssm", "us-east-1").get_parameter(Name="/workloadNameValue/deploy-region")["Parameter"]["Value"]
        == "us-east-2"
    )
    assert p.config(HELLO_FN)["FunctionName"] == HELLO_FN
    assert "Hello_World version 1 in us-east-2" in r.stderr
    h = p.cli("history", "--format", "json")
    prov = [x for x in json.loads(h.stdout) if x["operation"] == "provision"]
    assert prov[0]["provisioned"][0]["stack_id"] == stack["StackId"]


def _git(ws: Path, *args: str) -> None:
    import subprocess

    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    subprocess.run(["git", "-C", str(ws), *args], check=True, capture_output=True, env=env)


def test_terraform_rollback_reapplies_the_last_recorded_commit(smoke):
    """A configuration applied before (recorded at its git commit) is changed and committed;
    the run that applies the change fails its smoke test, and TerraformRollback applies the
    earlier commit's configuration again, over the same state."""
    d = _terraform_workspace(smoke)
    tfvars = smoke.ws / "infra" / "tf" / "dev.tfvars"
    tfvars.write_text('region_name = "us-east-2"\ngeneration = "one"\n')
    provisioner(smoke, TF_STEPS, TF_ROLLBACK)
    (smoke.ws / ".gitignore").write_text(".terraform/\n*.tfstate\nterraform.tfstate.d/\n")
    _git(smoke.ws, "init", "-q")
    _git(smoke.ws, "add", "-A")
    _git(smoke.ws, "commit", "-qm", "one")
    env = _path_with_standin()
    s = json.loads(smoke.cli("run", "smokeDeploy", "--format", "json", env_extra=env).stdout)
    assert steps(s)["tfApply"]["outputs"]["generation"] == "one"
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"][-1]
    first = prov["provisioned"][1]["commit"]

    tfvars.write_text('region_name = "us-east-2"\ngeneration = "two"\n')
    _git(smoke.ws, "commit", "-qam", "two")
    r = smoke.cli("run", "smokeDeploy", "--format", "json", "--var", "healthy=false", env_extra=env, code=1)
    s = json.loads(r.stdout)
    assert steps(s)["tfApply"]["outputs"]["generation"] == "two"
    rb = steps(s)["tfRollback"]
    assert rb["status"] == "Success", r.stderr
    assert rb["outputs"] == {"rolledBack": "true", "action": "reapplied", "commit": first}
    state = json.loads((d / "terraform.tfstate.d" / "dev" / "terraform.tfstate").read_text())
    assert state["outputs"]["generation"]["value"] == "one" and state["resources"]
    assert tfvars.read_text().endswith('"two"\n')  # the checkout itself is left as it is


def test_script_file_source_and_delete_stack_by_reference(smoke):
    """A ShellScriptProvision script from a workspace file (source type Harness) and a
    CloudformationDeleteStack rollback step that finds the stack by provisionerIdentifier."""
    (smoke.ws / "cfn").mkdir()
    (smoke.ws / "cfn" / "network.yaml").write_text(TEMPLATE)
    (smoke.ws / "scripts").mkdir()
    (smoke.ws / "scripts" / "outputs.sh").write_text(
        'printf \'{"team": "%s", "replicas": 2}\' "$TEAM" > "$PROVISIONER_OUTPUT_PATH"\n'
    )
    script_step = """
- step:
    type: ShellScriptProvision
    identifier: fromFile
    name: from file
    timeout: 1m
    spec:
      source: {type: Harness, spec: {file: /scripts/outputs.sh}}
      environmentVariables:
        - {name: TEAM, type: String, value: <+service.name>}
"""
    delete_step = """
- step:
    type: CloudformationDeleteStack
    identifier: deleteStack
    name: delete stack
    timeout: 10m
    spec:
      configuration: {type: Reference, spec: {provisionerIdentifier: network}}
"""
    provisioner(smoke, CFN_CREATE + script_step, delete_step)
    s = run_json(smoke, "--var", "healthy=false", code=1)
    got = steps(s)
    assert got["fromFile"]["outputs"] == {"team": "smoke", "replicas": 2}
    assert got["deleteStack"]["status"] == "Success" and got["deleteStack"]["outputs"] == {"deleted": "true"}
    assert _stack(smoke) is None or _stack(smoke)["StackStatus"] == "DELETE_COMPLETE"
    prov = [h for h in smoke.state_file("dev", "dev_use1")["history"] if h["operation"] == "provision"][-1]
    assert prov["outputs"] == {"region_name": "us-east-2", "team": "smoke", "replicas": 2}
