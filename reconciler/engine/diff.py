"""The planner: (desired, recorded, live) → Plan. Pure: no I/O, no AWS.

Terraform's rules, for Lambda: what differs between the desired function and the live
one is a planned change; what differs between the last apply (the state) and the live
function is drift — "changed outside reconciler" — shown apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from reconciler.engine.live import DEFAULTS, RESET, alias_view, canonical, fingerprint, project, user_tags
from reconciler.engine.sealed import like_recorded, plan_view
from reconciler.errors import ReconcilerError
from reconciler.model import (  # noqa: F401  (IN_FLIGHT re-exported)
    IN_FLIGHT,
    OWNER_INFRASTRUCTURE,
    OWNER_SERVICE,
    Change,
    FunctionPlan,
    FunctionSpec,
    owner_conflict,
    unfinished,
)

ABSENT = None


def _deeper_kwargs() -> dict:
    import inspect

    from deepdiff import DeepDiff

    try:
        params = inspect.signature(DeepDiff.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {"threshold_to_diff_deeper": 0} if "threshold_to_diff_deeper" in params else {}


_DEEPER: dict | None = None  # computed on first use: deepdiff (and numpy) load only when something differs


def diff_values(kind: str, old: Any, new: Any, prefix: str = "") -> list[Change]:
    """Leaf-level changes between two JSON values (lists change as a whole)."""
    if old == new:
        return []
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [Change(kind, prefix, old, new)]
    # leaf by leaf: deepdiff >= 8 otherwise reports two dicts sharing few keys as one
    # whole-value change at their root (an unreadable, unmaskable "{} → {...}")
    global _DEEPER
    from deepdiff import DeepDiff

    if _DEEPER is None:
        _DEEPER = _deeper_kwargs()
    dd = DeepDiff(old, new, view="tree", ignore_order=False, verbose_level=2, **_DEEPER)
    out: dict[str, Change] = {}
    for report in dd.values():
        for item in report:
            parts = item.path(output_format="list")
            cut = next((i for i, p in enumerate(parts) if isinstance(p, int)), None)
            if cut is not None:
                parts = parts[:cut]
            o, n = _get(old, parts), _get(new, parts)
            path = ".".join([prefix] + [str(p) for p in parts] if prefix else [str(p) for p in parts])
            action = "create" if o is ABSENT else "delete" if n is ABSENT else "update"
            out[path] = Change(kind, path, o, n, action)
    return [out[k] for k in sorted(out)]


def _get(data: Any, parts: list) -> Any:
    for p in parts:
        if not isinstance(data, dict) or p not in data:
            return ABSENT
        data = data[p]
    return data


def desired_config(spec: FunctionSpec, recorded: dict | None) -> tuple[dict, list[str]]:
    """The configuration to converge to: Lambda's defaults for the common fields, the
    definition's fields over them, and a reset to the default for each other field the
    last apply set and the definition no longer gives."""
    config = canonical({**DEFAULTS, **spec.config})
    notes = []
    for key in sorted((recorded or {}).get("configuration", {})):
        if key not in config:
            if key in RESET:
                config[key] = RESET[key]
            else:
                notes.append(f"{key} is no longer in the definition; it is left as it is in Lambda")
    return config, notes


# a deployment record in one of these states has no process finishing it once its
# process is gone: "rolling_back" is an apply that failed and was putting things back
def publish_description(deployment_id: str) -> str:
    """The description of a version an apply publishes: it names the deployment, so a
    version published by an apply that was then killed is recognised and reused."""
    return f"reconciler {deployment_id}"


def interrupted_deployment(history: list[dict], name: str) -> dict | None:
    """The deployment of this function that left it half done, if the last one recorded
    for it is such (see unfinished()): its process was killed, or its rollback failed."""
    if not history:
        return None
    found = _last_deployment(history, name)
    if found is None:
        return None
    last = found[1]
    return last if unfinished(last) else None


# history list (by id) → (that list, its length, {function: (position, record)}): a plan of
# a thousand functions looks each up in an index built once instead of scanning the whole
# history a thousand times. The list itself is held, so its id cannot be reused while cached.
_HISTORY_INDEX: dict[int, tuple[list, int, dict[str | None, tuple[int, dict]]]] = {}
_HISTORY_INDEX_MAX = 16
_DEPLOYMENTS = ("apply", "rollback")


def _last_deployment(history: list[dict], name: str) -> tuple[int, dict] | None:
    cached = _HISTORY_INDEX.get(id(history))
    if cached is not None and cached[0] is history and cached[1] == len(history):
        hit = cached[2].get(name)
        # a record replaced in place (a deployment record rewritten with its outcome) is
        # seen by identity; an unchanged position still holds the record found
        if hit is None or (
            history[hit[0]] is hit[1] and hit[1].get("function") == name and hit[1].get("operation") in _DEPLOYMENTS
        ):
            return hit
    index: dict[str | None, tuple[int, dict]] = {}
    for i, h in enumerate(history):
        if h.get("operation") in _DEPLOYMENTS:
            index[h.get("function")] = (i, h)
    if len(_HISTORY_INDEX) >= _HISTORY_INDEX_MAX:
        _HISTORY_INDEX.clear()
    _HISTORY_INDEX[id(history)] = (history, len(history), index)
    return index.get(name)


def interrupted_note(record: dict) -> str:
    from reconciler.engine.rollout import interrupted_message, shifting

    rollout = shifting(record)
    if rollout is not None:
        return interrupted_message(rollout)
    steps = record.get("steps") or []
    after = f"after step '{steps[-1]['step']}'" if steps else "before it recorded any step"
    if record.get("status") == "rolling_back":
        after = f"while rolling back (it failed: {record.get('error')})"
    if record.get("status") == "rollback_failed":
        return (
            f"an {record.get('operation', 'apply')} started at {record.get('started_at')} failed ({record.get('error')}) and its "
            f"rollback failed too ({record.get('rollback_error')}): Lambda may hold part of that change; this plan finishes it "
            "(`reconciler rollback` undoes it instead)"
        )
    return f"an {record.get('operation', 'apply')} started at {record.get('started_at')} was interrupted {after}; this plan converges it"


_SCALARS = (str, int, float, bool, type(None))


def _json_copy(value: Any) -> Any:
    t = type(value)
    if t is dict:
        return {k: _json_copy(v) for k, v in value.items()}
    if t is list:
        return [_json_copy(v) for v in value]
    if t in _SCALARS:
        return value
    raise TypeError  # not plain JSON data: dataclasses.asdict copies it


def spec_dict(spec: FunctionSpec) -> dict:
    """spec.to_dict() (dataclasses.asdict) for a spec of plain JSON data, several times
    faster: a plan of a thousand functions makes one per function."""
    try:
        return {f: _json_copy(getattr(spec, f)) for f in _SPEC_FIELDS}
    except TypeError:
        return spec.to_dict()


_SPEC_FIELDS = tuple(f.name for f in fields(FunctionSpec))


def _secret_view(
    spec: FunctionSpec, config: dict, live: dict, recorded: dict | None, values: dict | None, sealer
) -> tuple[dict, dict, list[str]]:
    """The desired configuration with each secret environment value sealed, the live one
    likewise (compared seal to seal: a change shows, a value never), and the notes about
    secrets that changed in the store."""
    from reconciler.util import secrets as sec

    keys = {k: v for k, v in sec.env_vars(config).items() if sec.references(v)}
    if not keys or sealer is None:
        return config, live, []
    live_env = sec.env_vars(live.get("configuration"))
    seals = {k: sealer.seal(sec.fill(v, spec.region, values or {})) for k, v in keys.items()}
    config = {**config, "Environment": {**config["Environment"], "Variables": {**sec.env_vars(config), **seals}}}
    if live.get("exists") and any(k in live_env for k in keys):
        for k in keys:
            sec.remember(live_env.get(k), secret=True)
        conf = dict(live["configuration"])
        conf["Environment"] = {
            **(conf.get("Environment") or {}),
            "Variables": {k: (sealer.seal(v) if k in keys and v is not None else v) for k, v in live_env.items()},
        }
        live = {**live, "configuration": conf}
    notes = []
    rec_env = sec.env_vars((recorded or {}).get("configuration"))
    live_sealed = sec.env_vars(live.get("configuration"))
    for k, seal in sorted(seals.items()):
        was = rec_env.get(k)
        if sealer.can_check(was) and was == live_sealed.get(k) and was != seal:
            notes.append(f"secret {k} changed in the store")
    return config, live, notes


def plan_function(
    spec: FunctionSpec,
    recorded: dict | None,
    live: dict,
    code: dict,
    state_file: str,
    interrupted: dict | None = None,
    secrets: dict | None = None,
    sealer=None,
) -> FunctionPlan:
    """One function's plan. `recorded` is its entry in state (or None), `live` a
    live.snapshot(), `code` the resolved artifact ({"sha256", "source", ...}),
    `interrupted` the in-flight record of a deployment that was killed (see
    interrupted_deployment): the plan then converges what it left half done.

    The steps: the desired configuration (secrets sealed), the drift since the last apply,
    then a create, or the ownership check and the update (code, configuration, tags,
    aliases, the version to publish)."""
    fp = FunctionPlan(
        name=spec.name,
        service=spec.service,
        environment=spec.environment,
        infrastructure=spec.infrastructure,
        region=spec.region,
        action="noop",
        desired=spec_dict(spec),
        code=code,
        live_fingerprint=fingerprint(live),
        state_file=state_file,
    )
    # secrets outside the environment (a description, a tag...): compared seal to seal
    spec, live, fp.secret_fields, place_notes = plan_view(spec, live, recorded, secrets, sealer)
    config, live_cmp = _desired(fp, spec, recorded, live, secrets, sealer)
    fp.notes += place_notes
    if interrupted:
        fp.notes.insert(0, interrupted_note(interrupted))
    fp.drift = _drift_since_recorded(spec, recorded, live, interrupted)
    if not live.get("exists"):
        return _plan_create(fp, spec, config, code)
    check_ownership(spec, recorded, live, interrupted)
    return _plan_update(fp, _Sides(spec, recorded, live, live_cmp, config, code, interrupted))


@dataclass
class _Sides:
    """What the update steps compare: the desired function and the live one."""

    spec: FunctionSpec
    recorded: dict | None  # its entry in state
    live: dict  # live.snapshot()
    live_cmp: dict  # the same, its secret environment values sealed as the desired ones
    config: dict  # the desired configuration (desired_config, secrets sealed)
    code: dict  # the resolved artifact
    interrupted: dict | None  # the record of a deployment that was killed, to converge


def _desired(
    fp: FunctionPlan, spec: FunctionSpec, recorded: dict | None, live: dict, secrets: dict | None, sealer
) -> tuple[dict, dict]:
    """The desired configuration and the live snapshot to compare it with, secrets sealed
    on both sides; the notes about them and the seals planned go into `fp`."""
    config, fp.notes = desired_config(spec, recorded)
    config, live_cmp, secret_notes = _secret_view(spec, config, live, recorded, secrets, sealer)
    fp.secrets = secrets
    fp.secret_seals = {
        k: v
        for k, v in config.get("Environment", {}).get("Variables", {}).items()
        if k in (spec.config.get("Environment") or {}).get("Variables", {}) and _is_sealed(v)
    }
    fp.notes += secret_notes
    return config, live_cmp


def _drift_since_recorded(
    spec: FunctionSpec, recorded: dict | None, live: dict, interrupted: dict | None
) -> list[Change]:
    if recorded and live.get("exists") and not interrupted:
        # (after a killed apply, Lambda differs from the state by what that apply did: not drift)
        return drift(recorded, live)
    if recorded and not live.get("exists"):
        return [Change("function", spec.name, "exists", None, "delete")]
    return []


def _plan_create(fp: FunctionPlan, spec: FunctionSpec, config: dict, code: dict) -> FunctionPlan:
    """A function Lambda does not have: created, its first version published, its aliases on it."""
    fp.action = "create"
    fp.changes.append(Change("function", spec.name, None, "create", "create"))
    fp.changes.extend(diff_values("config", {}, config))
    fp.changes.append(Change("code", "CodeSha256", None, code["sha256"], "create"))
    fp.changes.extend(diff_values("tag", {}, spec.tags, "Tags"))
    fp.publish = True
    fp.next_version = "1"
    for alias in spec.aliases:
        fp.changes.append(Change("alias", alias["Name"], None, "1", "create"))
    return fp


def check_ownership(spec: FunctionSpec, recorded: dict | None, live: dict, interrupted: dict | None) -> None:
    """Refuse to take over a live function that is not this target's: another owner's
    tags, an untagged infrastructure this state does not record, or a package type Lambda
    cannot change."""
    file, line = source_location(spec.source)
    live_tags = live.get("tags") or {}
    why = owner_conflict(spec.service, spec.environment, live_tags, spec.infrastructure)
    if why:
        raise ReconcilerError(
            f"function {spec.name} exists in Lambda but {why}; reconciler will not take it over for "
            f"service '{spec.service}' in '{spec.environment}/{spec.infrastructure}'",
            file,
            line,
        )
    if (
        recorded is None
        and not interrupted
        and live_tags.get(OWNER_SERVICE)
        and not live_tags.get(OWNER_INFRASTRUCTURE)
    ):
        # deployed by a reconciler that did not tag the infrastructure yet: the state of the
        # infrastructure that deployed it records it; this one's does not
        raise ReconcilerError(
            f"function {spec.name} exists in Lambda, deployed by reconciler for service '{live_tags.get(OWNER_SERVICE)}' without "
            f"a {OWNER_INFRASTRUCTURE} tag, and the state of '{spec.environment}/{spec.infrastructure}' does not record it: it may "
            "be another infrastructure's; reconciler will not take it over",
            file,
            line,
            hint=f"if it is this infrastructure's, adopt it with `reconciler import {spec.name}`",
        )
    if live.get("package_type", "Zip") != spec.package_type:
        raise ReconcilerError(
            f"function {spec.name} is a {live.get('package_type')} function in Lambda but the definition makes it {spec.package_type}; "
            "Lambda cannot change a function's package type (delete it first)",
            file,
            line,
        )


def _plan_update(fp: FunctionPlan, sides: _Sides) -> FunctionPlan:
    """A function Lambda has: what differs, and whether a version is published for it."""
    changes = _code_changes(sides) + _config_changes(sides)
    fp.publish = bool(changes)
    if sides.recorded is None and not sides.interrupted:
        fp.notes.append("the function exists in Lambda but not in the state: it will be adopted")
    if sides.interrupted and sides.interrupted.get("operation") == "apply" and sides.interrupted.get("publish", True):
        # the killed apply was to publish a version: $LATEST may hold changes no version has
        # yet, or the version may be published and the aliases not moved. number_versions()
        # reuses a version the killed apply published; otherwise exactly one is published.
        fp.publish = True
    # tags are not versioned: they change without a publish
    changes += _tag_changes(sides)
    # aliases follow the version being deployed
    current = (sides.recorded or {}).get("version")
    if not fp.publish and sides.spec.aliases and not current:
        fp.publish = True
        fp.notes.append("no version of this function is recorded: one is published for its aliases")
    changes += _alias_changes(sides, "(new)" if fp.publish else current)
    changes += _removed_aliases(sides)
    if fp.publish:
        changes.append(Change("version", "publish", current, "(new)", "create"))
    fp.changes = changes
    # a killed deployment is converged even when Lambda already holds everything: the
    # apply records the outcome (and closes the interrupted record)
    fp.action = "update" if changes or sides.interrupted else "noop"
    return fp


def _code_changes(sides: _Sides) -> list[Change]:
    """The code and the architectures, compared with what Lambda runs."""
    live, spec = sides.live, sides.spec
    changes: list[Change] = []
    if live.get("code_sha256") != sides.code["sha256"]:
        changes.append(Change("code", "CodeSha256", live.get("code_sha256"), sides.code["sha256"]))
    if spec.architectures and list(spec.architectures) != list(live.get("architectures") or []):
        changes.append(Change("code", "Architectures", live.get("architectures"), spec.architectures))
    return changes


def _config_changes(sides: _Sides) -> list[Change]:
    """The desired configuration against the live one, field by field."""
    return diff_values("config", project(sides.live_cmp["configuration"], sides.config), sides.config)


def _tag_changes(sides: _Sides) -> list[Change]:
    """The tags reconciler manages (desired now or at the last apply) against the live ones."""
    managed = set(sides.spec.tags) | set((sides.recorded or {}).get("tags", {}))
    live_tags = {k: v for k, v in sides.live.get("tags", {}).items() if k in managed}
    return diff_values("tag", live_tags, sides.spec.tags, "Tags")


def _alias_changes(sides: _Sides, target_version: str | None) -> list[Change]:
    """Each desired alias against the live one: its version (`target_version`: "(new)"
    when one is published), description and routing weights."""
    changes: list[Change] = []
    for alias in sides.spec.aliases:
        want = {
            "version": target_version,
            "description": alias.get("Description", "") or "",
            "weights": alias_view(alias)["weights"],
        }
        have = sides.live["aliases"].get(alias["Name"])
        if have is None:
            changes.append(Change("alias", alias["Name"], None, target_version, "create"))
        elif have != want:
            if have["version"] != want["version"]:
                changes.append(Change("alias", alias["Name"], have["version"], want["version"]))
            for k in ("description", "weights"):
                if have[k] != want[k]:
                    changes.append(Change("alias", f"{alias['Name']}.{k}", have[k], want[k]))
    return changes


def _removed_aliases(sides: _Sides) -> list[Change]:
    """The aliases the last apply made that the definition no longer gives: deleted."""
    wanted = {a["Name"] for a in sides.spec.aliases}
    live_aliases = sides.live["aliases"]
    return [
        Change("alias", name, live_aliases[name]["version"], None, "delete")
        for name in sorted(set((sides.recorded or {}).get("aliases", {})) - wanted)
        if name in live_aliases
    ]


def number_versions(fp: FunctionPlan, versions: list[dict], interrupted: dict | None = None) -> None:
    """Fill in the version a publishing update will get, from the function's published
    versions (ListVersionsByFunction). When converging an interrupted apply that already
    published its version (its description names that deployment, its code is the desired
    code) and nothing changed since, that version is reused instead of publishing another."""
    published = [v for v in versions if str(v.get("Version", "")).isdigit()]
    newest = max(published, key=lambda v: int(v["Version"]), default=None)
    fp.next_version = str(int(newest["Version"]) + 1) if newest else "1"
    reuse = None
    if (
        interrupted
        and newest is not None
        and newest.get("Description") == publish_description(interrupted.get("id", ""))
        and newest.get("CodeSha256") == (fp.code or {}).get("sha256")
        and not any(c.kind in ("code", "config") for c in fp.changes)
    ):
        reuse = str(newest["Version"])
    if reuse is None:
        for c in fp.changes:
            if c.new == "(new)":
                c.new = fp.next_version
        return
    fp.publish = False
    fp.next_version = reuse
    changes = []
    for c in fp.changes:
        if c.kind == "version" and c.path == "publish":
            changes.append(Change("version", "reuse", c.old, reuse, "update"))
            continue
        if c.new == "(new)":
            if c.kind == "alias" and c.old == reuse:
                continue  # the killed apply already moved it
            c.new = reuse
        changes.append(c)
    fp.changes = changes


def source_location(source: str) -> tuple[str | None, int | None]:
    """A definition's `file:line` as (file, line) for an error."""
    if ":" in source:
        f, _, line = source.rpartition(":")
        return f, int(line) if line.isdigit() else None
    return source or None, None


def drift(recorded: dict, live: dict) -> list[Change]:
    """What changed in Lambda since reconciler last recorded this function: its
    configuration, code, tags and the aliases reconciler manages."""
    live = like_recorded(recorded, live)
    applied = recorded.get("configuration", {})
    out = diff_values("config", applied, _sealed_like(applied, project(live["configuration"], applied)))
    if recorded.get("code_sha256") and recorded["code_sha256"] != live.get("code_sha256"):
        out.append(Change("code", "CodeSha256", recorded["code_sha256"], live.get("code_sha256")))
    out.extend(diff_values("tag", user_tags(recorded.get("tags")), user_tags(live.get("tags")), "Tags"))
    out.extend(_alias_drift(recorded, live))
    return out


def _alias_drift(recorded: dict, live: dict) -> list[Change]:
    """Each alias the state records that Lambda holds otherwise or no longer holds; aliases
    reconciler never managed are not looked at. An alias still on its version reports its
    routing weights (a canary nobody recorded) or description; else its version."""
    out: list[Change] = []
    for name, a in sorted(recorded.get("aliases", {}).items()):
        b = live["aliases"].get(name)
        if a != b and a is not None and b is not None and a.get("version") == b.get("version"):
            # on its version still: the routing weights (a canary nobody recorded) or the description changed
            out.extend(
                Change("alias", f"{name}.{k}", a.get(k), b.get(k))
                for k in ("weights", "description")
                if a.get(k) != b.get(k)
            )
        elif a != b:
            action = "delete" if b is None else "update"
            out.append(Change("alias", name, (a or {}).get("version"), (b or {}).get("version"), action))
    return out


def _is_sealed(value: Any) -> bool:
    from reconciler.util.secrets import is_sealed

    return is_sealed(value)


def _sealed_like(applied: dict, live: dict) -> dict:
    """The live configuration with each environment value the state holds sealed sealed
    too (with the same key), so that the two compare without a value in the change; a
    seal whose key is not at hand is taken as unchanged (it cannot be checked)."""
    from reconciler.util import secrets as sec

    rec_env = sec.env_vars(applied)
    if not any(sec.is_sealed(v) for v in rec_env.values()):
        return live
    live_env = sec.env_vars(live)
    out_env = {}
    for k, v in live_env.items():
        was = rec_env.get(k)
        if isinstance(was, str) and sec.is_sealed(was) and v is not None:
            sealer = sec.sealer_by_kid(was)
            sec.remember(v, secret=True)
            out_env[k] = sealer.seal(v) if sealer is not None else was
        else:
            out_env[k] = v
    return {**live, "Environment": {**(live.get("Environment") or {}), "Variables": out_env}}


def orphan(
    name: str, recorded: dict, live: dict, prune: bool, state_file: str, environment: str, infrastructure: str
) -> FunctionPlan:
    fp = FunctionPlan(
        name=name,
        service=recorded.get("service", ""),
        environment=environment,
        infrastructure=infrastructure,
        region=recorded.get("region", ""),
        action="delete" if prune else "orphan",
        live_fingerprint=fingerprint(live),
        state_file=state_file,
    )
    if not live.get("exists"):
        fp.notes.append("already gone from Lambda")
    if prune:
        fp.changes.append(Change("function", name, "exists", None, "delete"))
    else:
        fp.notes.append("no longer in the workspace; delete it with --prune")
    return fp
