"""Rollouts against AWS: what the plan says about an alias's traffic (`plan_rollout`),
and the apply's gradual shift of it (`roll_out`). The rules, schedules and the driver
loop are pure, in reconciler.engine.rollout; this module gives them Lambda and CloudWatch."""

from __future__ import annotations

import time
from collections.abc import Callable

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
    if killed is not None:
        alias_name = str(killed.get("alias"))
        schedule = ro.Schedule.from_dict(killed.get("schedule") or {})
        alarms = list(killed.get("alarms") or [])
        errors_alarm = rule.errors_alarm if rule is not None else None
        source = rule.source if rule is not None else ""
    else:
        assert rule is not None
        found = rollout_alias(rule, spec)
        if found is None:
            return
        alias_name, schedule, alarms, errors_alarm, source = (
            found,
            rule.schedule,
            list(rule.alarms),
            rule.errors_alarm,
            rule.source,
        )
    moves = next((c for c in fp.changes if c.kind == "alias" and c.path == alias_name and c.action == "update"), None)
    if moves is None:
        return  # the alias does not change version: nothing to shift
    current = (live.get("aliases") or {}).get(alias_name)
    old = str(killed["from"]) if killed is not None else str((current or {}).get("version"))
    new = str(moves.new)  # the version being published, or the recorded one the alias is behind
    resume = None
    if killed is not None and str(killed.get("to")) == new:
        resume = ro.resume_point(killed, current)
    elif killed is not None:
        killed = None  # a newer version: a new rollout from the version the alias ran before
    definition = next((a for a in spec.aliases if a["Name"] == alias_name), {})
    why = None
    if schedule.gradual:
        old_conf = None
        if old.isdigit():
            got = lam.get_function(spec.name, old)
            old_conf = (got or {}).get("Configuration")
        publishes = new.isdigit()  # the alias moves to a published version
        why = ro.gradual_impossible(
            alias_name,
            {"version": old},
            old_conf,
            spec.config,
            publishes,
            (definition.get("RoutingConfig") or {}).get("AdditionalVersionWeights"),
        )
        if alarms and why is None:
            missing = cloudwatch(spec.region, spec.connector).missing(alarms)
            if missing:
                raise ConfigError(
                    f"rollout alarm '{missing[0]}' does not exist in CloudWatch in {spec.region}",
                    *(_source(rule) if rule is not None else (None, None)),
                )
    if why is not None:
        schedule = ro.ALL_AT_ONCE
    description = schedule.describe()
    if rule is not None and schedule.gradual:
        stops = ro.Rule(match={}, schedule=schedule, alarms=tuple(alarms), errors_alarm=errors_alarm).stops_on()
        description += f", stops on {stops}" if stops else ""
    if resume is not None:
        description = f"resuming at {ro.pct(float(resume['weight']))}: " + description
    if why is not None:
        description += f" (no gradual shift: {why})"
    fp.rollout = {
        "alias": alias_name,
        "from": old,
        "to": new,
        "schedule": schedule.to_dict(),
        "alarms": alarms,
        "errors_alarm": errors_alarm if schedule.gradual else None,
        "source": source,
        "description": description,
        "impossible": why,
        "resume": resume,
        "resumes": (interrupted or {}).get("id") if resume is not None else None,
    }


def gradual(planned: dict | None) -> bool:
    """Does this plan's rollout move its alias in more than one step?"""
    return planned is not None and ro.Schedule.from_dict(planned.get("schedule") or {}).gradual


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
    rec = ro.new_record(name, old, new, schedule, planned.get("alarms") or [])
    if planned.get("resume"):
        rec["steps"].append(dict(planned["resume"]))
        rec["resumes"] = planned.get("resumes")
    record["rollout"] = rec
    created = None
    alarms = list(planned.get("alarms") or [])
    try:
        if planned.get("errors_alarm"):
            request = ro.errors_alarm_request(fn, name, new, planned["errors_alarm"])
            cw.put_alarm(request)
            created = rec["created_alarm"] = request["AlarmName"]
            alarms.append(created)
            log(f"{fn}: alarm {created} created on the Errors of version {new}")
        step(f"rollout of alias {name} to version {new}: {planned.get('description')}")
        last: dict = {}
        shown: dict[str, float] = {"weight": -1.0, "at": 0.0}

        def set_weight(weight: float) -> None:
            last["view"] = put_weight(lam, fn, alias, old, new, weight)

        def record_step(s: dict) -> None:
            rec["steps"].append(s)
            step(f"alias {name}: {ro.pct(s['weight'])} on version {new}")

        def progress(weight: float, left: float) -> None:
            now = clock()
            if shown["weight"] == weight and now - shown["at"] < PROGRESS_EVERY and left > 0:
                return
            shown.update(weight=weight, at=now)
            log(
                f"{fn}: alias {name} {ro.pct(weight)} on version {new}"
                + (f", {ro.fmt_seconds(left)} left" if left > 0 else "")
            )

        ro.drive(
            schedule,
            ro.Driver(
                set_weight=set_weight,
                check=lambda: cw.first_in_alarm(alarms),
                record_step=record_step,
                progress=progress,
                sleep=sleep,
                clock=clock,
            ),
            name,
            resume=planned.get("resume"),
        )
    except ro.RolloutStopped as exc:
        rec.update(status="stopped", stopped_by=exc.alarm, stopped_at=exc.weight)
        raise
    except BaseException:
        rec.update(status="stopped")
        raise
    finally:
        if created:
            try:
                cw.delete_alarms([created])
            except Exception as exc:  # noqa: BLE001 - the rollout's outcome stands; the alarm is named in the record
                log(f"{fn}: warning: alarm {created} could not be deleted ({exc}); delete it by hand")
    rec["status"] = "completed"
    log(f"{fn}: alias {name} → {new} (rollout completed)")
    return last.get("view") or {"version": new, "description": alias.get("Description", "") or "", "weights": {}}


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
