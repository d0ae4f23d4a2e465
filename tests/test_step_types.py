"""The step-type seam of the pipeline: every step type in `STEP_TYPES` implements the
`StepType` protocol (phases, check, run), the pipeline check and the runner both go through
the registry (a type registered there is checked by its own check and run by its own run,
with no other change), and a `plan --pipeline` Plan keeps its provisioner steps through
to_dict/from_dict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.errors import ConfigError
from reconciler.model import Plan
from reconciler.pipeline import step_types
from reconciler.pipeline.checks import check_workspace
from reconciler.pipeline.model import RunSettings, StepDef, StepFailed
from reconciler.pipeline.runner import Runner
from reconciler.pipeline.step_base import EXECUTION_PHASES, PROVISION_PHASES, ErrorAt, StepContext, StepOutput
from reconciler.workspace.load import load_workspace

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_every_registered_step_type_has_phases_check_and_run():
    assert list(step_types.STEP_TYPES)[:4] == ["AwsLambdaDeploy", "AwsLambdaRollback", "ShellScript", "Wait"]
    for name, t in step_types.STEP_TYPES.items():
        assert t.phases in (EXECUTION_PHASES, PROVISION_PHASES), name
        assert callable(t.check) and callable(t.run), name
    assert "ShellScriptProvision" in step_types.supported("provision")
    assert "ShellScriptProvision" not in step_types.supported("execution")
    assert step_types.supported("rollback") == step_types.supported("execution")


class _Echo:
    """A step type that exists only in this test: spec.say must be text; it outputs what it says."""

    phases = EXECUTION_PHASES

    def check(self, step: StepDef, spec: dict, err: ErrorAt) -> list[ConfigError]:
        return [] if isinstance(spec.get("say"), str) else [err(("say",), f"Echo step '{step.identifier}' needs say")]

    def run(self, ctx: StepContext) -> StepOutput:
        said = ctx.sr.resolve(ctx.step.body["spec"]["say"], (*ctx.step.path, "spec", "say"), ctx.step)
        if said == "fail":
            raise StepFailed("told to fail", "Unknown", {"said": said})
        return StepOutput({"said": said}, f"said {said}")


def _pipeline_with(ws: Path, steps: list) -> None:
    pipe = ws / ".harness" / "pipeline.yaml"
    data = YAML(typ="safe").load(pipe.read_text())
    data["pipeline"]["stages"][0]["stage"]["spec"]["execution"]["steps"] = steps
    pipe.write_text(json.dumps(data, indent=2))


def _echo(ident: str, say) -> dict:
    return {"step": {"type": "Echo", "name": ident, "identifier": ident, "spec": {"say": say}}}


@pytest.fixture
def echo_registered(monkeypatch):
    monkeypatch.setitem(step_types.STEP_TYPES, "Echo", _Echo())


def test_an_unregistered_step_type_is_refused(tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(SAMPLES / "pipeline-smoke", ws)
    _pipeline_with(ws, [_echo("hello", "hi")])
    errs = check_workspace(load_workspace(ws))
    assert any("has type 'Echo', which reconciler run does not support in execution" in e.message for e in errs)


def test_a_registered_step_type_is_checked_and_run_through_the_registry(tmp_path, echo_registered):
    ws = tmp_path / "ws"
    shutil.copytree(SAMPLES / "pipeline-smoke", ws)
    _pipeline_with(ws, [_echo("bad", 3)])
    errs = check_workspace(load_workspace(ws))
    assert [e.message for e in errs] == ["Echo step 'bad' needs say"]

    _pipeline_with(
        ws,
        [
            _echo("hello", "<+stage.identifier>"),
            {
                "step": {
                    **_echo("boom", "fail")["step"],
                    "failureStrategies": [{"onFailure": {"errors": ["AllErrors"], "action": {"type": "Ignore"}}}],
                }
            },
        ],
    )
    runner = Runner(RunSettings(ws, tmp_path / "state", "smokeDeploy"), lambda: pytest.fail("no AWS"), lambda m: None)
    assert runner.run() == "Success", runner.summary_text()
    got = {s["step"]: s for s in runner.summary()["steps"]}
    assert got["hello"]["status"] == "Success"
    assert (
        got["hello"]["outputs"] == {"said": got["hello"]["stage"]}
        and got["hello"]["output"] == "said " + got["hello"]["stage"]
    )
    assert got["boom"]["status"] == "IgnoreFailed" and got["boom"]["error"] == "told to fail"
    key = f"pipeline.stages.{got['hello']['stage']}.spec.execution.steps.hello.output.outputVariables.said"
    assert runner.outputs_fixed[key] == got["hello"]["stage"]


def test_a_pipeline_plan_keeps_its_provisioner_steps_through_a_round_trip():
    info = {"pipeline": "p", "stage": "s", "steps": [{"step": "make", "type": "ShellScriptProvision"}]}
    plan = Plan(functions=[], workspace="ws", created_at="now", provisioners=[info])
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["provisioners"] == [info]
    assert Plan.from_dict(data).provisioners == [info]
    assert "provisioners" not in Plan(functions=[]).to_dict()  # a plan without them is saved as before
    assert Plan.from_dict(Plan(functions=[]).to_dict()).provisioners == []
