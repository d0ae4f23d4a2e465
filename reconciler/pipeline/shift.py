"""The pipeline step types of progressive delivery: `AwsLambdaTrafficShift` (set the weight
of the new version on the stage's alias) and `HarnessApproval` (a person says yes).

A stage with traffic-shift steps deploys with its alias held: `AwsLambdaDeploy` publishes
and records a rollout (`hold`, see reconciler.engine.traffic) while the alias stays on the
old version; each shift step sets `spec.trafficPercentage` of the alias's traffic on the new
version and records it in the state (the alias as Lambda answered, and the step in the
deploy's rollout record), 100 moves it fully. The alarms of the matching `rollout:` rule of
reconciler.yaml are read before every execution step while the alias is held. The stage's
rollback (AwsLambdaRollback) puts the old version back at 100%."""

from __future__ import annotations

import select
import sys
import time
from typing import Any

from reconciler.engine import rollout as ro
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.model import FunctionPlan, FunctionSpec
from reconciler.store import state as st
from reconciler.workspace.load import Entity

# the runner's StepDef, StageRun and Runner (this module does not import the runner: it imports this one)
StepDef = Any
StageRun = Any
Runner = Any

SHIFT = "AwsLambdaTrafficShift"
APPROVAL = "HarnessApproval"


class Refused(ReconcilerError):
    """A traffic-shift or approval step failed; `error_type` is its Harness error type (the
    failure strategies match on it)."""

    def __init__(self, message: str, error_type: str = "Unknown"):
        super().__init__(message)
        self.error_type = error_type


# ---------------------------------------------------------------- checks (before anything runs)


def check_step(pipe: Entity, s: StepDef, earlier: list[StepDef]) -> list[ConfigError]:
    """A traffic-shift step's percentage and its place after an AwsLambdaDeploy; an
    approval's message."""
    spec = s.body.get("spec") or {}
    at = (*s.path, "spec")
    errs: list[ConfigError] = []
    if s.type == SHIFT:
        value = spec.get("trafficPercentage")
        if not (isinstance(value, str) and "<+" in value):
            try:
                ro.traffic_percentage(value)
            except ValueError as exc:
                errs.append(
                    pipe.error((*at, "trafficPercentage"), f"{SHIFT} step '{s.identifier}': trafficPercentage {exc}")
                )
        if s.phase == "execution" and not any(e.type == "AwsLambdaDeploy" for e in earlier):
            errs.append(
                pipe.error(
                    s.path,
                    f"{SHIFT} step '{s.identifier}' comes before any AwsLambdaDeploy step of its stage: "
                    "there is no new version to shift traffic to",
                )
            )
    elif s.type == APPROVAL:
        message = spec.get("approvalMessage")
        if message is not None and not isinstance(message, str):
            errs.append(
                pipe.error((*at, "approvalMessage"), f"{APPROVAL} step '{s.identifier}': approvalMessage must be text")
            )
    return errs


def shift_percentages(steps: list[StepDef]) -> list[float]:
    """The percentages a stage's traffic-shift steps set, in order (an expression counts as 0
    until it runs)."""
    out = []
    for s in steps:
        if s.type == SHIFT:
            try:
                out.append(ro.traffic_percentage((s.body.get("spec") or {}).get("trafficPercentage")))
            except ValueError:
                out.append(0.0)
    return out


# ---------------------------------------------------------------- the deploy of such a stage


def hold(fp: FunctionPlan, spec: FunctionSpec, rules: list[ro.Rule], steps: list[StepDef], lam, log) -> str | None:
    """Make the deploy publish without moving the alias that the stage's traffic-shift steps
    move (the matching rule's alias, or the function's only one). Returns that alias, or
    None when it moves at once (a new alias or function, no new version, or weights Lambda
    cannot give, said in the log)."""
    from reconciler.engine.traffic import rollout_alias

    rule = ro.rule_for(rules, spec.service, spec.environment, spec.infrastructure)
    alias = rollout_alias(rule or ro.Rule(match={}, schedule=ro.ALL_AT_ONCE), spec)
    if alias is None or fp.action != "update":
        return None
    moves = next((c for c in fp.changes if c.kind == "alias" and c.path == alias and c.action == "update"), None)
    if moves is None:
        return None
    new = str(moves.new)
    old = str((((fp.live or {}).get("aliases") or {}).get(alias) or {}).get("version"))
    got = lam.get_function(spec.name, old) if old.isdigit() else None
    definition = next((a for a in spec.aliases if a["Name"] == alias), {})
    why = ro.gradual_impossible(
        alias,
        {"version": old},
        (got or {}).get("Configuration"),
        spec.config,
        new.isdigit(),
        (definition.get("RoutingConfig") or {}).get("AdditionalVersionWeights"),
    )
    if why is not None:
        log(f"alias {alias} moves to the new version at once: {why}")
        return None
    ids = [s.identifier for s in steps if s.type == SHIFT]
    schedule = ro.Schedule(
        "pipeline", SHIFT, tuple(ro.Step(p, 0) for p in shift_percentages(steps)) or (ro.Step(100.0, 0),)
    )
    fp.rollout = {
        "alias": alias,
        "from": old,
        "to": new,
        "schedule": schedule.to_dict(),
        "alarms": list(rule.alarms) if rule else [],
        "errors_alarm": None,
        "source": rule.source if rule else "",
        "description": f"moved by the steps {', '.join(ids)}",
        "impossible": None,
        "resume": None,
        "hold": True,
    }
    return alias


# ---------------------------------------------------------------- running


def _held(state: st.State, sr: StageRun) -> dict | None:
    """This stage's deploy record whose rollout is still shifting, or None."""
    return next(
        (
            h
            for h in reversed(state.history)
            if h.get("id") in sr.deployed and (h.get("rollout") or {}).get("status") == "shifting"
        ),
        None,
    )


def check_alarms(runner: Runner, sr: StageRun) -> None:
    """While this stage holds its alias, the matching rule's alarms must not be in ALARM."""
    from reconciler.aws.cloudwatch import CloudWatch

    spec = sr.spec
    rule = ro.rule_for(runner.settings.rollout_rules, spec.service, spec.environment, spec.infrastructure)
    if rule is None or not rule.alarms or not sr.deployed:
        return
    state = st.load(runner.settings.state_dir, spec.environment, spec.infrastructure)
    if _held(state, sr) is None:
        return
    alarm = CloudWatch(runner.aws, spec.region, spec.connector).first_in_alarm(rule.alarms)
    if alarm:
        raise Refused(f"alarm {alarm} is in ALARM (rollout rule at {rule.source})", "Verification")


def run_shift(runner: Runner, sr: StageRun, step: StepDef) -> dict:
    """Set the weight of the stage's new version on its held alias."""
    from reconciler.aws.client import Lambda
    from reconciler.engine.traffic import put_weight

    raw = sr.resolve(
        (step.body.get("spec") or {}).get("trafficPercentage"), (*step.path, "spec", "trafficPercentage"), step
    )
    try:
        weight = ro.traffic_percentage(raw)
    except ValueError as exc:
        raise Refused(f"trafficPercentage {exc}") from None
    s, spec = runner.settings, sr.spec
    with st.locked(st.state_path(s.state_dir, spec.environment, spec.infrastructure), "apply", timeout=s.lock_timeout):
        state = st.load(s.state_dir, spec.environment, spec.infrastructure)
        applied = _held(state, sr)
        if applied is None:
            runner.log("   no new version of this stage holds an alias back: there is no traffic to shift")
            return {"trafficPercentage": f"{weight:g}", "shifted": "false"}
        rec = applied["rollout"]
        name, old, new = str(rec["alias"]), str(rec["from"]), str(rec["to"])
        alias = next((a for a in spec.aliases if a["Name"] == name), {"Name": name})
        view = put_weight(Lambda(runner.aws, spec.region, spec.connector), spec.name, alias, old, new, weight)
        rec["steps"].append({"index": len(rec["steps"]), "weight": weight, "at": time.time(), "step": step.identifier})
        applied.setdefault("steps", []).append(
            {"at": st.now(), "step": f"alias {name}: {ro.pct(weight)} on version {new} ({step.identifier})"}
        )
        if weight >= 100:
            rec["status"] = "completed"
        entry = state.functions.get(spec.name)
        if entry is not None:
            entry.setdefault("aliases", {})[name] = view
        state.write()
    runner.log(
        f"   alias {name}: {ro.pct(weight)} of the traffic on version {new}" + (" (all of it)" if weight >= 100 else "")
    )
    return {"alias": name, "version": new, "trafficPercentage": f"{weight:g}"}


def run_approval(runner: Runner, sr: StageRun, step: StepDef, timeout: float) -> dict:
    """Approved by `--approve STEP_ID`, or by a person on a terminal within the step's
    timeout; otherwise a rejection (ApprovalRejection), or Timeout when nobody answered."""

    spec = step.body.get("spec") or {}
    message = sr.resolve(spec.get("approvalMessage") or "", (*step.path, "spec", "approvalMessage"), step)
    if message:
        runner.log(f"   {message}")
    if step.identifier in runner.settings.approve:
        runner.log(f"   approved with --approve {step.identifier}")
        return {"approved": "true", "approvedBy": "--approve"}
    if not sys.stdin.isatty():
        raise Refused(
            f"approval '{step.identifier}' needs a person: run on a terminal, or approve it with --approve "
            f"{step.identifier}",
            "ApprovalRejection",
        )
    print(
        f"   approve step {step.identifier}? [y/N] (within {ro.fmt_seconds(timeout)}) ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        print(file=sys.stderr)
        raise Refused(f"approval '{step.identifier}' was not answered within {ro.fmt_seconds(timeout)}", "Timeout")
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise Refused(f"approval '{step.identifier}' was rejected", "ApprovalRejection")
    runner.log("   approved on the terminal")
    return {"approved": "true", "approvedBy": "terminal"}


def check_approvals(pipe: Entity, steps: list[Any], approve: tuple[str, ...]) -> list[ConfigError]:
    """Every `--approve STEP_ID` names a HarnessApproval step of the pipeline."""
    ids = {s.identifier for s in steps if s.type == APPROVAL}
    return [
        ConfigError(
            f"--approve {a}: pipeline '{pipe.identifier}' has no {APPROVAL} step '{a}'"
            + (f" (its approvals: {', '.join(sorted(ids))})" if ids else "")
        )
        for a in approve
        if a not in ids
    ]
