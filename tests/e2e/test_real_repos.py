"""Issue 15 end to end: workspaces shaped like real repositories (tests/fixtures/*) are run
with the real CLI against moto_server — validate, plan, apply, replan — and what Lambda
holds afterwards is read back with boto3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from e2e_util import Project, check

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REGION = "us-east-1"
BUCKET = "repo-artifacts"


def handler(text: str) -> bytes:
    from conftest import make_zip

    return make_zip({"app.py": f"def handler(event, context):\n    return {text!r}\n"})


@pytest.fixture
def fixture(aws, run_cli, tmp_path):
    """`fixture(name) -> Project`: a copy of tests/fixtures/<name> with the role it names."""
    aws.create_role("lambda-role")

    def make(name: str) -> Project:
        ws = tmp_path / name
        shutil.copytree(FIXTURES / name, ws)
        return Project(run_cli, aws, ws, tmp_path / "state", REGION)

    return make


def converge(p: Project, *extra: str) -> None:
    """validate, plan (changes), apply, replan (no changes): all as a user types them."""
    p.cli("validate", *extra)
    p.cli("plan", "--detailed-exitcode", *extra, code=2)
    p.cli("apply", "--auto-approve", *extra)
    p.cli("plan", "--detailed-exitcode", *extra, code=0)


def skipped_lines(r) -> list[str]:
    return [line for line in r.stdout.splitlines() if line.startswith("skipped")]


# ---------------------------------------------------------------- item 1: mixed YAML


def test_serverless_and_helm_files_beside_harness_yaml_are_skipped_and_said(fixture, aws):
    """A serverless.yml and Helm values (top-level `service:`) no longer break the workspace;
    a YAML function definition in camelCase with `environment:` is read only as the manifest
    it is; a misspelt kind stays visible in validate."""
    p = fixture("mixed-yaml")
    aws.put_zip(BUCKET, "hello/hello.zip", handler("v1"))
    (p.ws / "typo.yaml").write_text("servce:\n  name: other\n  identifier: other\n")
    r = p.cli("validate")
    lines = skipped_lines(r)
    assert any(line.startswith("skipped  serverless.yml:") and "5 top-level keys" in line for line in lines), r.stdout
    assert any(line.startswith("skipped  chart/values.yaml:") for line in lines), r.stdout
    assert any(
        line.startswith("skipped  chart/values-prod.yaml:1") and "has no identifier" in line for line in lines
    ), r.stdout
    assert any(line.startswith("skipped  typo.yaml:1") and "did you mean 'service'" in line for line in lines), r.stdout
    assert not any("deploy/" in line for line in lines), "a manifest file is never an entity"
    assert "Skipped: 4 YAML file(s)" in r.stdout and "ok  mixed-hello" in r.stdout
    converge(p)
    conf = p.config("mixed-hello")
    assert conf["Environment"]["Variables"] == {"STAGE": "dev"} and conf["MemorySize"] == 128
    assert p.aliases("mixed-hello") == {"live": "1"}


# ---------------------------------------------------------------- item 2: other deployment types


def test_asg_and_kubernetes_services_and_stages_are_skipped(fixture, aws):
    """An ASG service, a Kubernetes service and their infrastructures and stages load beside a
    Lambda one; validate lists them as skipped; the Lambda stage deploys."""
    p = fixture("other-types")
    aws.put_zip(BUCKET, "orders/orders.zip", handler("orders"))
    r = p.cli("validate")
    text = "\n".join(skipped_lines(r))
    for what in (
        "service 'api' is of type Kubernetes",
        "service 'web' is of type Asg",
        "infrastructureDefinition 'prod_k8s' is of type Kubernetes",
        "infrastructureDefinition 'prod_asg' is of type Asg",
        "stage 'api' of pipeline 'release' is skipped: deploymentType Kubernetes",
        "stage 'web' of pipeline 'release' is skipped: service 'web' is of type Asg",
    ):
        assert what in text, r.stdout
    converge(p)
    assert [f["FunctionName"] for f in p.lam().list_functions()["Functions"]] == ["orders-prod"]
    state = p.state_file("prod", "prod_lambda")
    assert set(state["functions"]) == {"orders-prod"}
    assert not (p.state_dir / "prod" / "prod_k8s.json").exists()


# ---------------------------------------------------------------- item 7: checks that used to wait for AWS


@pytest.mark.parametrize(
    "file, old, new, line, message",
    [
        (
            ".harness/infrastructure.yaml",
            "region: us-east-1",
            "region: AWS_REGION",
            9,
            "spec.region 'AWS_REGION' is not an AWS region",
        ),
        (
            ".harness/service.yaml",
            "region: us-east-1",
            "region: <REGION>",
            41,
            "spec.region '<REGION>' is not an AWS region",
        ),
        (
            ".harness/infrastructure.yaml",
            "region: us-east-1",
            "region: your_aws_region",
            9,
            "'your_aws_region' is not an AWS region",
        ),
        (
            "deploy/function.yaml",
            "role: arn:aws:iam::123456789012:role/lambda-role",
            "role: <YOUR_AWS_ARN>",
            4,
            "'Role' is '<YOUR_AWS_ARN>', which does not match the pattern",
        ),
        (
            "deploy/function.yaml",
            "functionName: mixed-hello",
            "functionName: Hello World",
            1,
            "'FunctionName' is 'Hello World', which does not match the pattern",
        ),
    ],
)
def test_bad_region_role_and_name_fail_validate_with_file_and_line_and_no_aws_call(
    fixture, fault_proxy, file, old, new, line, message
):
    p = fixture("mixed-yaml")
    path = p.ws / file
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    for command in (("validate",), ("plan",)):
        r = p.cli(*command, code=1, env_extra={"AWS_ENDPOINT_URL": fault_proxy.endpoint})
        assert f"error: {file}:{line}: " in r.stderr and message in r.stderr, r.stderr
        assert "internal error" not in r.stderr
    assert fault_proxy.log == [], "validate and a refused plan make no AWS call"


# ---------------------------------------------------------------- item 9: as installed


def test_a_built_wheel_carries_the_demo_workspace(tmp_path):
    """`pip wheel .` (what `pip install .` builds) packages samples/hello-world as
    reconciler/demo_workspace, and the installed demo uses it, not a source checkout.
    (.ci/run installs the wheel in a fresh venv and runs the whole demo.)"""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout.decode().split("\0")
    )
    for f in filter(None, files):
        if (repo / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, src / f)
    check(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    (wheel,) = (tmp_path / "dist").glob("reconciler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in (
        ".harness/service.yaml",
        ".harness/pipeline.yaml",
        "serverless/aws-lambda/createFunction.json",
        "src/handler.js",
    ):
        assert f"reconciler/demo_workspace/{f}" in names, names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    r = check(
        subprocess.run(
            [sys.executable, "-c", "from reconciler.cli import demo; print(demo.SAMPLE)"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
            capture_output=True,
            text=True,
        )
    )
    assert r.stdout.strip() == str(site / "reconciler" / "demo_workspace")
    r = check(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "validate",
                "-w",
                r.stdout.strip(),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
            capture_output=True,
            text=True,
        )
    )
    assert "ok  Hello_World" in r.stdout


# ---------------------------------------------------------------- items 4, 5, 6: a pipeline with a CI stage, stage variables and a loop

LOOP_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture
def loop(fixture, aws) -> Project:
    p = fixture("loop-pipeline")
    for region in LOOP_REGIONS:
        aws.put_zip(f"greeter-{region}", "greeter.zip", handler(region), region=region)
    return p


def test_looping_stage_deploys_each_region_with_its_stage_variables(loop):
    """strategy.repeat over three regions: one function per iteration, each named and placed by
    <+stage.variables.region> (= <+repeat.item>) in the service, the definition and the
    infrastructure; validate, plan, apply, replan converge."""
    r = loop.cli("validate")
    assert [line.split()[1] for line in r.stdout.splitlines() if line.startswith("ok")] == [
        f"greeter-{x}" for x in LOOP_REGIONS
    ]
    converge(loop)
    for i, region in enumerate(LOOP_REGIONS):
        conf = loop.aws.lambda_config(f"greeter-{region}", region)
        assert conf["Description"] == f"multi-region / deploy_{i}"
        assert conf["Environment"]["Variables"] == {
            "PIPELINE": "multiRegion",
            "STAGE": f"deploy_{i}",
            "ITERATION": str(i),
        }
        assert loop.aws.aliases(f"greeter-{region}", region) == {"live": "1"}
    state = loop.state_file("prod", "prod_lambda")
    assert {n: f["region"] for n, f in state["functions"].items()} == {f"greeter-{x}": x for x in LOOP_REGIONS}


def test_run_skips_ci_approval_and_custom_stages_and_names_each_iteration(loop):
    """The pipeline's CI, Approval and Custom stages are listed as skipped; its CI-only input
    (properties.ci.codebase.build: <+input>, a Run step's command) is never asked for; each
    loop iteration is its own stage run (deploy_0, deploy_1, deploy_2)."""
    r = loop.cli("run", "multiRegion", "--format", "json", "--var", "prefix=svc")
    s = json.loads(r.stdout)
    assert s["status"] == "Success", r.stderr
    stages = {x["stage"]: x for x in s["stages"]}
    assert {k: v["status"] for k, v in stages.items()} == {
        "build": "Skipped",
        "approve": "Skipped",
        "announce": "Skipped",
        "deploy_0": "Success",
        "deploy_1": "Success",
        "deploy_2": "Success",
    }
    assert stages["build"]["reason"] == "type CI"
    reports = [x["output"].strip() for x in s["steps"] if x["step"] == "report"]
    assert reports == [f"deploy_{i} deployed svc to {r_} (iteration {i} of 3)" for i, r_ in enumerate(LOOP_REGIONS)]
    for region in LOOP_REGIONS:
        assert loop.aws.lambda_config(f"svc-{region}", region)["State"] == "Active"
    loop.cli("plan", "--pipeline", "multiRegion", "--var", "prefix=svc", "--detailed-exitcode", code=0)


def test_pipeline_expressions_outside_a_pipeline_are_an_error_with_file_and_line(loop):
    (loop.ws / ".harness" / "pipeline.yaml").unlink()
    r = loop.cli("validate", code=1)
    assert (
        "error: .harness/infrastructure.yaml:9: <+stage.variables.region> has a value only where a pipeline stage deploys"
        in r.stderr
    )


def test_matrix_is_refused_by_name(loop):
    path = loop.ws / ".harness" / "pipeline.yaml"
    path.write_text(
        path.read_text().replace(
            "          repeat:\n", "          matrix:\n            region: [a, b]\n          repeat:\n"
        )
    )
    r = loop.cli("validate", code=1)
    assert "strategy.matrix is not supported by reconciler" in r.stderr and ".harness/pipeline.yaml:" in r.stderr


# ---------------------------------------------------------------- item 3: artifact runtime inputs


def test_input_set_fills_s3_and_ecr_source_fields(fixture, aws):
    """sources[].spec fields that are <+input> take the input set's serviceInputs values; without
    them validate names the ways to give them; --var artifact.FIELD works too."""
    p = fixture("input-sets")
    aws.put_zip(BUCKET, "zips/release-7.zip", handler("zips"))
    aws.push_image("images", "release-7")
    r = p.cli("validate", code=1)
    assert (
        "spec.imagePath is a runtime input (<+input>) with no value" in r.stderr
        and "--var artifact.imagePath=VALUE" in r.stderr
    )
    args = ("--pipeline", "release", "--inputs", "inputs/release.yaml")
    p.cli("plan", "--detailed-exitcode", *args, code=2)
    p.cli("plan", *args, "--out", "release.plan")
    p.cli("apply", "release.plan")
    p.cli("plan", "--detailed-exitcode", *args, code=0)
    assert p.config("inputs-zips")["CodeSha256"] == aws.sha256_b64(handler("zips"))
    assert p.config("inputs-images")["PackageType"] == "Image"
    # the same values by flags, for one service
    p.cli(
        "validate",
        "-s",
        "zips",
        "--var",
        "artifact.connectorRef=aws",
        "--var",
        "artifact.region=us-east-1",
        "--var",
        "artifact.bucketName=repo-artifacts",
        "--var",
        "artifact.filePath=zips/release-7.zip",
    )
