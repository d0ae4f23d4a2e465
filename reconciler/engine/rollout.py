"""Progressive delivery: the traffic of one alias shifted from the version it runs to the
new one in steps (canary, linear), gated by CloudWatch alarms.

Pure: no AWS and no state here. This module holds
- the strategies (SAM/CodeDeploy's names and custom `{type, percentage, interval}`) and the
  Schedule they become: a list of (weight %, bake seconds) steps ending at 100%;
- the `rollout:` rules of reconciler.yaml (first match by service / environment /
  infrastructure wins) and their parsing, with file and line in every error;
- Lambda's rules for weighted aliases, checked at plan time (`gradual_impossible`);
- the driver loop (`drive`), which takes what it does as callables: set the weight, check
  the alarms, record a step in the journal, show progress, sleep and read the clock.
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.errors import ConfigError, ReconcilerError, did_you_mean

MINUTE = 60

# SAM's DeploymentPreference Type values for Lambda (CodeDeploy's predefined Lambda
# deployment configurations without the "CodeDeployDefault.Lambda" prefix, also accepted):
# name → (kind, percentage, interval in seconds)
STRATEGIES: dict[str, tuple[str, float, int]] = {
    "Canary10Percent5Minutes": ("canary", 10, 5 * MINUTE),
    "Canary10Percent10Minutes": ("canary", 10, 10 * MINUTE),
    "Canary10Percent15Minutes": ("canary", 10, 15 * MINUTE),
    "Canary10Percent30Minutes": ("canary", 10, 30 * MINUTE),
    "Linear10PercentEvery1Minute": ("linear", 10, 1 * MINUTE),
    "Linear10PercentEvery2Minutes": ("linear", 10, 2 * MINUTE),
    "Linear10PercentEvery3Minutes": ("linear", 10, 3 * MINUTE),
    "Linear10PercentEvery10Minutes": ("linear", 10, 10 * MINUTE),
    "AllAtOnce": ("all_at_once", 100, 0),
}
CODEDEPLOY_PREFIX = "CodeDeployDefault.Lambda"
KINDS = ("canary", "linear")
MAX_STEPS = 100
MAX_INTERVAL = 24 * 3600  # a bake longer than a day is a typo (CodeDeploy's custom limit is 2880 minutes)

RULE_KEYS = ("match", "alias", "strategy", "alarms", "errors_alarm")
MATCH_KEYS = ("service", "environment", "infrastructure")
CUSTOM_KEYS = ("type", "percentage", "interval")
ERRORS_ALARM_KEYS = ("threshold", "period", "evaluation_periods")
ERRORS_ALARM_DEFAULTS = {"threshold": 1, "period": 60, "evaluation_periods": 1}
ALARM_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,255}")

_INTERVAL = re.compile(r"^(?:\d+(?:h|m|s))+$")
_INTERVAL_PART = re.compile(r"(\d+)(h|m|s)")
_UNIT = {"h": 3600, "m": 60, "s": 1}


class RolloutStopped(ReconcilerError):
    """A rollout stopped before 100%: an alarm in ALARM (`alarm`), or an interruption
    (Ctrl-C, SIGTERM). The caller puts the alias back on the old version."""

    def __init__(self, message: str, alarm: str | None = None, weight: float = 0.0, step: int = 0):
        super().__init__(message)
        self.alarm = alarm
        self.weight = weight
        self.step = step


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Step:
    weight: float  # % of the alias's traffic on the new version
    bake: int  # seconds to wait at this weight before the next step

    def to_dict(self) -> dict:
        return {"weight": self.weight, "bake": self.bake}


@dataclass(frozen=True)
class Schedule:
    """How one alias's traffic moves: each step's weight and bake, the last one at 100%."""

    kind: str  # canary | linear | all_at_once
    strategy: str  # as written: a SAM name, or "custom"
    steps: tuple[Step, ...]

    @property
    def gradual(self) -> bool:
        return len(self.steps) > 1

    @property
    def duration(self) -> int:
        return sum(s.bake for s in self.steps)

    def left_after(self, index: int) -> int:
        """Seconds of bake after step `index` is over (the later steps' bakes)."""
        return sum(s.bake for s in self.steps[index + 1 :])

    def describe(self) -> str:
        """`canary 10% for 5m then 100%`, `linear 10% every 1m then 100%`, `all at once`."""
        if not self.gradual:
            return "all at once"
        first = self.steps[0]
        if self.kind == "canary":
            return f"canary {pct(first.weight)} for {fmt_seconds(first.bake)} then 100%"
        return f"linear {pct(first.weight)} every {fmt_seconds(first.bake)} then 100%"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "strategy": self.strategy, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        steps = tuple(Step(float(s["weight"]), int(s["bake"])) for s in data.get("steps") or ())
        return cls(str(data.get("kind", "")), str(data.get("strategy", "")), steps or (Step(100.0, 0),))


ALL_AT_ONCE = Schedule("all_at_once", "AllAtOnce", (Step(100.0, 0),))


def pct(weight: float) -> str:
    """10.0 → `10%`, 2.5 → `2.5%`."""
    return f"{weight:g}%"


def fmt_seconds(seconds: float) -> str:
    """300 → `5m`, 90 → `1m30s`, 3600 → `1h`, 0 → `0s`."""
    s = math.ceil(seconds)
    if s <= 0:
        return "0s"
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out


def parse_interval(value: Any) -> int:
    """`5m`, `30s`, `1h`, `1m30s` → seconds. ValueError saying what is accepted."""
    if isinstance(value, bool) or not isinstance(value, str) or not _INTERVAL.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not an interval like 30s, 5m or 1h")
    seconds = sum(int(n) * _UNIT[u] for n, u in _INTERVAL_PART.findall(value.strip()))
    if seconds <= 0:
        raise ValueError(f"{value!r} is no time at all")
    if seconds > MAX_INTERVAL:
        raise ValueError(f"{value!r} is longer than a day")
    return seconds


def build(kind: str, percentage: float, interval: int, strategy: str = "custom") -> Schedule:
    """The steps of a canary (percentage, then 100%) or a linear shift (percentage,
    2 x percentage, ... below 100, then 100%), each bake `interval` seconds but the last."""
    if kind == "all_at_once":
        return Schedule(kind, strategy, (Step(100.0, 0),))
    if kind == "canary":
        weights = [float(percentage)]
    elif kind == "linear":
        n = math.ceil(100 / percentage) - 1
        weights = [round(percentage * k, 6) for k in range(1, n + 1)]
        weights = [w for w in weights if w < 100]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return Schedule(kind, strategy, (*(Step(w, interval) for w in weights), Step(100.0, 0)))


def named(name: str) -> Schedule | None:
    """A SAM/CodeDeploy strategy by name (`Canary10Percent5Minutes`, or
    `CodeDeployDefault.LambdaCanary10Percent5Minutes`), or None."""
    short = name.removeprefix(CODEDEPLOY_PREFIX)
    got = STRATEGIES.get(short)
    if got is None:
        return None
    kind, percentage, interval = got
    return build(kind, percentage, interval, short)


# ---------------------------------------------------------------- rules


class Document(Protocol):
    """What the parser needs of reconciler.yaml (a yamlsrc.Doc)."""

    file: str
    data: Any

    def line(self, path: tuple = ()) -> int | None: ...

    def error(self, path: tuple, message: str, hint: str | None = None) -> ConfigError: ...


@dataclass(frozen=True)
class Rule:
    """One `rollout:` rule of reconciler.yaml."""

    match: dict[str, tuple[str, ...]]  # service / environment / infrastructure → patterns (fnmatch); absent: any
    schedule: Schedule
    alias: str | None = None  # None: the function's only alias
    alarms: tuple[str, ...] = ()
    errors_alarm: dict | None = None  # ERRORS_ALARM_KEYS, or None: no alarm is created
    source: str = ""  # file:line of the rule

    def matches(self, service: str, environment: str, infrastructure: str) -> bool:
        got = {"service": service, "environment": environment, "infrastructure": infrastructure}
        return all(any(fnmatch.fnmatchcase(got[k], p) for p in pats) for k, pats in self.match.items())

    def stops_on(self) -> str:
        """`billing-5xx, billing-latency or errors of the new version`; "" without alarms."""
        names = list(self.alarms) + (["errors of the new version"] if self.errors_alarm else [])
        if not names:
            return ""
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

    def describe(self) -> str:
        """`canary 10% for 5m then 100%, stops on billing-5xx`."""
        text = self.schedule.describe()
        stops = self.stops_on()
        return f"{text}, stops on {stops}" if stops and self.schedule.gradual else text

    def to_dict(self) -> dict:
        return {
            "match": {k: list(v) for k, v in self.match.items()},
            "alias": self.alias,
            "schedule": self.schedule.to_dict(),
            "alarms": list(self.alarms),
            "errors_alarm": self.errors_alarm,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Rule:
        return cls(
            match={k: tuple(v) for k, v in (data.get("match") or {}).items()},
            schedule=Schedule.from_dict(data.get("schedule") or {}),
            alias=data.get("alias"),
            alarms=tuple(data.get("alarms") or ()),
            errors_alarm=data.get("errors_alarm"),
            source=str(data.get("source") or ""),
        )


def read_rules(doc: Document | None) -> list[Rule]:
    """The `rollout:` section of reconciler.yaml (a list of rules), or [] without one."""
    section = doc.data.get("rollout") if doc is not None and isinstance(doc.data, dict) else None
    if section is None or doc is None:
        return []
    if not isinstance(section, list):
        raise doc.error(
            ("rollout",),
            "'rollout' must be a list of rules, each with match, strategy and optionally alias, alarms, errors_alarm",
        )
    return [_rule(doc, i, item) for i, item in enumerate(section)]


def rule_for(rules: list[Rule], service: str, environment: str, infrastructure: str) -> Rule | None:
    """The first rule that matches this target, or None (then: all at once)."""
    return next((r for r in rules if r.matches(service, environment, infrastructure)), None)


def _rule(doc: Document, i: int, item: Any) -> Rule:
    at = ("rollout", i)
    if not isinstance(item, dict):
        raise doc.error(at, f"rollout rule {i + 1} must be a mapping (match, alias, strategy, alarms, errors_alarm)")
    for k in item:
        if k not in RULE_KEYS:
            raise doc.error((*at, k), f"unknown rollout key '{k}'", did_you_mean(str(k), RULE_KEYS))
    if "strategy" not in item or item["strategy"] is None:
        raise doc.error(
            at,
            f"rollout rule {i + 1} needs a strategy (e.g. Canary10Percent5Minutes, AllAtOnce, or "
            "{type: canary, percentage: 10, interval: 5m})",
        )
    alias = item.get("alias")
    if alias is not None and (not isinstance(alias, str) or not alias.strip()):
        raise doc.error((*at, "alias"), "rollout alias must be an alias name")
    line = doc.line(at)
    return Rule(
        match=_match(doc, at, item.get("match")),
        schedule=_strategy(doc, (*at, "strategy"), item["strategy"]),
        alias=alias.strip() if isinstance(alias, str) else None,
        alarms=_alarms(doc, (*at, "alarms"), item.get("alarms")),
        errors_alarm=_errors_alarm(doc, (*at, "errors_alarm"), item.get("errors_alarm")),
        source=f"{doc.file}:{line}" if line else doc.file,
    )


def _match(doc: Document, at: tuple, value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error((*at, "match"), "rollout match must be a mapping of service, environment and/or infrastructure")
    out: dict[str, tuple[str, ...]] = {}
    for k, v in value.items():
        if k not in MATCH_KEYS:
            raise doc.error((*at, "match", k), f"unknown rollout match key '{k}'", did_you_mean(str(k), MATCH_KEYS))
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
            raise doc.error(
                (*at, "match", k), f"rollout match.{k} must be an identifier (or a pattern like pay*) or a list of them"
            )
        out[k] = tuple(x.strip() for x in items)
    return out


def _strategy(doc: Document, at: tuple, value: Any) -> Schedule:
    if isinstance(value, str):
        got = named(value.strip())
        if got is None:
            raise doc.error(
                at,
                f"unknown rollout strategy '{value}'",
                did_you_mean(value, STRATEGIES) or "or a custom {type: canary|linear, percentage, interval}",
            )
        return got
    if not isinstance(value, dict):
        raise doc.error(
            at,
            "rollout strategy must be a name (Canary10Percent5Minutes, Linear10PercentEvery1Minute, AllAtOnce, ...) "
            "or {type: canary|linear, percentage, interval}",
        )
    for k in value:
        if k not in CUSTOM_KEYS:
            raise doc.error((*at, k), f"unknown strategy key '{k}'", did_you_mean(str(k), CUSTOM_KEYS))
    missing = [k for k in CUSTOM_KEYS if value.get(k) is None]
    if missing:
        raise doc.error(
            at,
            f"a custom rollout strategy needs {', '.join(missing)} (e.g. {{type: canary, percentage: 10, interval: 5m}})",
        )
    kind = value["type"]
    if kind not in KINDS:
        raise doc.error(
            (*at, "type"), f"strategy type must be canary or linear, not '{kind}'", did_you_mean(str(kind), KINDS)
        )
    percentage = value["percentage"]
    if isinstance(percentage, bool) or not isinstance(percentage, (int, float)) or not 0 < percentage < 100:
        raise doc.error(
            (*at, "percentage"), f"strategy percentage must be a number above 0 and below 100, not {percentage!r}"
        )
    try:
        interval = parse_interval(value["interval"])
    except ValueError as exc:
        raise doc.error((*at, "interval"), f"strategy interval: {exc}") from None
    if kind == "linear" and math.ceil(100 / percentage) > MAX_STEPS:
        raise doc.error(
            (*at, "percentage"),
            f"a linear shift of {percentage:g}% takes more than {MAX_STEPS} steps; use a larger percentage",
        )
    return build(kind, float(percentage), interval)


def _alarms(doc: Document, at: tuple, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(
        isinstance(x, str) and ALARM_NAME.fullmatch(x.strip() or "\x00") for x in items
    ):
        raise doc.error(at, "rollout alarms must be a list of CloudWatch alarm names")
    return tuple(dict.fromkeys(x.strip() for x in items))


def _errors_alarm(doc: Document, at: tuple, value: Any) -> dict | None:
    if value is None or value is False:
        return None
    if value is True:
        return dict(ERRORS_ALARM_DEFAULTS)
    if not isinstance(value, dict):
        raise doc.error(at, "errors_alarm must be true or a mapping of threshold, period, evaluation_periods")
    out = dict(ERRORS_ALARM_DEFAULTS)
    for k, v in value.items():
        if k not in ERRORS_ALARM_KEYS:
            raise doc.error((*at, k), f"unknown errors_alarm key '{k}'", did_you_mean(str(k), ERRORS_ALARM_KEYS))
        if k == "period":
            try:
                v = parse_interval(v) if isinstance(v, str) else v
            except ValueError as exc:
                raise doc.error((*at, k), f"errors_alarm.period: {exc}") from None
            if isinstance(v, bool) or not isinstance(v, int) or (v not in (10, 20, 30) and (v < 60 or v % 60)):
                raise doc.error(
                    (*at, k),
                    "errors_alarm.period must be 10s, 20s, 30s or a whole number of minutes (CloudWatch's periods)",
                )
        elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise doc.error((*at, k), f"errors_alarm.{k} must be a whole number of 1 or more")
        out[k] = v
    return out


# ---------------------------------------------------------------- Lambda's rules


def _role(conf: dict | None) -> str | None:
    return (conf or {}).get("Role") or None


def _dead_letter(conf: dict | None) -> str | None:
    return ((conf or {}).get("DeadLetterConfig") or {}).get("TargetArn") or None


def gradual_impossible(
    alias: str,
    current: dict | None,
    old_config: dict | None,
    new_config: dict,
    publishes: bool,
    alias_routing: dict | None = None,
) -> str | None:
    """Why Lambda cannot shift this alias's traffic gradually to the version being
    published, or None when it can. Lambda weights an alias only between two published
    versions with the same execution role and the same dead-letter configuration.

    `current`: the alias as it is live ({"version", "weights", ...}), None when it does not
    exist yet; `old_config`: the configuration of the version it points to (Role,
    DeadLetterConfig); `new_config`: the configuration being deployed; `publishes`: the alias
    moves to a published version (the one this deployment publishes, or one published before); `alias_routing`: weights the alias definition itself
    gives (a rollout sets them itself)."""
    if alias_routing:
        return f"the definition of alias {alias} sets its own routing weights"
    if current is None:
        return f"alias {alias} does not exist yet: it is created on the new version"
    if not publishes:
        return f"alias {alias} does not move to a published version: Lambda weights only two published versions"
    old = str(current.get("version") or "")
    if not old.isdigit():
        return f"alias {alias} points to {old or 'no version'}, not a published version: Lambda weights only two published versions"
    if old_config is None:
        return f"version {old} of the function cannot be read"
    if _role(old_config) != _role(new_config):
        return (
            f"the execution role changes ({_role(old_config)} → {_role(new_config)}): Lambda weights only versions with the same "
            "execution role"
        )
    if _dead_letter(old_config) != _dead_letter(new_config):
        return (
            f"the dead-letter config changes ({_dead_letter(old_config) or 'none'} → {_dead_letter(new_config) or 'none'}): Lambda "
            "weights only versions with the same dead-letter config"
        )
    return None


def lambda_weight(percent: float) -> float:
    """A percentage as an AdditionalVersionWeights value (0.0-1.0)."""
    return round(percent / 100.0, 6)


def routing(old: str, new: str, percent: float) -> tuple[str, dict[str, float]]:
    """The alias's FunctionVersion and AdditionalVersionWeights for `percent` % on `new`:
    0 → all on old, 100 → all on new (no weights), else old with new weighted."""
    if percent <= 0:
        return old, {}
    if percent >= 100:
        return new, {}
    return old, {new: lambda_weight(percent)}


# ---------------------------------------------------------------- the rollout record


def new_record(
    alias: str,
    old: str,
    new: str,
    schedule: Schedule,
    alarms: list[str] | tuple[str, ...] = (),
    created_alarm: str | None = None,
) -> dict:
    """The `rollout` part of an apply's history record (JSON), before the first step."""
    return {
        "alias": alias,
        "from": old,
        "to": new,
        "schedule": schedule.to_dict(),
        "alarms": list(alarms),
        "created_alarm": created_alarm,
        "status": "shifting",
        "steps": [],
    }


def shifting(deployment: dict | None) -> dict | None:
    """The rollout an apply left shifting when its process was killed (its record still
    in_progress), or None."""
    rec = (deployment or {}).get("rollout")
    if (deployment or {}).get("status") == "in_progress" and isinstance(rec, dict) and rec.get("status") == "shifting":
        return rec
    return None


def last_step(record: dict | None) -> dict | None:
    """The last weight step a rollout record holds, or None."""
    steps = (record or {}).get("steps") or []
    return steps[-1] if steps else None


def _reached(record: dict) -> tuple[str, str]:
    """(`10%`, `step 1 of 2`): the weight a rollout record reached and where in its schedule."""
    step = last_step(record)
    total = len(Schedule.from_dict(record.get("schedule") or {}).steps)
    if step is None:
        return "0%", f"before the first of {total} steps"
    return pct(float(step["weight"])), f"step {int(step['index']) + 1} of {total}"


def interrupted_message(record: dict) -> str:
    """`rollout of live at 10% was interrupted (version 3 → 4, step 1 of 2); ...`"""
    weight, where = _reached(record)
    return (
        f"rollout of {record.get('alias')} at {weight} was interrupted (version {record.get('from')} → {record.get('to')}, "
        f"{where}); `apply` resumes it, `apply --abort-rollout` returns to version {record.get('from')}"
    )


def recorded_message(record: dict) -> str:
    """What drift says of a rollout recorded as shifting (its apply still running, or killed)."""
    weight, where = _reached(record)
    return (
        f"reconciler's rollout of alias {record.get('alias')} from version {record.get('from')} to {record.get('to')} is recorded "
        f"at {weight} ({where}): its apply is running, or was interrupted (then `apply` resumes it, `apply --abort-rollout` "
        f"returns to version {record.get('from')})"
    )


def expected_views(record: dict) -> list[dict]:
    """The alias routings (version, weights) a rollout in flight may have left: any of its
    steps (a step is set before it is recorded), the old version alone and the new one
    alone. Drift accepts these for a recorded rollout."""
    old, new = str(record.get("from")), str(record.get("to"))
    sched = Schedule.from_dict(record.get("schedule") or {})
    out = [{"version": old, "weights": {}}, {"version": new, "weights": {}}]
    for s in sched.steps:
        version, weights = routing(old, new, s.weight)
        out.append({"version": version, "weights": weights})
    return out


def explained(record: dict | None, view: dict | None) -> bool:
    """Is this live alias view (version, weights) one the recorded rollout may have left?"""
    if record is None or view is None:
        return False
    got = {
        "version": str(view.get("version")),
        "weights": {str(k): float(v) for k, v in (view.get("weights") or {}).items()},
    }
    return any(got == e for e in expected_views(record))


def resume_point(record: dict, view: dict | None) -> dict | None:
    """Where an interrupted rollout goes on: its last recorded step, or the step the live
    alias shows if that is further (a step is set before it is recorded). None: nothing
    recorded and the alias not moved yet."""
    step = last_step(record)
    if view is None:
        return step
    old, new = str(record.get("from")), str(record.get("to"))
    sched = Schedule.from_dict(record.get("schedule") or {})
    got = {
        "version": str(view.get("version")),
        "weights": {str(k): float(v) for k, v in (view.get("weights") or {}).items()},
    }
    for i in range(len(sched.steps) - 1, (int(step["index"]) if step else -1), -1):
        version, weights = routing(old, new, sched.steps[i].weight)
        if got == {"version": version, "weights": weights}:
            return {"index": i, "weight": sched.steps[i].weight, "at": float(step["at"]) if step else 0.0}
    return step


# ---------------------------------------------------------------- the driver


def poll_every(bake: float) -> float:
    """How often the alarms are read while baking: a fifth of the bake, 1 to 10 seconds."""
    return max(1.0, min(10.0, bake / 5))


@dataclass
class Driver:
    """What drive() does, injected: Lambda, CloudWatch, the journal, the display, time."""

    set_weight: Callable[[float], None]  # % on the new version: 100 moves the alias fully, clearing the weights
    check: Callable[[], str | None]  # the name of an alarm in ALARM, or None
    record_step: Callable[[dict], None]  # {"index", "weight", "at" (clock() when set)} once the weight is set
    progress: Callable[[float, float], None] = lambda weight, seconds_left: None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time  # wall clock: a resumed rollout bakes what is left of a recorded step
    steps_done: list[dict] = field(default_factory=list)


def drive(schedule: Schedule, d: Driver, alias: str = "", resume: dict | None = None) -> None:
    """Run the schedule: before each step check the alarms, set the weight, record the
    step, then bake (reading the alarms every poll_every seconds). `resume` is the last
    recorded step of an interrupted rollout: its weight is set again and only what is
    left of its bake is waited. An alarm, or Ctrl-C / SIGTERM (KeyboardInterrupt), raises
    RolloutStopped naming it; the caller puts the alias back."""
    start = 0
    baked_since: float | None = None
    if resume is not None:
        start = min(int(resume.get("index", 0)), len(schedule.steps) - 1)
        baked_since = float(resume.get("at", 0) or 0)
    weight = float(resume.get("weight", 0.0)) if resume is not None else 0.0
    i = start
    try:
        for i in range(start, len(schedule.steps)):
            step = schedule.steps[i]
            _stop_on_alarm(d, alias, weight, i)
            d.set_weight(step.weight)
            weight = step.weight
            at = d.clock()
            if i == start and baked_since is not None and baked_since <= at:
                at = baked_since  # what the interrupted process already baked counts
            else:
                rec = {"index": i, "weight": step.weight, "at": at}
                d.record_step(rec)
                d.steps_done.append(rec)
            _bake(d, step, at, schedule.left_after(i), alias, i)
    except KeyboardInterrupt:
        raise RolloutStopped(
            f"rollout of {alias or 'the alias'} interrupted at {pct(weight)} (Ctrl-C or SIGTERM)", weight=weight, step=i
        ) from None


def _bake(d: Driver, step: Step, since: float, later: int, alias: str, index: int) -> None:
    if step.bake <= 0:
        d.progress(step.weight, later)
        return
    every = poll_every(step.bake)
    while True:
        left = step.bake - (d.clock() - since)
        d.progress(step.weight, max(0.0, left) + later)
        if left <= 0:
            return
        d.sleep(min(every, left))
        if d.clock() - since < step.bake:  # the check before the next step reads them at the end
            _stop_on_alarm(d, alias, step.weight, index)


def _stop_on_alarm(d: Driver, alias: str, weight: float, index: int) -> None:
    alarm = d.check()
    if alarm:
        raise RolloutStopped(
            f"rollout of {alias or 'the alias'} stopped at {pct(weight)}: alarm {alarm} is in ALARM",
            alarm=alarm,
            weight=weight,
            step=index,
        )


# ---------------------------------------------------------------- the created Errors alarm


def errors_alarm_name(function: str, alias: str, version: str) -> str:
    return f"reconciler-{function}-{alias}-v{version}-errors"[:255]


def errors_alarm_request(function: str, alias: str, version: str, settings: dict) -> dict:
    """PutMetricAlarm's parameters for the alarm on the new version's own Errors: Lambda's
    metric by (FunctionName, Resource, ExecutedVersion), so errors of the old version behind
    the same alias do not stop the new one."""
    s = {**ERRORS_ALARM_DEFAULTS, **(settings or {})}
    return {
        "AlarmName": errors_alarm_name(function, alias, version),
        "AlarmDescription": f"reconciler rollout of {function}:{alias} to version {version}: errors of that version",
        "Namespace": "AWS/Lambda",
        "MetricName": "Errors",
        "Statistic": "Sum",
        "Dimensions": [
            {"Name": "FunctionName", "Value": function},
            {"Name": "Resource", "Value": f"{function}:{alias}"},
            {"Name": "ExecutedVersion", "Value": str(version)},
        ],
        "Period": int(s["period"]),
        "EvaluationPeriods": int(s["evaluation_periods"]),
        "Threshold": float(s["threshold"]),
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }


def traffic_percentage(value: Any) -> float:
    """An AwsLambdaTrafficShift step's spec.trafficPercentage (0-100). ValueError otherwise."""
    if isinstance(value, str) and value.strip():
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number from 0 to 100") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{value!r} is not a number from 0 to 100")
    return float(value)
