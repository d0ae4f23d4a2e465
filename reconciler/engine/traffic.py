"""Rollouts against AWS: what the plan says about an alias's traffic (`plan_rollout`),
and the apply's gradual shift of it (`roll_out`). The rules, schedules and the driver
loop are pure, in reconciler.engine.rollout; this module gives them Lambda and CloudWatch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.engine import rollout as ro
from reconciler.engine.live import alias_view
from reconciler.errors import ConfigError
from reconciler.model import FunctionPlan, FunctionSpec

PROGRESS_EVERY = 30.0  # seconds between two progress lines at the same weight


def _source(rule: ro.Rule) -> tuple[str | None, int | None]:
    f, _, line = rule.source.rpartition(":")
    return (f, int(line)) if line.isdigit() else (rule.source or None, None)


def rollout_alias(rule: ro.Rule, spec: FunctionSpec) -> str | None:
    """The alias a rule shifts for this function: the one it names, else the function's only
    alias; None when the function has no alias (nothing to shift). A rule naming an alias the
    function does not define among its aliases, or none when it defines several, is an error
    at the rule."""
    names = [a["Name"] for a in spec.aliases]
    if not names:
        return None
    if rule.alias is not None:
        if rule.alias not in names:
            raise ConfigError(
                f"rollout rule shifts alias '{rule.alias}', which function {spec.name} ({spec.target}) does not define "
                f"(its aliases: {', '.join(names)})",
                *_source(rule),
            )
        return rule.alias
    if len(names) > 1:
        raise ConfigError(
            f"rollout rule matches function {spec.name} ({spec.target}), which has aliases {', '.join(names)}: "
            "name the one to shift with `alias:`",
            *_source(rule),
        )
    return names[0]


@dataclass
class _Source:
    """What a planned rollout follows: an interrupted rollout's record, else a rule."""

    alias: str
    schedule: ro.Schedule
    alarms: list[str]
    errors_alarm: dict | None
    source: str


def _source_of(rule: ro.Rule | None, killed: dict | None, spec: FunctionSpec) -> _Source | None:
    if killed is not None:
        return _Source(
            alias=str(killed.get("alias")),
            schedule=ro.Schedule.from_dict(killed.get("schedule") or {}),
            alarms=list(killed.get("alarms") or []),
            errors_alarm=rule.errors_alarm if rule is not None else None,
            source=rule.source if rule is not None else "",
        )
    assert rule is not None
    found = rollout_alias(rule, spec)
    if found is None:
        return None
    return _Source(found, rule.schedule, list(rule.alarms), rule.errors_alarm, rule.source)


def _why_not_gradual(
    src: _Source, spec: FunctionSpec, old: str, new: str, rule: ro.Rule | None, lam, cloudwatch
) -> str | None:
    """Lambda's rules for a weighted alias, checked against the old version's configuration;
    then that the rule's alarms exist (a missing alarm is an error at the rule)."""
    definition = next((a for a in spec.aliases if a["Name"] == src.alias), {})
    old_conf = None
    if old.isdigit():
        got = lam.get_function(spec.name, old)
        old_conf = (got or {}).get("Configuration")
    why = ro.gradual_impossible(
        src.alias,
        {"version": old},
        old_conf,
        spec.config,
        new.isdigit(),  # the alias moves to a published version
        (definition.get("RoutingConfig") or {}).get("AdditionalVersionWeights"),
    )
    if src.alarms and why is None:
        missing = cloudwatch(spec.region, spec.connector).missing(src.alarms)
        if missing:
            raise ConfigError(
                f"rollout alarm '{missing[0]}' does not exist in CloudWatch in {spec.region}",
                *(_source(rule) if rule is not None else (None, None)),
            )
    return why


def _describe(schedule: ro.Schedule, src: _Source, rule: ro.Rule | None, resume: dict | None, why: str | None) -> str:
    description = schedule.describe()
    if rule is not None and schedule.gradual:
        stops = ro.Rule(match={}, schedule=schedule, alarms=tuple(src.alarms), errors_alarm=src.errors_alarm).stops_on()
        description += f", stops on {stops}" if stops else ""
    if resume is not None:
        description = f"resuming at {ro.pct(float(resume['weight']))}: " + description
    if why is not None:
        description += f" (no gradual shift: {why})"
    return description


def plan_rollout(
    fp: FunctionPlan,
    spec: FunctionSpec,
    live: dict,
    rules: list[ro.Rule],
    lam,
    cloudwatch,
    interrupted: dict | None = None,
) -> None:
    """Set fp.rollout for a function whose alias moves to a new version under a rollout
    rule (or an interrupted rollout to resume). Reads, never changes: the old version's
    configuration (Lambda's rules for weights) and whether the rule's alarms exist."""
    if fp.action != "update":
        return
    killed = ro.shifting(interrupted)
    rule = ro.rule_for(rules, spec.service, spec.environment, spec.infrastructure)
    if rule is None and killed is None:
        return
    src = _source_of(rule, killed, spec)
    if src is None:
        return
    moves = next((c for c in fp.changes if c.kind == "alias" and c.path == src.alias and c.action == "update"), None)
    if moves is None:
        return  # the alias does not change version: nothing to shift
    current = (live.get("aliases") or {}).get(src.alias)
    old = str(killed["from"]) if killed is not None else str((current or {}).get("version"))
    new = str(moves.new)  # the version being published, or the recorded one the alias is behind
    resume = None
    if killed is not None and str(killed.get("to")) == new:
        resume = ro.resume_point(killed, current)
    # else: a newer version (or no interrupted rollout): a new rollout from the version the alias runs
    why = _why_not_gradual(src, spec, old, new, rule, lam, cloudwatch) if src.schedule.gradual else None
    schedule = ro.ALL_AT_ONCE if why is not None else src.schedule
    fp.rollout = {
        "alias": src.alias,
        "from": old,
        "to": new,
        "schedule": schedule.to_dict(),
        "alarms": src.alarms,
        "errors_alarm": src.errors_alarm if schedule.gradual else None,
        "source": src.source,
        "description": _describe(schedule, src, rule, resume, why),
        "impossible": why,
        "resume": resume,
        "resumes": (interrupted or {}).get("id") if resume is not None else None,
    }


def gradual(planned: dict | None) -> bool:
    """Does this plan's rollout move its alias in more than one step?"""
    return planned is not None and ro.Schedule.from_dict(planned.get("schedule") or {}).gradual


@dataclass
class _Shift:
    """The driver's callbacks for one alias: set a weight through UpdateAlias, journal each
    step in the rollout record, and show progress on stderr at most every PROGRESS_EVERY
    seconds at one weight."""

    lam: Any
    fn: str
    alias: dict
    old: str
    new: str
    rec: dict
    step: Callable[[str], None]
    log: Callable[[str], None]
    clock: Callable[[], float]
    last: dict = field(default_factory=dict)
    shown: dict = field(default_factory=lambda: {"weight": -1.0, "at": 0.0})

    def set_weight(self, weight: float) -> None:
        self.last["view"] = put_weight(self.lam, self.fn, self.alias, self.old, self.new, weight)

    def record_step(self, s: dict) -> None:
        self.rec["steps"].append(s)
        self.step(f"alias {self.alias['Name']}: {ro.pct(s['weight'])} on version {self.new}")

    def progress(self, weight: float, left: float) -> None:
        now = self.clock()
        if self.shown["weight"] == weight and now - self.shown["at"] < PROGRESS_EVERY and left > 0:
            return
        self.shown.update(weight=weight, at=now)
        self.log(
            f"{self.fn}: alias {self.alias['Name']} {ro.pct(weight)} on version {self.new}"
            + (f", {ro.fmt_seconds(left)} left" if left > 0 else "")
        )


def _start_record(planned: dict, name: str, old: str, new: str, schedule: ro.Schedule, record: dict) -> dict:
    rec = ro.new_record(name, old, new, schedule, planned.get("alarms") or [])
    if planned.get("resume"):
        rec["steps"].append(dict(planned["resume"]))
        rec["resumes"] = planned.get("resumes")
    record["rollout"] = rec
    return rec


def _create_errors_alarm(
    planned: dict, cw, fn: str, alias: str, new: str, rec: dict, log: Callable[[str], None]
) -> str:
    request = ro.errors_alarm_request(fn, alias, new, planned["errors_alarm"])
    cw.put_alarm(request)
    created = rec["created_alarm"] = request["AlarmName"]
    log(f"{fn}: alarm {created} created on the Errors of version {new}")
    return created


def _delete_alarm(cw, fn: str, created: str, log: Callable[[str], None]) -> None:
    try:
        cw.delete_alarms([created])
    except Exception as exc:  # noqa: BLE001 - the rollout's outcome stands; the alarm is named in the record
        log(f"{fn}: warning: alarm {created} could not be deleted ({exc}); delete it by hand")


def roll_out(
    planned: dict,
    spec: FunctionSpec,
    alias: dict,
    version: str,
    lam,
    cw,
    record: dict,
    step: Callable[[str], None],
    sleep: Callable[[float], None],
    log: Callable[[str], None],
    clock: Callable[[], float] = time.time,
) -> dict:
    """Shift `alias` from planned["from"] to `version` as planned: create the Errors alarm
    if asked, record the rollout in `record` (journaled by `step`), drive the schedule, and
    delete the created alarm whatever happens. Returns the alias as Lambda last answered.
    Raises RolloutStopped (an alarm, Ctrl-C, SIGTERM) or what failed; the caller restores."""
    name, fn = alias["Name"], spec.name
    schedule = ro.Schedule.from_dict(planned["schedule"])
    old, new = str(planned["from"]), str(version)
    rec = _start_record(planned, name, old, new, schedule, record)
    created = None
    alarms = list(planned.get("alarms") or [])
    shift = _Shift(lam, fn, alias, old, new, rec, step, log, clock)
    try:
        if planned.get("errors_alarm"):
            created = _create_errors_alarm(planned, cw, fn, name, new, rec, log)
            alarms.append(created)
        step(f"rollout of alias {name} to version {new}: {planned.get('description')}")
        driver = ro.Driver(
            set_weight=shift.set_weight,
            check=lambda: cw.first_in_alarm(alarms),
            record_step=shift.record_step,
            progress=shift.progress,
            sleep=sleep,
            clock=clock,
        )
        ro.drive(schedule, driver, name, resume=planned.get("resume"))
    except ro.RolloutStopped as exc:
        rec.update(status="stopped", stopped_by=exc.alarm, stopped_at=exc.weight)
        raise
    except BaseException:
        rec.update(status="stopped")
        raise
    finally:
        if created:
            _delete_alarm(cw, fn, created, log)
    rec["status"] = "completed"
    log(f"{fn}: alias {name} → {new} (rollout completed)")
    return shift.last.get("view") or {"version": new, "description": alias.get("Description", "") or "", "weights": {}}


def held(planned: dict, version: str) -> dict:
    """The rollout record of a deploy whose alias stays on the old version for a pipeline's
    AwsLambdaTrafficShift steps to move (status shifting until one of them sets 100%)."""
    schedule = ro.Schedule.from_dict(planned.get("schedule") or {})
    return ro.new_record(
        str(planned["alias"]), str(planned["from"]), str(version), schedule, planned.get("alarms") or []
    )


def put_weight(lam, function: str, alias: dict, old: str, new: str, weight: float) -> dict:
    """UpdateAlias: `weight` % of the alias's traffic on `new`, the rest on `old` (100: the
    alias on `new`, no weights). Returns the alias as Lambda answered (alias_view)."""
    target, weights = ro.routing(old, new, weight)
    routed = {**alias, "RoutingConfig": {"AdditionalVersionWeights": weights}}
    return alias_view(lam.put_alias(function, routed, target, exists=True))
