"""Secrets outside a function's environment — its other configuration fields (Description,
Layers...), its tags' values, its aliases' descriptions — as the planner, drift and a
rollback see them. Each such place is compared as a whole, seal to seal
(reconciler.util.secrets.seal_value): the desired value filled from the store, Lambda's
as it is. A change shows; a value never does. Pure except unseal_snapshot, which reads a
published version from Lambda."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from reconciler.engine.live import canonical, project
from reconciler.errors import AwsError
from reconciler.model import FunctionSpec
from reconciler.util import secrets as sec


def _field_seal(sealer: Any, raw_conf: dict, key: str, shape: Any) -> Any:
    """The seal of a live configuration field, shaped like the desired value `shape`."""
    value = project(raw_conf, {key: shape})[key]
    for leaf in _strings(value):
        sec.remember(leaf, secret=True)
    return sec.seal_value(sealer, canonical({key: value})[key])


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _alias_name(path: str) -> str:
    return path[len(sec.ALIAS_PREFIX) :].rsplit(".", 1)[0]


def like_recorded(recorded: dict | None, live: dict) -> dict:
    """The live snapshot with each place the state holds sealed sealed too, with the key
    of the state's seal (a seal whose key is not at hand is taken as unchanged)."""
    recorded = recorded or {}
    places = recorded.get("secret_fields") or {}
    if not places or not live.get("exists"):
        return live
    conf = dict(live.get("configuration") or {})
    tags = dict(live.get("tags") or {})
    aliases = {k: dict(v) for k, v in (live.get("aliases") or {}).items()}
    rec_conf = recorded.get("configuration") or {}
    for path, written in places.items():
        if path.startswith(sec.TAG_PREFIX):
            key = path[len(sec.TAG_PREFIX) :]
            was = (recorded.get("tags") or {}).get(key)
            if sec.is_sealed(was) and key in tags:
                sealer = sec.sealer_by_kid(was)
                sec.remember(tags[key], secret=True)
                tags[key] = sec.seal_value(sealer, tags[key]) if sealer else was
        elif path.startswith(sec.ALIAS_PREFIX):
            name = _alias_name(path)
            was = ((recorded.get("aliases") or {}).get(name) or {}).get("description")
            if sec.is_sealed(was) and name in aliases and aliases[name].get("description"):
                sealer = sec.sealer_by_kid(was)
                sec.remember(aliases[name]["description"], secret=True)
                aliases[name]["description"] = sec.seal_value(sealer, aliases[name]["description"]) if sealer else was
        else:
            was = rec_conf.get(path)
            if sec.is_sealed(was) and path in conf:
                sealer = sec.sealer_by_kid(was)
                conf[path] = _field_seal(sealer, live["configuration"], path, written) if sealer else was
    return {**live, "configuration": conf, "tags": tags, "aliases": aliases}


def plan_view(
    spec: FunctionSpec, live: dict, recorded: dict | None, values: dict | None, sealer: Any
) -> tuple[FunctionSpec, dict, dict[str, str], list[str]]:
    """(spec, live) with every place outside the environment that uses a secret sealed on
    both sides, the seals planned (path → seal: an apply of a saved plan refuses it if a
    secret changed since), and a note for each place whose secret changed in the store."""
    places = sec.secret_places(spec.config, spec.tags, spec.aliases)
    live = like_recorded(recorded, live)
    if not places or sealer is None:
        return spec, live, {}, []
    values = values or {}

    def filled(v: Any) -> Any:
        return sec.fill(v, spec.region, values)

    config, tags = dict(spec.config), dict(spec.tags)
    aliases = [dict(a) for a in spec.aliases]
    exists = bool(live.get("exists"))
    raw = live.get("configuration") or {}
    live_conf = dict(raw)
    live_tags = dict(live.get("tags") or {})
    live_aliases = {k: dict(v) for k, v in (live.get("aliases") or {}).items()}
    seals: dict[str, str] = {}
    for path in places:
        if path.startswith(sec.TAG_PREFIX):
            key = path[len(sec.TAG_PREFIX) :]
            seals[path] = tags[key] = sec.seal_value(sealer, filled(tags[key]))
            if key in live_tags and not sec.is_sealed(live_tags[key]):
                sec.remember(live_tags[key], secret=True)
                live_tags[key] = sec.seal_value(sealer, live_tags[key])
        elif path.startswith(sec.ALIAS_PREFIX):
            name = _alias_name(path)
            for a in aliases:
                if a.get("Name") == name:
                    seals[path] = a["Description"] = sec.seal_value(sealer, filled(a["Description"]))
            have = live_aliases.get(name)
            if have and have.get("description") and not sec.is_sealed(have["description"]):
                sec.remember(have["description"], secret=True)
                have["description"] = sec.seal_value(sealer, have["description"])
        else:
            want = canonical({path: filled(config[path])})[path]
            seals[path] = config[path] = sec.seal_value(sealer, want)
            if exists and path in raw:
                live_conf[path] = _field_seal(sealer, raw, path, want) if not sec.is_sealed(raw[path]) else raw[path]
    notes = []
    for path, seal in sorted(seals.items()):
        was, now = (
            _at(recorded, path),
            _at({"configuration": live_conf, "tags": live_tags, "aliases": live_aliases}, path),
        )
        if sealer.can_check(was) and was == now and was != seal:
            notes.append(f"secret in {path} changed in the store")
    view = dataclasses.replace(spec, config=config, tags=tags, aliases=aliases)
    if exists:
        live = {**live, "configuration": live_conf, "tags": live_tags, "aliases": live_aliases}
    return view, live, seals, notes


def _at(snap: dict | None, path: str) -> Any:
    snap = snap or {}
    if path.startswith(sec.TAG_PREFIX):
        return (snap.get("tags") or {}).get(path[len(sec.TAG_PREFIX) :])
    if path.startswith(sec.ALIAS_PREFIX):
        return ((snap.get("aliases") or {}).get(_alias_name(path)) or {}).get("description")
    return (snap.get("configuration") or {}).get(path)


def filled_spec(spec: FunctionSpec, values: dict) -> FunctionSpec:
    """The spec with the references of its tags and aliases filled (memory only: what an
    apply sends to Lambda)."""
    return dataclasses.replace(
        spec,
        tags=sec.fill(spec.tags, spec.region, values),
        aliases=sec.fill(spec.aliases, spec.region, values),
        create_only=sec.fill(spec.create_only, spec.region, values),
    )


def _unseal_tag(name: str, key: str, tags: dict, now: dict, log: Callable[[str], None]) -> None:
    """A tag's earlier value is not kept by a version: what Lambda holds now, said so
    unless it is the sealed value."""
    seal, cur = tags.get(key), (now.get("tags") or {}).get(key)
    if not sec.is_sealed(seal):
        return
    sealer = sec.sealer_by_kid(seal)
    if cur is None or sealer is None or sec.seal_value(sealer, cur) != seal:
        log(f"{name}: tag {key} used a secret whose earlier value is not kept; it is left as it is")
    tags[key] = cur
    if cur is None:
        tags.pop(key)


def _unseal_alias_description(name: str, alias: str, aliases: dict, now: dict, log: Callable[[str], None]) -> None:
    a, cur_a = aliases.get(alias), (now.get("aliases") or {}).get(alias) or {}
    if not a or not sec.is_sealed(a.get("description")):
        return
    sealer = sec.sealer_by_kid(a["description"])
    cur = cur_a.get("description") or ""
    if sealer is None or sec.seal_value(sealer, cur) != a["description"]:
        log(
            f"{name}: the description of alias {alias} used a secret whose earlier value is not kept; it is left as it is"
        )
    a["description"] = cur


class _VersionConf:
    """The configuration of the version a snapshot ran, read once and only when needed."""

    def __init__(self, lam: Any, name: str, version: str | None):
        self.lam, self.name, self.version = lam, name, version
        self._conf: dict | None = None

    def get(self, path: str) -> Any:
        if not self.version:
            return None
        if self._conf is None:
            got = self.lam.get_function(self.name, self.version)
            self._conf = (got or {}).get("Configuration") or {}
        return self._conf.get(path)


def _unseal_field(name: str, path: str, seal: str, prev: dict, now: dict, version: _VersionConf, log) -> Any:
    """A configuration field's earlier value: $LATEST's or the snapshot's version's, whichever
    has the seal; the Description (a version keeps its own) as it is now; else an error."""
    sealer = sec.sealer_by_kid(seal)
    if sealer is not None:
        # $LATEST first; the version is read only when $LATEST does not have it
        for read in (lambda: (now.get("configuration") or {}).get(path), lambda: version.get(path)):
            cand = read()
            if cand is not None and sec.seal_value(sealer, cand) == seal:
                return cand
    if path == "Description":
        # a published version's description is its own (PublishVersion's), not the function's
        log(f"{name}: Description used a secret whose earlier value is not kept; it is left as it is")
        return (now.get("configuration") or {}).get(path, "")
    raise AwsError(
        f"{name}: the earlier value of {path} used a secret and is not kept in the state, and neither "
        f"$LATEST nor version {prev.get('version') or '(none)'} holds it; set it by hand"
    )


def unseal_snapshot(name: str, lam: Any, prev: dict, now: dict, log: Callable[[str], None]) -> dict:
    """A rollback snapshot with each sealed place found again: a configuration field from
    what $LATEST holds now or from the version the snapshot ran (whichever has that seal;
    else the function cannot be restored by reconciler); the Description, a tag or an
    alias description (a version does not keep them) from what Lambda holds now, else
    left as it is, and said so."""
    places = list(prev.get("secret_fields") or ())
    if not places:
        return prev
    conf = dict(prev.get("configuration") or {})
    tags = dict(prev.get("tags") or {})
    aliases = {k: dict(v) for k, v in (prev.get("aliases") or {}).items()}
    version = _VersionConf(lam, name, prev.get("version"))
    for path in places:
        if path.startswith(sec.TAG_PREFIX):
            _unseal_tag(name, path[len(sec.TAG_PREFIX) :], tags, now, log)
        elif path.startswith(sec.ALIAS_PREFIX):
            _unseal_alias_description(name, _alias_name(path), aliases, now, log)
        elif sec.is_sealed(conf.get(path)):
            conf[path] = _unseal_field(name, path, conf[path], prev, now, version, log)
    return {**prev, "configuration": conf, "tags": tags, "aliases": aliases}
