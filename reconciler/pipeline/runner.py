"""`reconciler run PIPELINE`: the runner of a Harness pipeline's Deployment stages, steps and
rollback steps.

A stage deploys to its targets (service x environment x each infrastructure definition, or
every infrastructure of the environment with `deployToAll: true`); with several targets the
stage runs once per target, like Harness's multi-infrastructure stages. Its steps run in
order, each through its type's module in `step_types.STEP_TYPES` (AwsLambdaDeploy,
AwsLambdaRollback, ShellScript, Wait and the provisioner kinds).

A stage's `environment.provisioner` steps run before its execution steps, and their outputs
are the target's `<+provisioner.NAME>` values; its rollbackSteps run after the execution's
rollback steps (reconciler.pipeline.provisioners, hooked in here).

`when` (stageStatus Success|Failure|All and a condition), `timeout`, `failureStrategies`
(`strategies`: StageRollback, PipelineRollback, Abort, MarkAsFailure, Ignore, MarkAsSuccess,
Retry, ManualIntervention -> its onTimeout action) and step groups (flattened) are honoured.
Runtime inputs come from an input set file (`--inputs FILE`), `--var` and `--artifact`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, ErrorList, ReconcilerError, did_you_mean
from reconciler.model import FunctionSpec, Target
from reconciler.pipeline import provisioners, shift
from reconciler.pipeline.checks import check_pipeline
from reconciler.pipeline.conditions import evaluate_condition, parse_duration
from reconciler.pipeline.inputs import load_inputs, overlay, unresolved_inputs
from reconciler.pipeline.model import RunSettings, StageDef, StageResult, StepDef, StepFailed, StepResult
from reconciler.pipeline.stage import StageRun, stage_options
from reconciler.pipeline.step_base import StepContext
from reconciler.pipeline.step_types import STEP_TYPES
from reconciler.pipeline.strategies import GOES_ON, ROLLS_BACK, STOPS, decide, strategy_for
from reconciler.store import state as st
from reconciler.util import secrets as sec
from reconciler.workspace.expr import Scope
from reconciler.workspace.load import Entity, Workspace, load_workspace, pipe_skipped_stages
from reconciler.workspace.render import Options, render_target, stage_targets, target_scope, variable_input

DEFAULT_TIMEOUT = "10m"

# what prepare() gives: each stage with its targets, rendered
Prepared = list[tuple[StageDef, list[tuple[Target, Options, FunctionSpec, Scope]]]]


class Runner:
    """One run of one pipeline: prepare (load, check, render every stage target), then run
    its stages and steps; `summary()` and `summary_text()` report what ran."""

    ws: Workspace
    pipe: Entity

    def __init__(self, settings: RunSettings, aws_factory: Callable[[], Any], log: Callable[[str], None]):
        self.settings = settings
        self.aws_factory = aws_factory
        self._aws = None
        self.log = log
        self.steps: list[StepResult] = []
        self.stage_results: list[StageResult] = []
        self.outputs_fixed: dict[str, Any] = {}
        self.pipeline_fixed: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.skipped: list[tuple[tuple, dict, str]] = []  # stages that are not reconciler's: (path, stage, why)
        # (stage identifier, target) -> what the stage run's provisioner steps did (reconciler.pipeline.provisioners)
        self.provisioning: dict[tuple, dict] = {}
        self.status = "Failed"  # until run() says otherwise
        self.duration = 0.0
        # scrubs every output (step output and output variables included) of secret values, the
        # runner's credentials among them; add() what else must not be shown
        self.masker = sec.Masker()
        sec.remember_credentials()

    @property
    def aws(self):
        if self._aws is None:
            self._aws = self.aws_factory()
        return self._aws

    # ------------------------------------------------------------ preparing
    def prepare(self) -> Prepared:
        """Load, apply the inputs, check the pipeline and render every stage target: all
        before anything runs, every problem reported together."""
        s = self.settings
        self.ws = load_workspace(s.workspace, s.state_dir)
        self.pipe = self._pipeline()
        stages, errors = check_pipeline(self.pipe, self.ws, strict=True)
        errors += unresolved_inputs(self.pipe, stages, s.variables)
        errors += shift.check_approvals(self.pipe, [st_ for stage in stages for st_ in stage.steps], tuple(s.approve))
        self.skipped = pipe_skipped_stages(self.ws, self.pipe)
        if errors:  # (each as found: not folded like the render errors below)
            raise errors[0] if len(errors) == 1 else ErrorList(list[ReconcilerError](errors))
        self.pipeline_fixed = self._pipeline_values()
        plan: Prepared = []
        render_errors: list[ReconcilerError] = []
        for stage in stages:
            items = self._render_stage(stage, render_errors)
            if items is not None:
                plan.append((stage, items))
        _raise_all(render_errors)
        # every script and condition must resolve (output variables of earlier steps stand in as "")
        for stage, items in plan:
            for t, opts, spec, scope in items:
                errors += self._check_expressions(stage, t, opts, spec, scope)
        _raise_all(errors)
        return plan

    def _pipeline(self) -> Entity:
        """The pipeline to run, with the input set laid over it."""
        s = self.settings
        if s.pipeline not in self.ws.pipelines:
            hint = did_you_mean(s.pipeline, self.ws.pipelines)
            raise ConfigError(
                f"no pipeline '{s.pipeline}' in the workspace; defined: {', '.join(sorted(self.ws.pipelines)) or 'none'}",
                hint=hint if hint and hint.startswith("did you mean") else None,
            )
        pipe = self.ws.pipelines[s.pipeline]
        if s.inputs_file:
            over, _ = load_inputs(Path(s.inputs_file), pipe.identifier)
            pipe = Entity(pipe.kind, pipe.identifier, pipe.name, overlay(pipe.body, over), pipe.doc)
        return pipe

    def _pipeline_values(self) -> dict[str, Any]:
        """The <+pipeline.*> values of this run."""
        pipe = self.pipe
        fixed: dict[str, Any] = {
            "pipeline.name": pipe.name,
            "pipeline.identifier": pipe.identifier,
            "pipeline.executionId": str(uuid.uuid4()),
            "pipeline.sequenceId": 1,
            "pipeline.startTs": int(time.time() * 1000),
        }
        for v in pipe.body.get("variables") or []:
            if isinstance(v, dict) and "name" in v:
                fixed[f"pipeline.variables.{v['name']}"] = variable_input(v, self.settings.variables)
        return fixed

    def _render_stage(
        self, stage: StageDef, errors: list[ReconcilerError]
    ) -> list[tuple[Target, Options, FunctionSpec, Scope]] | None:
        """Each target of the stage rendered (None when its targets cannot be known); the problems join `errors`."""
        s = self.settings
        given: dict[str, Any] = {"provisioner": s.provisioner} if s.provisioner is not None else {}
        base = Options(
            services=[], environments=[], infrastructures=[], variables=dict(s.variables), artifact=s.artifact, **given
        )
        try:
            tgts = stage_targets(self.ws, self.pipe, stage.path, stage.body, base)
        except ReconcilerError as exc:
            errors.append(exc)
            return None
        if not tgts:
            errors.append(self.pipe.error(stage.path, f"stage '{stage.identifier}' deploys to no infrastructure"))
        items = []
        for t in tgts:
            opts = stage_options(s, stage, t)
            if stage.provision_steps:  # its outputs are known once the steps have run
                opts.provisioner = provisioners.pending_settings(opts.provisioner)
            try:
                warnings: list[str] = []
                spec = render_target(self.ws, t, opts, warnings)
                self.warnings += warnings
                items.append((t, opts, spec, target_scope(self.ws, t, opts)))
            except ErrorList as exc:
                errors.extend(exc.errors)
            except ReconcilerError as exc:
                errors.append(exc)
        return items

    def _check_expressions(
        self, stage: StageDef, t: Target, opts: Options, spec: FunctionSpec, scope: Scope
    ) -> list[ConfigError]:
        """Every expression of the stage's steps resolves for this target; each ShellScript
        step's output variables stand as "" for the steps after it."""
        sr = StageRun(self, stage, t, opts, spec, scope)
        errs: list[ConfigError] = []
        for s in stage.provision_steps + stage.provision_rollback_steps:
            for value, path in provisioners.step_strings(s):
                errs += _try(partial(sr.resolve, value, path, s))
        for s in stage.steps + stage.rollback_steps:
            errs += _step_expressions(sr, s)
            if s.type == "ShellScript":
                for v in (s.body.get("spec") or {}).get("outputVariables") or []:
                    self.outputs_fixed[
                        f"pipeline.stages.{stage.identifier}.spec.execution.steps.{s.identifier}"
                        f".output.outputVariables.{v['name']}"
                    ] = ""
        return errs

    # ------------------------------------------------------------ running
    def run(self) -> str:
        """Execute; the pipeline's status: Success, Failed or Aborted."""
        t0 = time.monotonic()
        plan = self.prepare()  # (declared output variables stand as "" until their step sets them)
        for w in self.warnings:
            self.log(f"warning: {w}")
        self.log(f"Pipeline {self.pipe.identifier} ({self.pipe.name}): {sum(len(i) for _, i in plan)} stage run(s)")
        self._report_skipped_stages()
        status = "Success"
        done: list[StageRun] = []
        for stage, items in plan:
            for t, opts, spec, scope in items:
                sr = StageRun(self, stage, t, opts, spec, scope)
                if self._skip_stage(sr, status):
                    continue
                outcome = self._run_stage(sr)
                self.stage_results.append(sr.result)
                if outcome == "PipelineRollback":
                    for prev in reversed(done):
                        self.log(f"\n== pipeline rollback: stage {prev.stage.name} [{prev.target}]")
                        self._rollback(prev, f"pipeline rollback after stage '{stage.identifier}' failed")
                done.append(sr)
                if sr.result.status == "Aborted":
                    status = "Aborted"
                elif sr.result.status == "Failed" and status == "Success":
                    status = "Failed"
            if status == "Aborted":
                break
        self.status = status
        self.duration = time.monotonic() - t0
        self.log(f"\nPipeline {self.pipe.identifier}: {status} ({self.duration:.1f}s)")
        return status

    def _report_skipped_stages(self) -> None:
        """The stages that are not reconciler's (CI, Custom, Approval, ...), as skipped."""
        for _path, stage, why in self.skipped:
            self.stage_results.append(
                StageResult(
                    str(stage.get("identifier")),
                    str(stage.get("name") or stage.get("identifier")),
                    None,
                    status="Skipped",
                    reason=why,
                )
            )
            self.log(f"== stage {stage.get('name') or stage.get('identifier')}: skipped ({why})")

    def _skip_stage(self, sr: StageRun, pipeline_status: str) -> bool:
        """Whether the stage's `when` skips it; if so, it and its steps are recorded as skipped."""
        skip = self._stage_skipped(sr, pipeline_status)
        if not skip:
            return False
        sr.result.status, sr.result.reason = "Skipped", skip
        self.stage_results.append(sr.result)
        self.log(f"\n== stage {sr.stage.name} [{sr.target}]: skipped ({skip})")
        for s in sr.stage.steps:
            self.record_skip(sr, s, f"stage skipped: {skip}")
        return True

    def _stage_skipped(self, sr: StageRun, pipeline_status: str) -> str | None:
        when = sr.stage.body.get("when") or {}
        want = when.get("pipelineStatus", "Success") if isinstance(when, dict) else "Success"
        if want == "Success" and pipeline_status != "Success":
            return "an earlier stage failed"
        if want == "Failure" and pipeline_status == "Success":
            return "when.pipelineStatus is Failure and the pipeline has not failed"
        cond = when.get("condition") if isinstance(when, dict) else None
        if cond is not None and not self._condition(sr, None, cond, (*sr.stage.path, "when", "condition")):
            return f"when.condition {cond!r} evaluated to false"
        return None

    def _condition(self, sr: StageRun, step: StepDef | None, cond: Any, path: tuple) -> bool:
        try:
            return evaluate_condition(cond, lambda e: sr.resolve(e, path, step))
        except ValueError as exc:
            raise self.pipe.error(path, f"when.condition {cond!r}: {exc}") from None

    def _run_stage(self, sr: StageRun) -> str | None:
        """The stage's provisioner and execution steps; rolled back when a failure strategy
        says so. The action a failure took, if it stopped the stage."""
        stage = sr.stage
        self.log(f"\n== stage {stage.name} [{sr.target}, {sr.spec.region}]")
        action_taken = self._run_steps(sr)
        if sr.failed:
            sr.result.status = "Aborted" if action_taken == "Abort" else "Failed"
        else:
            sr.result.status = "Success"
        # the steps after a stop are reported as skipped
        ran = {(r.step, r.phase) for r in self.steps if r.stage == stage.identifier and r.target == sr.target}
        for step in stage.provision_steps + stage.steps:
            if (step.identifier, step.phase) not in ran:
                self.record_skip(sr, step, f"the stage stopped ({action_taken})")
        if action_taken in ROLLS_BACK:
            self._rollback(sr, f"step failed in stage '{stage.identifier}' ({action_taken})")
        return action_taken

    def _run_steps(self, sr: StageRun) -> str | None:
        """Run the steps in order until one's failure stops the stage: that action, else None."""
        stage = sr.stage
        for step in stage.provision_steps + stage.steps:
            if stage.steps and step is stage.steps[0] and stage.provision_steps and not sr.failed:
                failed = provisioners.provisioned(self, sr)  # the target rendered again with the provisioner outputs
                if failed is not None:
                    self.steps.append(failed)
                    sr.failed = True
                    return "StageRollback"
            try:
                skip, early = self._step_skipped(sr, step), None
            except ReconcilerError as exc:  # a condition that cannot be evaluated fails the step
                skip, early = None, exc
            if skip:
                self.record_skip(sr, step, skip)
                continue
            res = self._run_step_with_strategy(sr, step, early)
            if res.status == "Failed" and res.reason in STOPS:
                return res.reason
        return None

    def _step_skipped(self, sr: StageRun, step: StepDef) -> str | None:
        whens = list(step.group_when) + ([(step.body["when"], (*step.path, "when"))] if step.body.get("when") else [])
        if not whens and sr.failed:
            return "an earlier step failed (stageStatus Success)"
        for when, path in whens:
            if not isinstance(when, dict):
                continue
            want = when.get("stageStatus", "Success")
            if want == "Success" and sr.failed:
                return "an earlier step failed (stageStatus Success)"
            if want == "Failure" and not sr.failed:
                return "stageStatus Failure and no step has failed"
            cond = when.get("condition")
            if cond is not None and not self._condition(sr, step, cond, (*path, "condition")):
                return f"when.condition {cond!r} evaluated to false"
        return None

    def record_skip(self, sr: StageRun, step: StepDef, reason: str) -> None:
        """The step is reported as skipped, and why."""
        r = StepResult.of(sr.stage, sr.target, step, status="Skipped", reason=reason)
        self.steps.append(r)
        self.log(f"-- step {step.name} ({step.type}): skipped: {reason}")

    def _run_step_with_strategy(self, sr: StageRun, step: StepDef, early: ReconcilerError | None = None) -> StepResult:
        """Run the step; on failure, take the action its failure strategy gives."""
        attempt = 0
        while True:
            res = self._run_step(sr, step, early)
            if res.status != "Failed":
                return res
            action = strategy_for(step, sr.stage.body, self.pipe.body, res.error_type or "Unknown")
            decision = decide(action, attempt, self.log)
            if decision.retry_in is not None:
                attempt += 1
                self.steps.remove(res)
                time.sleep(decision.retry_in)
                continue
            res.reason = decision.kind
            if decision.kind in GOES_ON:
                res.status = "IgnoreFailed" if decision.kind == "Ignore" else "Success"
                self.log(f"   failure strategy {decision.kind}: the stage goes on")
                return res
            sr.failed = True
            self.log(f"   failure strategy: {decision.kind}")
            return res

    def _run_step(self, sr: StageRun, step: StepDef, early: ReconcilerError | None = None) -> StepResult:
        """Run one step through its type (`early`: the error that fails it before it runs)."""
        r = StepResult.of(sr.stage, sr.target, step, started_at=st.now())
        self.steps.append(r)
        self.log(f"-- step {step.name} ({step.type})")
        t0 = time.monotonic()
        try:
            if early is not None:
                raise early
            timeout = parse_duration(
                sr.resolve(step.body.get("timeout") or DEFAULT_TIMEOUT, (*step.path, "timeout"), step)
            )
            if step.phase == "execution" and step.type != "AwsLambdaDeploy":
                shift.check_alarms(self, sr)  # the stage holds its alias back: the rule's alarms gate every step
            got = STEP_TYPES[step.type].run(StepContext(self, sr, step, timeout))
            r.outputs, r.output = got.outputs, got.output
            r.status = "Success"
        except StepFailed as exc:
            r.status, r.error, r.error_type = "Failed", str(exc), exc.error_type
            r.outputs, r.output = exc.outputs, exc.output
        except ReconcilerError as exc:  # shift.Refused carries its error type
            r.status, r.error, r.error_type = "Failed", str(exc), getattr(exc, "error_type", "Unknown")
        r.duration = time.monotonic() - t0
        if r.outputs:
            sr.outputs[step.identifier] = r.outputs
            self._publish_outputs(sr, step, r.outputs)
        self.log(f"   {step.name}: {r.status}" + (f": {r.error}" if r.error else "") + f" ({r.duration:.1f}s)")
        return r

    def _publish_outputs(self, sr: StageRun, step: StepDef, outputs: dict) -> None:
        base = f"pipeline.stages.{sr.stage.identifier}.spec.execution.steps"
        for k, v in outputs.items():
            for prefix in [f"{base}.{step.identifier}"] + (
                [f"{base}.{step.group}.steps.{step.identifier}"] if step.group else []
            ):
                self.outputs_fixed[f"{prefix}.output.outputVariables.{k}"] = v
                self.outputs_fixed[f"{prefix}.output.{k}"] = v

    # ------------------------------------------------------------ rollback
    def _rollback(self, sr: StageRun, reason: str) -> None:
        """The stage's rollback steps: the execution's, then the provisioner's."""
        sr.result.rolled_back = True
        self.log(f"\n== rollback of stage {sr.stage.name} [{sr.target}]: {reason}")
        rb_failed = False
        for step in provisioners.rollback_steps(self, sr):
            skip = self._rollback_step_skipped(sr, step)
            if skip:
                self.record_skip(sr, step, skip)
                continue
            if rb_failed:
                self.record_skip(sr, step, "an earlier rollback step failed")
                continue
            res = self._run_step(sr, step)
            if res.status == "Failed":
                rb_failed = True
        if rb_failed:
            sr.result.reason = "rollback failed"
        elif not sr.stage.rollback_steps:
            self.log("   the stage has no rollbackSteps")

    def _rollback_step_skipped(self, sr: StageRun, step: StepDef) -> str | None:
        """A rollback step runs unless its own when.condition is false."""
        when = step.body.get("when")
        if (
            isinstance(when, dict)
            and when.get("condition") is not None
            and not self._condition(sr, step, when["condition"], (*step.path, "when", "condition"))
        ):
            return f"when.condition {when['condition']!r} evaluated to false"
        return None

    # ------------------------------------------------------------ reports
    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.steps:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "pipeline": self.pipe.identifier,
            "name": self.pipe.name,
            "status": self.status,
            "duration": round(self.duration, 3),
            "counts": counts,
            "stages": [s.to_dict() for s in self.stage_results],
            "steps": [r.to_dict() for r in self.steps],
        }

    def summary_text(self) -> str:
        rows = [
            [
                r.stage,
                r.target.infrastructure,
                r.phase,
                r.step,
                r.type,
                r.status,
                f"{r.duration:.1f}s",
                (r.error or r.reason or "")
                if r.status != "Success"
                else ", ".join(f"{k}={v}" for k, v in r.outputs.items()),
            ]
            for r in self.steps
        ]
        headers = ["stage", "infra", "phase", "step", "type", "status", "duration", "details"]
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [headers, *rows]]
        s = self.summary()
        counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(s["counts"].items()))
        skipped = [f"{r.stage} ({r.reason})" for r in self.stage_results if r.target is None and r.status == "Skipped"]
        lines += [""] + ([f"Skipped stages: {', '.join(skipped)}."] if skipped else [])
        lines += [f"Pipeline {s['pipeline']}: {s['status']} ({len(self.steps)} step(s): {counts})."]
        return "\n".join(lines) + "\n"


def _raise_all(errors: list) -> None:
    """Raise the problems found, each once (a loop's iterations share their lines)."""
    if errors:
        uniq = list({str(e): e for e in errors}.values())
        raise uniq[0] if len(uniq) == 1 else ErrorList(uniq)


def _try(fn: Callable[[], Any], ignore_value_errors: bool = False) -> list[ConfigError]:
    try:
        fn()
    except ConfigError as exc:
        return [exc]
    except ValueError:
        if not ignore_value_errors:
            raise
    return []


def _step_expressions(sr: StageRun, s: StepDef) -> list[ConfigError]:
    """The problems in resolving one execution or rollback step's expressions."""
    errs: list[ConfigError] = []
    timeout = s.body.get("timeout")
    if isinstance(timeout, str) and "<+" in timeout:
        errs += _try(partial(sr.resolve, timeout, (*s.path, "timeout"), s))
    if s.type == "ShellScript":
        errs += _try(partial(sr.script, s))
        for i, v in enumerate((s.body.get("spec") or {}).get("environmentVariables") or []):
            errs += _try(partial(sr.resolve, v.get("value"), (*s.path, "spec", "environmentVariables", i, "value"), s))
    when = s.body.get("when") or {}
    if isinstance(when, dict) and isinstance(when.get("condition"), str) and "<+" in when["condition"]:
        path = (*s.path, "when", "condition")
        errs += _try(
            partial(evaluate_condition, when["condition"], lambda e: sr.resolve(e, path, s)), ignore_value_errors=True
        )
    return errs
