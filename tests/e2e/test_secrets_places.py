"""Secrets wherever an expression stands (samples/secrets on moto_server): a function's
description and a tag's value, an alias's description, a connector's external ID, a
CloudFormation parameter of a provisioner step, --var and an input set. Each is deployed
with the value from the store; the value is never printed nor written to a file; a
rotation is a planned change; places that cannot take a secret are one clear error."""

from __future__ import annotations

import json

import pytest
from e2e_util import check
from test_provision_steps import TF_ROLLBACK, TF_STEPS, _path_with_standin, _terraform_workspace, provisioner
from test_run import smoke  # noqa: F401  (fixture)
from test_secrets import API, DB_V1, FN, REGION, Payments, _never, payments  # noqa: F401  (fixture)

DESC_V1, DESC_V2 = "desc-s3cr3t-one", "desc-r0tated-two"
TAG_V1, TAG_V2 = "tag-s3cr3t-one", "tag-r0tated-two"
ALIAS_V1 = "alias-s3cr3t-one"
HAND = "hand-typed-description"
EXTERNAL = "ext-id-s3cr3t-42"
PARAM = "cfn-param-s3cr3t-7"
VAR = "var-s3cr3t-value-3"

ALIAS_MANIFEST = """        - manifest:
            identifier: alias
            type: AwsLambdaFunctionAliasDefinition
            spec:
              store:
                type: Harness
                spec:
                  files:
                    - alias-live.json
      artifacts:"""


@pytest.fixture
def places(request) -> Payments:
    """samples/secrets (test_secrets's `payments` fixture)."""
    return request.getfixturevalue("payments")


def _collect(p: Payments):
    outputs: list[str] = []

    def cli(*args, code=0, **kw):
        r = p.cli(*args, code=code, **kw)
        outputs.extend([r.stdout, r.stderr])
        return r

    return outputs, cli


def test_description_tag_and_alias_description_use_secrets(places):
    p = places
    p.put_secrets()
    sm = p.aws.client("secretsmanager", REGION)
    sm.create_secret(Name="prod/payments/desc", SecretString=DESC_V1)
    sm.create_secret(Name="prod/payments/tag", SecretString=TAG_V1)
    sm.create_secret(Name="prod/payments/alias", SecretString=ALIAS_V1)
    p.edit_json(
        "lambda-definition.json",
        lambda d: d.update(
            description='ticket <+secrets.getValue("payments/desc")>',
            tags={"team": "payments", "billing": '<+secrets.getValue("payments/tag")>'},
        ),
    )
    (p.ws / "alias-live.json").write_text(
        json.dumps({"name": "live", "description": '<+secrets.getValue("payments/alias")>'})
    )
    svc = p.ws / ".harness" / "service.yaml"
    svc.write_text(svc.read_text().replace("      artifacts:", ALIAS_MANIFEST, 1))
    outputs, cli = _collect(p)

    plan_file = p.ws.parent / "places.plan.json"
    r = cli("plan", "--out", str(plan_file))
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    for place in ("Description", "Tags.billing", "alias Description"):
        assert sum(f" {place} uses a secret: Lambda keeps {place} in clear" in w for w in warnings) == 1, r.stderr
    assert '"payments"' in r.stdout and 'Description: "(sensitive)"' in r.stdout, r.stdout
    cli("apply", str(plan_file))
    assert p.config(FN)["Description"] == f"ticket {DESC_V1}"
    assert p.tags(FN)["billing"] == TAG_V1 and p.tags(FN)["team"] == "payments"
    assert p.lam().get_alias(FunctionName=FN, Name="live")["Description"] == ALIAS_V1
    rec = p.state()["functions"][FN]
    assert rec["secret_fields"] == {
        "Description": 'ticket <+secrets.getValue("payments/desc")>',
        "Tags.billing": '<+secrets.getValue("payments/tag")>',
        "Aliases.live.Description": '<+secrets.getValue("payments/alias")>',
    }
    assert rec["configuration"]["Description"].startswith("sealed:hmac-sha256:")
    assert rec["tags"]["billing"].startswith("sealed:") and rec["tags"]["team"] == "payments"
    assert rec["aliases"]["live"]["description"].startswith("sealed:")
    cli("plan", "--detailed-exitcode")  # nothing changed: seals compare equal
    versions = len(p.versions(FN))

    # rotated in the store: a change without a value; apply deploys it and publishes one version
    sm.put_secret_value(SecretId="prod/payments/desc", SecretString=DESC_V2)
    sm.put_secret_value(SecretId="prod/payments/tag", SecretString=TAG_V2)
    r = cli("plan", "--detailed-exitcode", code=2)
    assert "secret in Description changed in the store" in r.stdout, r.stdout
    assert "secret in Tags.billing changed in the store" in r.stdout
    assert "Description: (sensitive, changed)" in r.stdout and "Tags.billing: (sensitive, changed)" in r.stdout
    for fmt in ("json", "markdown"):
        cli("plan", "--format", fmt, code=None)
    cli("apply", "--auto-approve")
    assert p.config(FN)["Description"] == f"ticket {DESC_V2}" and p.tags(FN)["billing"] == TAG_V2
    assert len(p.versions(FN)) == versions + 1
    cli("plan", "--detailed-exitcode")

    # a rollback: the description and a tag are not kept by a version, and the state keeps
    # only their fingerprints: left as they are, and said so; the code and aliases go back
    r = cli("rollback", "--auto-approve")
    said = r.stdout + r.stderr
    assert "Description used a secret whose earlier value is not kept" in said, said
    assert "tag billing used a secret whose earlier value is not kept" in said
    assert p.config(FN)["Description"] == f"ticket {DESC_V2}" and p.tags(FN)["billing"] == TAG_V2
    assert p.lam().get_alias(FunctionName=FN, Name="live")["FunctionVersion"] == str(versions)
    cli("apply", "--auto-approve")

    # changed by hand in Lambda: drift, without a value
    p.lam().update_function_configuration(FunctionName=FN, Description=HAND)
    r = cli("drift", code=2)
    assert "Description: (sensitive, changed)" in r.stdout, r.stdout
    r = cli("drift", "--format", "json", code=2)
    assert [c["path"] for f in json.loads(r.stdout)["functions"] for c in f["changes"]] == ["Description"]
    for args in (
        ("history",),
        ("history", "--format", "json"),
        ("state", "show", FN),
        ("state", "show", FN, "--show-values"),
        ("state", "pull"),
        ("plan", "--debug", "-v"),
    ):
        cli(*args, code=None)
    r = cli("state", "show", FN, "--format", "json")
    shown = json.loads(r.stdout)
    assert shown["configuration"]["Description"] == "(sensitive)" and shown["tags"]["billing"] == "(sensitive)"
    assert shown["aliases"]["live"]["description"] == "(sensitive)"
    cli("apply", "--auto-approve")
    assert p.config(FN)["Description"] == f"ticket {DESC_V2}"

    _never((DESC_V1, DESC_V2, TAG_V1, TAG_V2, ALIAS_V1, HAND, DB_V1, API), outputs, [p.state_dir, plan_file])


def test_places_that_cannot_take_a_secret_say_why(places):
    p = places
    p.edit_json("lambda-definition.json", lambda d: d.update(functionName='<+secrets.getValue("x")>'))
    r = p.cli("validate", code=1)
    assert "lambda-definition.json:" in r.stderr and "cannot be used in FunctionName" in r.stderr, r.stderr
    assert "part of the function's ARN" in r.stderr
    p.edit_json("lambda-definition.json", lambda d: d.update(functionName=FN, tags={'<+secrets.getValue("x")>': "v"}))
    r = p.cli("validate", code=1)
    assert "lambda-definition.json:" in r.stderr and "Tags.<+secrets" in r.stderr, "a key is not an expression"
    p.edit_json("lambda-definition.json", lambda d: d.update(tags={}))
    infra = p.ws / ".harness" / "infrastructure.yaml"
    infra.write_text(infra.read_text().replace("region: us-east-1", 'region: <+secrets.getValue("region")>'))
    r = p.cli("validate", code=1)
    assert "infrastructure.yaml:" in r.stderr and "cannot be used in the region" in r.stderr, r.stderr


CONNECTOR = """connector:
  name: aws
  identifier: aws
  type: Aws
  spec:
    credential:
      type: InheritFromDelegate
      crossAccountAccess:
        crossAccountRoleArn: arn:aws:iam::123456789012:role/deployer
        externalId: <+secrets.getValue("payments/external-id")>
"""


def test_connector_external_id_from_a_secret(places, fault_proxy):
    p = places
    p.put_secrets()
    p.aws.client("secretsmanager", REGION).create_secret(Name="prod/payments/external-id", SecretString=EXTERNAL)
    (p.ws / ".harness" / "connector.yaml").write_text(CONNECTOR)
    env = {"AWS_ENDPOINT_URL": fault_proxy.endpoint}
    outputs, cli = _collect(p)
    cli("apply", "--auto-approve", env_extra=env)
    assume = [e for e in fault_proxy.log if e["operation"] == "AssumeRole"]
    assert assume and all(b"ExternalId=" + EXTERNAL.encode() in e["body"] for e in assume), (
        "the role was assumed with it"
    )
    assert p.env()["DB_PASSWORD"] == DB_V1
    rec = p.state()["functions"][FN]
    assert rec["connector"]["external_id"] == "\u27e6secret:payments/external-id\u27e7", "the reference, not the value"
    cli("plan", "--detailed-exitcode", env_extra=env)
    _never((EXTERNAL, DB_V1, API), outputs, [p.state_dir])


def test_var_and_input_set_refer_to_secrets(places):
    p = places
    p.put_secrets()
    p.aws.client("secretsmanager", REGION).create_secret(Name="prod/payments/other", SecretString=VAR)
    outputs, cli = _collect(p)
    # a String variable given one secret reference, a Secret variable given a secret's name
    cli(
        "apply",
        "--auto-approve",
        "--var",
        'log_level=<+secrets.getValue("payments/other")>',
        "--var",
        "db_password=payments/other",
    )
    env = p.env()
    assert env["LOG_LEVEL"] == VAR and env["DB_PASSWORD"] == VAR
    rec = p.state()["functions"][FN]
    assert rec["configuration"]["Environment"]["Variables"]["LOG_LEVEL"].startswith("sealed:")
    # any other value given from outside stays data: not read for expressions
    cli("apply", "--auto-approve", "--var", "log_level=<+serviceVariables.db_password> x")
    assert p.env()["LOG_LEVEL"] == "<+serviceVariables.db_password> x"

    # an input set's values: the same
    (p.ws / ".harness" / "pipeline.yaml").write_text(DEPLOY_PIPELINE)
    inputs = p.ws.parent / "inputs.yaml"
    inputs.write_text(INPUT_SET)
    cli("run", "release", "--inputs", str(inputs))
    env = p.env()
    assert env["LOG_LEVEL"] == API and env["DB_PASSWORD"] == VAR, "from the input set"
    _never((VAR, DB_V1, API), outputs, [p.state_dir])


DEPLOY_PIPELINE = """
pipeline:
  name: release
  identifier: release
  stages:
    - stage:
        name: deploy
        identifier: deploy
        type: Deployment
        spec:
          deploymentType: AwsLambda
          service:
            serviceRef: payments
          environment:
            environmentRef: production
            infrastructureDefinitions:
              - identifier: use1
          execution:
            steps:
              - step:
                  name: Deploy
                  identifier: deploy
                  type: AwsLambdaDeploy
                  spec: {}
"""

INPUT_SET = """
inputSet:
  identifier: prod
  pipeline:
    identifier: release
    stages:
      - stage:
          identifier: deploy
          type: Deployment
          spec:
            service:
              serviceInputs:
                serviceDefinition:
                  type: AwsLambda
                  spec:
                    variables:
                      - name: log_level
                        type: String
                        value: <+secrets.getValue("payments/api#key")>
                      - name: db_password
                        type: Secret
                        value: payments/other
"""


STACK_TEMPLATE = {
    "Parameters": {"DbPassword": {"Type": "String", "NoEcho": True}},
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
    "Outputs": {"TopicArn": {"Value": {"Ref": "Topic"}}},
}

PIPELINE = """
pipeline:
  name: release
  identifier: release
  stages:
    - stage:
        name: deploy
        identifier: deploy
        type: Deployment
        spec:
          deploymentType: AwsLambda
          service:
            serviceRef: payments
          environment:
            environmentRef: production
            infrastructureDefinitions:
              - identifier: use1
            provisioner:
              steps:
                - step:
                    name: stack
                    identifier: stack
                    type: CloudformationCreateStack
                    timeout: 5m
                    spec:
                      provisionerIdentifier: db
                      configuration:
                        stackName: payments-db
                        region: us-east-1
                        templateFile:
                          type: Remote
                          spec:
                            store:
                              type: Github
                              spec:
                                paths:
                                  - stack.json
                        parameterOverrides:
                          - name: DbPassword
                            value: <+secrets.getValue("payments/db-password")>
          execution:
            steps:
              - step:
                  name: Deploy
                  identifier: deploy
                  type: AwsLambdaDeploy
                  spec: {}
"""


def test_cloudformation_parameter_from_a_secret(places):
    p = places
    p.put_secrets()
    (p.ws / "stack.json").write_text(json.dumps(STACK_TEMPLATE))
    (p.ws / ".harness" / "pipeline.yaml").write_text(PIPELINE)
    outputs, cli = _collect(p)
    cli("validate")
    r = check(cli("run", "release"))
    cfn = p.aws.client("cloudformation", REGION)
    stack = cfn.describe_stacks(StackName="payments-db")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", r.stderr
    # moto answers the parameter as given (AWS would echo a NoEcho one as ****)
    assert {x["ParameterKey"]: x["ParameterValue"] for x in stack["Parameters"]} in (
        {"DbPassword": DB_V1},
        {"DbPassword": "****"},
    )
    cli("run", "release", "--format", "json")
    cli("history", "--format", "json")
    _never((DB_V1, API), outputs, [p.state_dir])
    # a name cannot be a secret
    pipe = p.ws / ".harness" / "pipeline.yaml"
    pipe.write_text(PIPELINE.replace("stackName: payments-db", 'stackName: <+secrets.getValue("x")>'))
    r = p.cli("validate", code=1)
    assert "pipeline.yaml:" in r.stderr and "cannot be used in stackName" in r.stderr, r.stderr


TF_SECRET = "tf-var-s3cr3t-5"


def test_terraform_inline_var_file_from_a_secret(request):
    """A TerraformPlan's Inline var file uses a secret: terraform gets the value (the stand-in
    outputs its variables), reconciler never prints nor records it. The infrastructure's
    region comes from the provisioner, so the secret is read in the runner's region."""
    p = request.getfixturevalue("smoke")
    p.aws.client("secretsmanager", REGION).create_secret(Name="tf/db", SecretString=TF_SECRET)
    d = _terraform_workspace(p)
    provisioner(
        p,
        TF_STEPS.replace('db_password = "hunter2-tf"', 'db_password = "<+secrets.getValue("tf/db")>"'),
        TF_ROLLBACK,
    )
    env = _path_with_standin()
    outputs: list[str] = []
    for args in (("validate",), ("run", "smokeDeploy", "--format", "json"), ("history",)):
        r = p.cli(*args, env_extra=env)
        outputs += [r.stdout, r.stderr]
    state = json.loads((d / "terraform.tfstate.d" / "dev" / "terraform.tfstate").read_text())
    assert state["outputs"]["db_password"]["value"] == TF_SECRET, "terraform got the value"
    _never((TF_SECRET,), outputs, [p.state_dir])
