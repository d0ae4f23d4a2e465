"""End-to-end on samples/ecr-image and samples/two-environments: the real CLI against
moto_server, asserting what Lambda and the state files hold afterwards."""

from __future__ import annotations

import json

import pytest
from e2e_util import Project

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------- ECR image, alias


@pytest.fixture
def ecr(aws, run_cli, workspace, tmp_path) -> Project:
    p = Project(run_cli, aws, workspace("ecr-image"), tmp_path / "state", "us-east-1")
    aws.create_role("hello-image-lambda-role")
    p.digest1 = aws.push_image("hello-image", "v1")
    return p


def test_ecr_image_deployed_by_digest_and_alias_follows(ecr):
    fn = "hello-image"
    hex1 = ecr.digest1.split(":", 1)[1]

    r = ecr.cli("plan", "--detailed-exitcode", code=2)
    assert hex1 in r.stdout, "the plan must show the digest the tag resolves to"
    assert "hello-image:v1" in r.stdout
    assert "alias live: (new) → version 1" in r.stdout

    ecr.cli("apply", "--auto-approve")
    conf = ecr.config(fn)
    assert conf["PackageType"] == "Image"
    assert conf["CodeSha256"] == hex1
    assert conf["MemorySize"] == 512 and conf["Timeout"] == 15
    assert conf["Environment"]["Variables"] == {
        "SERVICE": "helloimage",
        "DEPLOY_ENV": "dev",
        "DEPLOY_REGION": "us-east-1",
    }
    code = ecr.lam().get_function(FunctionName=fn)["Code"]
    assert ecr.digest1 in code["ImageUri"], "deployed by digest, not by tag"
    assert ecr.versions(fn) == ["1"]
    alias = ecr.lam().get_alias(FunctionName=fn, Name="live")
    assert alias["FunctionVersion"] == "1"
    assert alias["Description"] == "traffic alias for hello-image, moved to each new version"
    rec = ecr.state_file("dev", "awslambda_use1")["functions"][fn]
    assert rec["package_type"] == "Image" and rec["version"] == "1" and rec["code_sha256"] == hex1
    assert rec["aliases"]["live"]["version"] == "1"
    assert rec["code_source"]["digest"] == ecr.digest1

    # the same tag pushed again with other content: a code change, by the new digest
    digest2 = ecr.aws.push_image("hello-image", "v1", seed="rebuilt")
    hex2 = digest2.split(":", 1)[1]
    assert hex2 != hex1
    # and a canary: 10% of the alias' traffic stays on version 1
    ecr.edit_json("lambda-alias.json", lambda d: d.update(routingConfig={"additionalVersionWeights": {"1": 0.1}}))
    r = ecr.cli("plan", "--detailed-exitcode", code=2)
    assert f'CodeSha256: "{hex1}" → "{hex2}"' in r.stdout
    assert "version 2" in r.stdout
    assert "alias live: version 1 → 2" in r.stdout

    ecr.cli("apply", "--auto-approve")
    assert ecr.config(fn)["CodeSha256"] == hex2
    assert digest2 in ecr.lam().get_function(FunctionName=fn)["Code"]["ImageUri"]
    assert ecr.versions(fn) == ["1", "2"]
    alias = ecr.lam().get_alias(FunctionName=fn, Name="live")
    assert alias["FunctionVersion"] == "2"
    assert alias["RoutingConfig"]["AdditionalVersionWeights"] == {"1": 0.1}
    rec = ecr.state_file("dev", "awslambda_use1")["functions"][fn]
    assert rec["version"] == "2" and rec["code_sha256"] == hex2
    assert rec["aliases"]["live"] == {"version": "2", "description": alias["Description"], "weights": {"1": 0.1}}
    ecr.cli("plan", "--detailed-exitcode", code=0)


# ---------------------------------------------------------------- two environments


@pytest.fixture
def greeter(aws, run_cli, workspace, tmp_path) -> Project:
    p = Project(run_cli, aws, workspace("two-environments"), tmp_path / "state", "us-east-1")
    aws.create_role("greeter-lambda-role")
    src = (p.ws / "src" / "handler.py").read_text()
    p.sha = aws.put_zip("reconciler-artifacts", "greeter/greeter-1.0.0.zip", aws.make_zip({"handler.py": src}))
    return p


def test_two_environments_each_with_its_own_state(greeter):
    # -e narrows the selection to one target
    doc = json.loads(greeter.cli("plan", "-e", "staging", "--format", "json").stdout)
    assert [f["name"] for f in doc["functions"]] == ["greeter-staging"]
    assert doc["summary"]["create"] == 1

    greeter.cli("apply", "--auto-approve", "-e", "staging")
    assert [f["FunctionName"] for f in greeter.lam().list_functions()["Functions"]] == ["greeter-staging"]
    assert not (greeter.state_dir / "production").exists()

    r = greeter.cli("apply", "--auto-approve")
    assert "1 to create, 0 to update, 1 unchanged" in r.stdout
    staging, production = greeter.config("greeter-staging"), greeter.config("greeter-production")
    assert (staging["MemorySize"], staging["Timeout"]) == (128, 10)
    assert (production["MemorySize"], production["Timeout"]) == (512, 30)
    assert staging["Environment"]["Variables"]["LOG_LEVEL"] == "DEBUG"
    assert production["Environment"]["Variables"]["LOG_LEVEL"] == "WARN"
    assert production["Environment"]["Variables"]["GREETING"] == "Hello"
    assert production["Description"] == "greeter in production (Production) on production-us-east-1"
    for fn, env_name in (("greeter-staging", "staging"), ("greeter-production", "production")):
        assert greeter.config(fn)["CodeSha256"] == greeter.sha
        assert greeter.versions(fn) == ["1"]
        alias = greeter.lam().get_alias(FunctionName=fn, Name="live")
        assert alias["FunctionVersion"] == "1"
        assert alias["Description"] == f"live traffic for greeter in {env_name}"
        assert greeter.tags(fn)["environment"] == env_name

    s = greeter.state_file("staging", "staging_use1")
    p = greeter.state_file("production", "production_use1")
    assert list(s["functions"]) == ["greeter-staging"] and list(p["functions"]) == ["greeter-production"]
    assert s["lineage"] != p["lineage"]
    assert p["functions"]["greeter-production"]["configuration"]["MemorySize"] == 512
    assert p["functions"]["greeter-production"]["aliases"]["live"]["version"] == "1"
    assert [h["status"] for h in s["history"]] == ["succeeded"] and [h["status"] for h in p["history"]] == ["succeeded"]

    # --var beats every override; -e keeps production untouched
    r = greeter.cli("plan", "-e", "staging", "--var", "memorySize=256", "--detailed-exitcode", code=2)
    assert "MemorySize: 128 → 256" in r.stdout and "greeter-production" not in r.stdout
