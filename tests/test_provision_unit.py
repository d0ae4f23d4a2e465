"""Unit tests of the stage provisioner steps (reconciler.provisioners): each step type's
check, the output masking, and the `<+provisioner.NAME>` lookup while the steps are pending
and once they have run. No AWS, no subprocess."""

from __future__ import annotations

import pytest

from reconciler.pipeline import provisioners
from reconciler.errors import ConfigError


def check(step_type: str, spec: dict) -> list[str]:
    return [
        e.message for e in provisioners.step_type(step_type).check(spec, lambda path, msg, hint=None: ConfigError(msg))
    ]


def test_registry_has_every_documented_step_type():
    assert set(provisioners.step_types()) == {
        "ShellScriptProvision",
        "CloudformationCreateStack",
        "CloudformationDeleteStack",
        "CloudformationRollbackStack",
        "TerraformPlan",
        "TerraformApply",
        "TerraformRollback",
        "TerraformDestroy",
        "TerragruntPlan",
        "TerragruntApply",
        "TerragruntRollback",
        "TerragruntDestroy",
    }
    assert "TerraformCloudRun" not in provisioners.step_types()
    assert "not supported" in provisioners.rejected("TerraformCloudRun", "provision")
    assert "environment.provisioner" in provisioners.rejected("ShellScriptProvision", "execution")


def test_shell_script_provision_check():
    assert check("ShellScriptProvision", {"source": {"type": "Inline", "spec": {"script": "echo"}}}) == []
    assert check("ShellScriptProvision", {"source": {"type": "Harness", "spec": {"file": "scripts/p.sh"}}}) == []
    assert "needs source.spec.script" in check("ShellScriptProvision", {"source": {"type": "Inline", "spec": {}}})[0]
    assert "not supported" in check("ShellScriptProvision", {"source": {"type": "Http", "spec": {}}})[0]
    assert (
        "shell variable name"
        in check(
            "ShellScriptProvision",
            {
                "source": {"type": "Inline", "spec": {"script": "x"}},
                "environmentVariables": [{"name": "1BAD", "value": "x"}],
            },
        )[0]
    )
    assert (
        "shell variable name"
        in check(
            "ShellScriptProvision",
            {
                "source": {"type": "Inline", "spec": {"script": "x"}},
                "environmentVariables": [{"name": "OK\n", "value": "x"}],
            },
        )[0]
    )


def test_cloudformation_checks():
    good = {
        "provisionerIdentifier": "p",
        "configuration": {
            "stackName": "s",
            "region": "us-east-1",
            "templateFile": {"type": "Inline", "spec": {"templateBody": "{}"}},
        },
    }
    assert check("CloudformationCreateStack", good) == []
    bad = {
        "configuration": {
            "stackName": "s",
            "templateFile": {"type": "Remote", "spec": {"store": {"type": "Github", "spec": {}}}},
            "capabilities": ["CAPABILITY_ALL"],
        }
    }
    msgs = check("CloudformationCreateStack", bad)
    assert any("provisionerIdentifier" in m for m in msgs) and any("configuration.region" in m for m in msgs)
    assert any("spec.paths" in m for m in msgs) and any("CAPABILITY_ALL" in m for m in msgs)
    assert (
        check(
            "CloudformationDeleteStack",
            {"configuration": {"type": "Reference", "spec": {"provisionerIdentifier": "p"}}},
        )
        == []
    )
    assert check("CloudformationDeleteStack", {"configuration": {"type": "Inline", "spec": {"stackName": "s"}}}) == [
        "an Inline delete needs configuration.spec.region"
    ]
    assert check("CloudformationRollbackStack", {"configuration": {}}) == [
        "a CloudformationRollbackStack step needs configuration.provisionerIdentifier"
    ]


def test_terraform_needs_the_executable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = {
        "provisionerIdentifier": "p",
        "configuration": {
            "command": "Apply",
            "configFiles": {"store": {"type": "Github", "spec": {"folderPath": "infra"}}},
        },
    }
    assert check("TerraformPlan", spec) == [
        "a TerraformPlan step runs the terraform executable, and there is none on PATH"
    ]
    exe = tmp_path / "terraform"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert check("TerraformPlan", spec) == []
    assert "terragrunt executable" in check("TerragruntPlan", spec)[0]
    assert (
        "configuration.type must be one of InheritFromPlan, Inline"
        in check("TerraformApply", {"provisionerIdentifier": "p", "configuration": {"type": "X"}})[0]
    )
    bad = {
        "provisionerIdentifier": "p",
        "configuration": {
            "command": "Refresh",
            "configFiles": {"store": {"type": "S3"}},
            "varFiles": [{"varFile": {"type": "Inline", "spec": {}}}],
        },
    }
    msgs = check("TerraformPlan", bad)
    assert (
        any("Apply or Destroy" in m for m in msgs)
        and any("folderPath" in m for m in msgs)
        and any("spec.content" in m for m in msgs)
    )


def test_secret_looking_outputs_are_masked():
    """By the project's masking policy (reconciler.secrets sensitive_names), plus outputs a tool marks sensitive."""
    got = provisioners.masked(
        {
            "region_name": "us-east-2",
            "db_password": "x",
            "api_key": "y",
            "Token": "z",
            "vpc_id": "v",
            "certificate": "c",
        },
        {"certificate"},
    )
    assert got == {
        "region_name": "us-east-2",
        "db_password": "(sensitive)",
        "api_key": "(sensitive)",
        "Token": "(sensitive)",
        "vpc_id": "v",
        "certificate": "(sensitive)",
    }


class _Infra:
    identifier = "i"
    file = "infra.yaml"

    def __init__(self):
        self.body = {"environmentRef": "dev", "spec": {"region": "<+provisioner.region_name>"}}

    def line(self, *path):
        return 1


class _Ws:
    def __init__(self):
        self.pipelines: dict = {}


def test_lookup_pending_then_known():
    from reconciler.workspace.provision import resolver

    pending = provisioners.pending_settings({"outputs": None, "source": None, "live": True})
    lookup = resolver(_Ws(), _Infra(), pending)
    assert lookup("region_name") == "(provisioner.region_name)"
    assert pending["stage"]["used"] == ["region_name"]
    # --provisioner-outputs wins over the steps
    lookup = resolver(
        _Ws(), _Infra(), provisioners.pending_settings({"outputs": {"region_name": "eu-west-1"}, "live": True})
    )
    assert lookup("region_name") == "eu-west-1"
    done = {
        "outputs": None,
        "live": True,
        "stage": {"pending": False, "outputs": {"region_name": "us-east-2"}, "where": "the steps"},
    }
    assert resolver(_Ws(), _Infra(), done)("region_name") == "us-east-2"
    with pytest.raises(KeyError) as e:
        resolver(_Ws(), _Infra(), done)("vpc")
    assert "the steps (has: region_name)" in e.value.args[0]


def test_step_strings_finds_every_expression_in_spec_and_timeout():
    class _Step:
        path = ("pipeline", "stages", 0)
        body = {"spec": {"a": "plain", "b": ["x", {"c": "<+pipeline.variables.v>"}], "n": 3}, "timeout": "<+input>"}

    assert provisioners.step_strings(_Step()) == [
        ("<+pipeline.variables.v>", ("pipeline", "stages", 0, "spec", "b", 1, "c")),
        ("<+input>", ("pipeline", "stages", 0, "timeout")),
    ]
