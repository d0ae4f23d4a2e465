"""Secrets end to end (samples/secrets on moto_server): references resolved from Secrets
Manager or SSM when planning and applying, never printed, never written to a file in clear;
a rotation is a planned update, a hand change is drift; a missing secret and a denied read
are one clear error each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from e2e_util import Project, check

FN = "payments"
REGION = "us-east-1"
DB_V1 = "s3cr3t-pa55-v1"
DB_V2 = "r0tated-pa55-v2"
API = "api-key-value-1"
HAND = "hand-set-api-key-9"


class Payments(Project):
    def put_secrets(self, db: str = DB_V1, api: str = API) -> None:
        sm = self.aws.client("secretsmanager", REGION)
        sm.create_secret(Name="prod/payments/db-password", SecretString=db)
        sm.create_secret(Name="prod/payments/api", SecretString=json.dumps({"key": api, "other": "x"}))

    def env(self) -> dict:
        return self.config(FN)["Environment"]["Variables"]

    def state(self) -> dict:
        return self.state_file("production", "use1")


@pytest.fixture
def payments(aws, run_cli, workspace, tmp_path) -> Payments:
    ws = workspace("secrets")
    aws.create_role("payments-lambda-role")
    aws.put_zip(
        "payments-artifacts", "payments.zip", aws.make_zip({"handler.py": (ws / "src" / "handler.py").read_text()})
    )
    return Payments(run_cli, aws, ws, tmp_path / "state", REGION)


def _never(values: tuple[str, ...], outputs: list[str], roots: list[Path]) -> None:
    """No value in any output, nor in any file below the roots (state dir, saved plan)."""
    for text in outputs:
        for v in values:
            assert v not in text, f"{v!r} printed:\n{text}"
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()]
    assert files
    for f in files:
        data = f.read_bytes()
        for v in values:
            assert v.encode() not in data, f"{v!r} written to {f}"


def test_secret_created_rotated_drifted_and_never_seen(payments):
    p = payments
    p.put_secrets()
    outputs: list[str] = []

    def cli(*args, code=0):
        r = p.cli(*args, code=code)
        outputs.extend([r.stdout, r.stderr])
        return r

    plan_file = p.ws.parent / "saved.plan.json"
    r = cli("plan", "--out", str(plan_file))
    assert '"info"' in r.stdout, "a value that is not secret is shown"
    assert "LOG_LEVEL" in r.stdout and "DB_PASSWORD" in r.stdout and "(sensitive)" in r.stdout
    assert os.stat(plan_file).st_mode & 0o777 == 0o600
    cli("apply", str(plan_file))
    env = p.env()
    assert env["DB_PASSWORD"] == DB_V1 and env["API_KEY"] == API and env["LOG_LEVEL"] == "info"
    assert env["DATABASE_URL"] == f"postgres://payments:{DB_V1}@db.internal:5432/payments"
    rec = p.state()["functions"][FN]
    assert rec["secrets"]["DB_PASSWORD"] == '<+secrets.getValue("payments/db-password")>'
    assert rec["secrets"]["API_KEY"] == '<+secrets.getValue("payments/api#key")>'
    assert rec["configuration"]["Environment"]["Variables"]["DB_PASSWORD"].startswith("sealed:hmac-sha256:")
    assert rec["configuration"]["Environment"]["Variables"]["LOG_LEVEL"] == "info"
    for f in p.state_dir.rglob("*"):
        if f.is_file():
            assert f.stat().st_mode & 0o777 == 0o600, f
    versions = len(p.versions(FN))

    # rotated in the store: an update that says so, without a value
    p.aws.client("secretsmanager", REGION).put_secret_value(SecretId="prod/payments/db-password", SecretString=DB_V2)
    r = cli("plan", "--detailed-exitcode", code=2)
    assert "secret DB_PASSWORD changed in the store" in r.stdout, r.stdout
    assert "Environment.Variables.DB_PASSWORD: (sensitive, changed)" in r.stdout
    assert "API_KEY" not in r.stdout, "an unchanged secret is not listed"
    for fmt in ("json", "markdown"):
        cli("plan", "--format", fmt)
    cli("apply", "--auto-approve")
    assert p.env()["DB_PASSWORD"] == DB_V2
    assert len(p.versions(FN)) == versions + 1, "one version published"
    cli("plan", "--detailed-exitcode")

    # changed by hand in Lambda: drift, without the value
    lam = p.lam()
    lam.update_function_configuration(FunctionName=FN, Environment={"Variables": {**p.env(), "API_KEY": HAND}})
    r = cli("drift", code=2)
    assert "Environment.Variables.API_KEY: (sensitive, changed)" in r.stdout, r.stdout
    r = cli("drift", "--format", "json", code=2)
    change = [c for f in json.loads(r.stdout)["functions"] for c in f["changes"]]
    assert [c["path"] for c in change] == ["Environment.Variables.API_KEY"]
    r = cli("plan", "--show-values", "--detailed-exitcode", code=2)
    assert "API_KEY" in r.stdout
    for args in (
        ("history",),
        ("history", "--format", "json"),
        ("state", "show", FN),
        ("state", "show", FN, "--show-values"),
        ("state", "list"),
        ("state", "pull"),
        ("plan", "--debug", "-v"),
    ):
        cli(*args, code=None if args[0] == "plan" else 0)
    cli("apply", "--auto-approve")
    assert p.env()["API_KEY"] == API

    _never((DB_V1, DB_V2, API, HAND), outputs, [p.state_dir, plan_file])


def test_rollback_restores_a_secret_not_kept_in_the_state(payments):
    p = payments
    p.put_secrets()
    p.cli("apply", "--auto-approve")
    p.aws.client("secretsmanager", REGION).put_secret_value(SecretId="prod/payments/db-password", SecretString=DB_V2)
    p.cli("apply", "--auto-approve")
    assert p.env()["DB_PASSWORD"] == DB_V2
    r = p.cli("rollback", "--auto-approve")
    assert p.env()["DB_PASSWORD"] == DB_V1, "the earlier value, from the version that ran it"
    # adopted again from what is live: the references are known from the workspace, the
    # values (DATABASE_URL's too, whose name is not a sensitive one) are kept as seals
    p.cli("state", "rm", FN)
    i = p.cli("import", FN)
    rec = p.state()["functions"][FN]
    assert set(rec["secrets"]) == {"DB_PASSWORD", "API_KEY", "DATABASE_URL"}
    assert rec["configuration"]["Environment"]["Variables"]["DATABASE_URL"].startswith("sealed:")
    _never((DB_V1, DB_V2, API), [r.stdout, r.stderr, i.stdout, i.stderr], [p.state_dir])


def test_missing_secret_is_one_clear_error_at_plan_time(payments):
    p = payments
    p.aws.client("secretsmanager", REGION).create_secret(
        Name="prod/payments/api", SecretString=json.dumps({"key": API})
    )
    r = p.cli("plan", code=1)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1, r.stderr
    assert 'secret <+secrets.getValue("payments/db-password")>' in err[0] and "not found" in err[0]
    assert "Environment.Variables.DB_PASSWORD of function payments" in err[0] and "lambda-definition.json" in err[0]
    assert API not in r.stderr + r.stdout
    assert p.aws.client("lambda", REGION).list_functions()["Functions"] == []


def test_denied_read_is_one_clear_error(payments, fault_proxy):
    p = payments
    p.put_secrets()
    fault_proxy.add_rule("GetSecretValue", "fail", status=400, error_type="AccessDeniedException", times=None)
    r = p.cli("plan", code=1, env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint})
    # one error line per reference, naming it and where it is used (the injected answer
    # carries no error code botocore reads for this JSON protocol: only the status)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 2 and all(e.startswith("error: secret <+secrets.getValue(") for e in err), r.stderr
    assert "payments/db-password" in err[0] and "used by Environment.Variables.DATABASE_URL" in err[0]
    assert (
        "payments/api#key" in err[1] and "cannot be read (400)" in err[1] and "secretsmanager:GetSecretValue" in err[1]
    )
    assert p.aws.client("lambda", REGION).list_functions()["Functions"] == []


def test_ssm_parameter_store_and_a_json_key_that_is_not_there(payments):
    p = payments
    (p.ws / "reconciler.yaml").write_text("secrets:\n  store: ssm\n  prefix: /prod/\n")
    ssm = p.aws.client("ssm", REGION)
    ssm.put_parameter(Name="/prod/payments/db-password", Value=DB_V1, Type="SecureString")
    ssm.put_parameter(Name="/prod/payments/api", Value=json.dumps({"other": API}), Type="SecureString")
    r = p.cli("plan", code=1)
    assert "has no key 'key' (keys: other)" in r.stderr and API not in r.stderr
    ssm.put_parameter(Name="/prod/payments/api", Value=json.dumps({"key": API}), Type="SecureString", Overwrite=True)
    r = check(p.cli("apply", "--auto-approve"))
    assert p.env()["DB_PASSWORD"] == DB_V1 and p.env()["API_KEY"] == API
    _never((DB_V1, API), [r.stdout, r.stderr], [p.state_dir])


def test_secret_reference_in_an_artifact_source_is_refused(payments):
    """(a description, a tag... can use a secret: tests/e2e/test_secrets_places.py)"""
    p = payments
    svc = p.ws / ".harness" / "service.yaml"
    svc.write_text(svc.read_text().replace("bucketName: payments-artifacts", 'bucketName: <+secrets.getValue("x")>'))
    r = p.cli("validate", code=1)
    assert "service.yaml:" in r.stderr and "cannot be used in an artifact source: it locates the code" in r.stderr


PIPELINE = """
pipeline:
  name: release
  identifier: release
  variables:
    - name: api
      type: Secret
      value: org.payments/api#key
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
              - step:
                  name: Check
                  identifier: check
                  type: ShellScript
                  timeout: 1m
                  spec:
                    shell: Bash
                    source:
                      type: Inline
                      spec:
                        script: |-
                          pw='<+secrets.getValue("payments/db-password")>'
                          echo "the password is $pw and the key is $API"
                          echo "the api key is <+pipeline.variables.api>"
                          printf %s "$pw" | sha256sum | cut -c1-16
                          copy="$pw"
                    environmentVariables:
                      - name: API
                        type: Secret
                        value: <+serviceVariables.db_password>
                    outputVariables:
                      - name: copied
                        type: String
                        value: copy
"""


def test_shellscript_gets_secret_values_and_its_output_is_scrubbed(payments):
    import hashlib

    p = payments
    p.put_secrets()
    (p.ws / ".harness" / "pipeline.yaml").write_text(PIPELINE)
    r = p.cli("run", "release")
    want = hashlib.sha256(DB_V1.encode()).hexdigest()[:16]
    assert want in r.stderr, "the script saw the secret's value"
    assert "the password is (sensitive) and the key is (sensitive)" in r.stderr
    assert "the api key is (sensitive)" in r.stderr, "a pipeline variable of type Secret is a reference too"
    assert "copied=(sensitive)" in r.stdout
    j = p.cli("run", "release", "--format", "json")
    check_step = [s for s in json.loads(j.stdout)["steps"] if s["type"] == "ShellScript"]
    assert check_step[0]["outputs"] == {"copied": "(sensitive)"}
    _never((DB_V1, API), [r.stdout, r.stderr, j.stdout, j.stderr], [p.state_dir])


def test_aws_error_that_echoes_the_environment_is_scrubbed(payments, fault_proxy):
    """Lambda's answer to a too-large environment lists the variables: printed and recorded
    in the history with every known value replaced."""
    p = payments
    p.put_secrets()
    p.cli("apply", "--auto-approve")
    p.aws.client("secretsmanager", REGION).put_secret_value(SecretId="prod/payments/db-password", SecretString=DB_V2)
    echo = (
        f"Lambda was unable to configure your environment variables because the environment variables you have provided "
        f'exceeded the 4KB limit. String measured: {{"DB_PASSWORD":"{DB_V2}","API_KEY":"{API}","LOG_LEVEL":"info"}}'
    )
    fault_proxy.add_rule(
        "UpdateFunctionConfiguration",
        "fail",
        status=400,
        error_type="InvalidParameterValueException",
        message=echo,
        times=None,
    )
    r = p.cli("apply", "--auto-approve", code=1, env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint})
    assert "exceeded the 4KB limit" in r.stderr and '"DB_PASSWORD":"(sensitive)"' in r.stderr, r.stderr
    assert '"LOG_LEVEL":"(sensitive)"' in r.stderr, "every environment value, not only the secret ones"
    failed = [h for h in p.state()["history"] if h["status"] in ("rolled_back", "failed")]
    assert failed and "exceeded the 4KB limit" in failed[-1]["error"]
    h = p.cli("history", "--format", "json")
    assert p.env()["DB_PASSWORD"] == DB_V1, "rolled back"
    _never((DB_V1, DB_V2, API), [r.stdout, r.stderr, h.stdout, h.stderr], [p.state_dir])


def test_saved_plan_is_stale_when_a_secret_rotates_before_it_is_applied(payments):
    p = payments
    p.put_secrets()
    p.cli("apply", "--auto-approve")
    p.edit_json("lambda-definition.json", lambda d: d.update(memorySize=256))
    plan_file = p.ws.parent / "saved.json"
    p.cli("plan", "--out", str(plan_file))
    p.aws.client("secretsmanager", REGION).put_secret_value(SecretId="prod/payments/db-password", SecretString=DB_V2)
    r = p.cli("apply", str(plan_file), code=1)
    assert (
        "saved plan is stale: secret DB_PASSWORD of function payments changed in the store since it was made"
        in r.stderr
    ), r.stderr
    assert p.config(FN)["MemorySize"] == 128 and p.env()["DB_PASSWORD"] == DB_V1
    _never((DB_V1, DB_V2, API), [r.stdout, r.stderr], [p.state_dir, plan_file])
