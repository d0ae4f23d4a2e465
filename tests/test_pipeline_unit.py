"""Unit tests of pipeline execution parts, in-process, no AWS: durations, `when`
conditions, input sets, pipeline checks, stage targets (deployToAll), provisioner outputs
and the ShellScript runner (output variables, timeout)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from reconciler.errors import ConfigError, ErrorList
from reconciler.pipeline.checks import check_pipeline, check_workspace
from reconciler.pipeline.conditions import evaluate_condition, parse_duration
from reconciler.pipeline.inputs import overlay
from reconciler.pipeline.model import RunSettings
from reconciler.pipeline.runner import Runner
from reconciler.workspace.load import load_workspace
from reconciler.workspace.provision import parse_outputs, resolver
from reconciler.workspace.render import Options, render, stage_targets
from reconciler.workspace.shell import run_script

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def smoke_ws(tmp_path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(SAMPLES / "pipeline-smoke", ws)
    return ws


def edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path.read_text()


# ---------------------------------------------------------------- durations and conditions


@pytest.mark.parametrize(
    "text,seconds", [("10m", 600), ("30s", 30), ("1h", 3600), ("1m30s", 90), ("2s", 2), ("1d", 86400), ("500ms", 0.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "ten minutes", "", "1x", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "cond,expected",
    [
        ("true", True),
        ("false", False),
        (False, False),
        (True, True),
        ('<+v.a> == "yes"', True),
        ("<+v.a> != 'yes'", False),
        ("<+v.n> > 2 && <+v.n> < 4", True),
        ('!(<+v.a> == "no") || false', True),
        ("<+v.flag>", True),
        ("<+v.n> == 3.0", True),
    ],
)
def test_conditions(cond, expected):
    values = {"<+v.a>": "yes", "<+v.n>": 3, "<+v.flag>": "true"}
    assert evaluate_condition(cond, lambda e: values[e]) is expected


@pytest.mark.parametrize("cond", ["<+v.a>", "1 ==", "(true", "true false"])
def test_conditions_that_are_not_booleans(cond):
    with pytest.raises(ValueError):
        evaluate_condition(cond, lambda e: "yes")


# ---------------------------------------------------------------- input sets


def test_input_set_overlays_by_identifier_and_name():
    base = {
        "stages": [
            {"stage": {"identifier": "a", "spec": {"x": "<+input>", "y": 1}}},
            {"stage": {"identifier": "b", "spec": {}}},
        ],
        "variables": [{"name": "v", "value": "<+input>"}, {"name": "w", "value": 2}],
    }
    over = {
        "stages": [{"stage": {"identifier": "b", "spec": {"z": 3}}}, {"stage": {"identifier": "nope"}}],
        "variables": [{"name": "v", "value": "given"}],
    }
    got = overlay(base, over)
    assert got["stages"][0]["stage"]["spec"] == {"x": "<+input>", "y": 1}
    assert got["stages"][1]["stage"]["spec"] == {"z": 3}
    assert got["variables"] == [{"name": "v", "value": "given"}, {"name": "w", "value": 2}]
    assert base["variables"][0]["value"] == "<+input>"  # the pipeline itself is untouched


# ---------------------------------------------------------------- checks


def test_seed_pipeline_checks_clean_and_its_deploy_step_is_recognised():
    ws = load_workspace(SAMPLES / "hello-world")
    stages, errors = check_pipeline(ws.pipelines["lambdaDeploy"], ws, strict=True)
    assert errors == []
    assert [s.type for s in stages[0].steps] == ["AwsLambdaDeploy", "ShellScript"]
    assert [s.type for s in stages[0].rollback_steps] == ["AwsLambdaRollback"]


def test_unsupported_steps_and_bad_fields_name_their_line(smoke_ws):
    pipe = smoke_ws / ".harness" / "pipeline.yaml"
    text = edit(
        pipe,
        "type: AwsLambdaDeploy\n                  timeout: 10m",
        "type: JiraApproval\n                  timeout: 10 minutes",
    )
    edit(pipe, "type: StageRollback", "type: StageRolback")
    lines = pipe.read_text().splitlines()
    errors = check_workspace(load_workspace(smoke_ws))
    msgs = [str(e) for e in errors]
    approval = lines.index("                  type: JiraApproval") + 1
    assert msgs[0].startswith(f".harness/pipeline.yaml:{approval}: step 'deployawslambda' has type 'JiraApproval'")
    assert (
        "supported: AwsLambdaDeploy, AwsLambdaRollback, ShellScript, Wait, AwsLambdaTrafficShift, HarnessApproval"
        in msgs[0]
        and "approve it there, then run the pipeline" in msgs[0]
    )
    assert any(
        "failure action 'StageRolback' is not supported" in m and "did you mean 'StageRollback'" in m for m in msgs
    )
    assert text  # (the timeout of an unsupported step is not looked at)


def test_timeouts_when_and_output_variables_are_checked(smoke_ws):
    pipe = smoke_ws / ".harness" / "pipeline.yaml"
    edit(pipe, "timeout: 1m", "timeout: 1 minute")
    edit(pipe, "stageStatus: Success", "stageStatus: Succeeded")
    edit(pipe, "value: checked_version", "value: checked-version")
    msgs = [str(e) for e in check_workspace(load_workspace(smoke_ws))]
    assert any("step 'smoke': timeout '1 minute' is not a duration" in m for m in msgs)
    assert any("when.stageStatus must be one of Success, Failure, All" in m for m in msgs)
    assert any("'checked-version' is not a shell variable name" in m for m in msgs)


def test_a_trailing_newline_is_no_shell_variable_name(smoke_ws):
    pipe = smoke_ws / ".harness" / "pipeline.yaml"
    edit(pipe, "value: checked_version", 'value: "checked_version\\n"')
    msgs = [str(e) for e in check_workspace(load_workspace(smoke_ws))]
    assert any("is not a shell variable name" in m for m in msgs), msgs


def test_an_unknown_expression_in_a_script_is_found_before_anything_runs(smoke_ws, tmp_path):
    pipe = smoke_ws / ".harness" / "pipeline.yaml"
    edit(pipe, "<+serviceVariables.healthy>", "<+serviceVariables.healthz>")
    runner = Runner(
        RunSettings(smoke_ws, tmp_path / "state", "smokeDeploy"), lambda: pytest.fail("no AWS"), lambda m: None
    )
    with pytest.raises(ConfigError) as err:
        runner.prepare()
    assert "<+serviceVariables.healthz> names no variable" in str(err.value) and "did you mean 'healthy'" in str(
        err.value
    )


def test_inputs_give_artifact_and_variables(smoke_ws, tmp_path):
    runner = Runner(
        RunSettings(smoke_ws, tmp_path / "state", "smokeDeploy", inputs_file=smoke_ws / "inputs" / "release-2.yaml"),
        lambda: pytest.fail("no AWS"),
        lambda m: None,
    )
    ((stage, [(target, opts, spec, scope)]),) = runner.prepare()
    assert opts.artifact == "s3zip" and opts.variables == {"version": "2"}
    assert spec.artifact["key"] == "smoke/smoke-2.zip"
    assert runner.pipeline_fixed["pipeline.variables.notify"] == "yes"


# ---------------------------------------------------------------- targets


def test_deploy_to_all_takes_every_infrastructure_of_the_environment(smoke_ws):
    infra = (smoke_ws / ".harness" / "infrastructure.yaml").read_text()
    (smoke_ws / ".harness" / "infra2.yaml").write_text(
        infra.replace("dev_use1", "dev_usw2").replace("us-east-1", "us-west-2")
    )
    edit(smoke_ws / ".harness" / "pipeline.yaml", "deployToAll: false", "deployToAll: true")
    ws = load_workspace(smoke_ws)
    pipe = ws.pipelines["smokeDeploy"]
    ((path, stage),) = [(s.path, s.body) for s in check_pipeline(pipe, ws)[0]]
    assert [t.infrastructure for t in stage_targets(ws, pipe, path, stage, Options())] == ["dev_use1", "dev_usw2"]


# ---------------------------------------------------------------- provisioner outputs


def test_provisioner_output_shapes():
    assert parse_outputs({"region_name": {"value": "eu-west-1", "type": "string", "sensitive": False}}, "f") == {
        "region_name": "eu-west-1"
    }
    assert parse_outputs({"region_name": "eu-west-1", "n": 2}, "f") == {"region_name": "eu-west-1", "n": 2}
    with pytest.raises(ConfigError):
        parse_outputs(["x"], "f")


def test_region_from_a_script_provisioner_and_validate_runs_nothing(smoke_ws):
    edit(
        smoke_ws / ".harness" / "infrastructure.yaml",
        "region: us-east-1",
        "region: <+provisioner.region_name>\n    provisioner:\n      type: Script\n"
        '      script: |\n        touch ran\n        echo \'{"region_name": {"value": "eu-west-1"}}\'',
    )
    ws = load_workspace(smoke_ws)
    live = render(ws, Options(artifact="s3zip", provisioner={"outputs": None, "live": True}))
    assert live.functions[0].region == "eu-west-1" and (smoke_ws / "ran").exists()
    (smoke_ws / "ran").unlink()
    offline = render(ws, Options(artifact="s3zip", provisioner={"outputs": None, "live": False}))
    assert offline.functions[0].region == "(provisioner.region_name)" and not (smoke_ws / "ran").exists()


def test_missing_outputs_say_where_they_were_looked_for(smoke_ws):
    edit(smoke_ws / ".harness" / "infrastructure.yaml", "region: us-east-1", "region: <+provisioner.region_name>")
    ws = load_workspace(smoke_ws)
    with pytest.raises(ConfigError) as err:
        render(ws, Options(provisioner={"outputs": {"vpc": "v"}, "source": "tf.json", "live": True}))
    assert str(err.value).startswith(".harness/infrastructure.yaml:")
    assert "provisioner output 'region_name' not found; looked in --provisioner-outputs tf.json (has: vpc)" in str(
        err.value
    )
    infra = ws.infrastructures[("dev", "dev_use1")]
    with pytest.raises(KeyError):
        resolver(ws, infra, {"outputs": None})("region_name")


# ---------------------------------------------------------------- scripts


def test_script_output_variables_and_environment(tmp_path):
    lines = []
    got = run_script(
        'echo "hello $WHO"; answer=42; other="two words"',
        {"WHO": "world", "PATH": "/usr/bin:/bin"},
        tmp_path,
        10,
        [("answer", "answer"), ("phrase", "other"), ("unset", "nope")],
        lines.append,
    )
    assert got.exit_code == 0 and not got.timed_out
    assert lines == ["hello world"]
    assert got.outputs == {"answer": "42", "phrase": "two words"}


def test_script_outputs_survive_a_failing_exit(tmp_path):
    got = run_script("result=bad; exit 3", {"PATH": "/usr/bin:/bin"}, tmp_path, 10, [("result", "result")])
    assert got.exit_code == 3 and got.outputs == {"result": "bad"}


def test_script_timeout_kills_the_process_group(tmp_path):
    marker = tmp_path / "survived"
    t0 = time.monotonic()
    got = run_script(f"(sleep 3; touch {marker}) & sleep 30", {"PATH": "/usr/bin:/bin"}, tmp_path, 1, [])
    assert got.timed_out and time.monotonic() - t0 < 6
    time.sleep(3.5)
    assert not marker.exists()  # the background child was killed with the group


def test_errors_are_collected(smoke_ws, tmp_path):
    pipe = smoke_ws / ".harness" / "pipeline.yaml"
    edit(pipe, "type: ShellScript\n                  name: Report", "type: Http\n                  name: Report")
    edit(pipe, "type: ShellScript\n                  name: Notify", "type: Email\n                  name: Notify")
    runner = Runner(
        RunSettings(smoke_ws, tmp_path / "state", "smokeDeploy"), lambda: pytest.fail("no AWS"), lambda m: None
    )
    with pytest.raises(ErrorList) as err:
        runner.prepare()
    assert [e.message.split(",")[0] for e in err.value.errors] == [
        "step 'report' has type 'Http'",
        "step 'notify' has type 'Email'",
    ]
    assert json.dumps([str(e) for e in err.value.errors])


def _script(ident: str, script: str, **extra) -> dict:
    return {
        "step": {
            "type": "ShellScript",
            "name": ident,
            "identifier": ident,
            "timeout": "10s",
            **extra,
            "spec": {"shell": "Bash", "source": {"type": "Inline", "spec": {"script": script}}},
        }
    }


def _on(errors: list, action: dict) -> list:
    return [{"onFailure": {"errors": errors, "action": action}}]


def test_failure_strategies_and_step_groups_without_aws(smoke_ws, tmp_path):
    """Scripts only (no deploy step): Ignore in a step group goes on, Retry retries then
    MarkAsFailure fails the stage without rollback, and a stageStatus Failure step runs after it."""
    from ruamel.yaml import YAML

    pipe = smoke_ws / ".harness" / "pipeline.yaml"
    data = YAML(typ="safe").load(pipe.read_text())
    stage = data["pipeline"]["stages"][0]["stage"]
    retry = {
        "type": "Retry",
        "spec": {"retryCount": 2, "retryIntervals": ["1s"], "onRetryFailure": {"action": {"type": "MarkAsFailure"}}},
    }
    stage["spec"]["execution"]["steps"] = [
        {
            "stepGroup": {
                "name": "checks",
                "identifier": "checks",
                "steps": [_script("flaky", "exit 2", failureStrategies=_on(["AllErrors"], {"type": "Ignore"}))],
            }
        },
        _script("stubborn", "echo try >> tries; exit 1", failureStrategies=_on(["Unknown"], retry)),
        _script("after", "echo never"),
        _script("onfailure", "echo cleaning up", when={"stageStatus": "Failure"}),
    ]
    pipe.write_text(json.dumps(data, indent=2))
    runner = Runner(
        RunSettings(smoke_ws, tmp_path / "state", "smokeDeploy"), lambda: pytest.fail("no AWS"), lambda m: None
    )
    assert runner.run() == "Failed"
    got = {s["step"]: s for s in runner.summary()["steps"]}
    assert got["flaky"]["status"] == "IgnoreFailed"
    assert got["stubborn"]["status"] == "Failed" and got["stubborn"]["reason"] == "MarkAsFailure"
    assert (smoke_ws / "tries").read_text().count("try") == 3  # once, then two retries
    assert got["after"]["status"] == "Skipped"
    assert got["onfailure"]["status"] == "Success" and got["onfailure"]["output"] == "cleaning up"
    assert not any(s["phase"] == "rollback" for s in runner.summary()["steps"])  # MarkAsFailure: no rollback
