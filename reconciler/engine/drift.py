"""Drift: what changed in Lambda since reconciler last recorded each function.

Compares live AWS with the state files only (no workspace needed), the way a nightly
job runs it; changes nothing. Also `refresh` (accept what is live into the state).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from reconciler.engine.diff import drift as drift_changes
from reconciler.engine.diff import interrupted_deployment, publish_description
from reconciler.engine.rollout import explained, recorded_message, shifting
from reconciler.model import Change
from reconciler.store import state as st
from reconciler.util.stats import NO_PROGRESS

DRIFT_FORMAT_VERSION = 1


@dataclass
class FunctionDrift:
    name: str
    service: str
    environment: str
    infrastructure: str
    region: str
    status: str  # in_sync | drifted | deleted | unfinished | rolling_out
    changes: list[Change] = field(default_factory=list)
    # unfinished: reconciler's own deployment that left the function half done (see
    # plan.unfinished); its differences are not changes made outside reconciler
    note: str = ""
    live: dict = field(default_factory=dict)  # the live snapshot (for refresh), not rendered

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("live")
        d["changes"] = [c.to_dict() for c in self.changes]
        return d


@dataclass
class DriftReport:
    functions: list[FunctionDrift]
    checked_at: str = ""

    @property
    def drifted(self) -> list[FunctionDrift]:
        return [f for f in self.functions if f.status not in ("in_sync", "rolling_out")]

    def to_dict(self, mask: Callable[[Change], Change] | None = None) -> dict:
        out = []
        for f in self.functions:
            d = f.to_dict()
            if mask:
                d["changes"] = [mask(c).to_dict() for c in f.changes]
            out.append(d)
        summary = {
            "checked": len(self.functions),
            "drifted": sum(1 for f in self.functions if f.status == "drifted"),
            "deleted": sum(1 for f in self.functions if f.status == "deleted"),
        }
        unfinished = sum(1 for f in self.functions if f.status == "unfinished")
        if unfinished:  # only then: the summary of a report without one is as it always was
            summary["unfinished"] = unfinished
        rolling = sum(1 for f in self.functions if f.status == "rolling_out")
        if rolling:
            summary["rolling_out"] = rolling
        return {
            "format_version": DRIFT_FORMAT_VERSION,
            "checked_at": self.checked_at,
            "summary": summary,
            "functions": out,
        }


def selected_states(
    state_dir: Path, environments: list[str], infrastructures: list[str], errors: list | None = None
) -> list[st.State]:
    """The states of these environments and infrastructures (all when none is given). With
    `errors`, a state that cannot be read is appended there and the others are returned."""
    if errors is not None:
        return st.readable_states(state_dir, errors, environments, infrastructures)
    return [
        s
        for s in st.all_states(state_dir)
        if (not environments or s.environment in environments)
        and (not infrastructures or s.infrastructure in infrastructures)
    ]


class _Recorded(NamedTuple):
    """A function a state records, to check."""

    state: st.State
    name: str
    recorded: dict
    region: str


def check(
    aws,
    states: list[st.State],
    services: list[str],
    functions: list[str] | None = None,
    log: Callable[[str], None] = lambda m: None,
    parallelism: int = 10,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> DriftReport:
    """Each function these states record (of `services` and `functions` when given) against
    what is live: its changes since the last apply, the versions published by someone
    else, and whether reconciler's own deployment of it was left unfinished."""
    from reconciler.engine.refresh import Want, parallel_map, refresh_all

    report = DriftReport(functions=[], checked_at=st.now())
    picked = _pick(states, services, functions)
    log(f"checking {len(picked)} function(s)")
    wants = [Want(p.region, p.recorded.get("connector"), p.name) for p in picked]
    lives, listed = refresh_all(aws, wants, parallelism, progress or NO_PROGRESS, with_versions=True)

    def versions_of(k: int) -> list[dict]:
        return _versions_to_check(aws, picked[k], lives[k], listed[k])

    all_versions = parallel_map(versions_of, list(range(len(picked))), parallelism)
    for p, live, versions in zip(picked, lives, all_versions, strict=False):
        report.functions.append(_function_drift(p, live, versions))
    return report


def _pick(states: list[st.State], services: list[str], functions: list[str] | None) -> list[_Recorded]:
    picked = []
    for s in states:
        for name, rec in sorted(s.functions.items()):
            if services and rec.get("service") not in services:
                continue
            if functions and name not in functions:
                continue
            picked.append(_Recorded(s, name, rec, rec.get("region") or s.region))
    return picked


def _versions_to_check(aws, p: _Recorded, live: dict, listed: list[dict] | None) -> list[dict]:
    """The published versions of a function reconciler has published to (to find those
    published by someone else since its first): from the bulk listing, else one
    ListVersionsByFunction."""
    from reconciler.aws.client import Lambda

    if not live.get("exists") or _known_versions(p)[1] is None:
        return []
    if listed is not None:
        return listed
    return Lambda(aws, p.region, p.recorded.get("connector")).list_versions(p.name)


def _function_drift(p: _Recorded, live: dict, versions: list[dict]) -> FunctionDrift:
    """One function's drift: deleted, rolling out (reconciler's own rollout), unfinished
    (reconciler's own deployment), drifted or in sync."""
    fd = FunctionDrift(
        name=p.name,
        service=p.recorded.get("service", ""),
        environment=p.state.environment,
        infrastructure=p.state.infrastructure,
        region=p.region,
        status="in_sync",
        live=live,
    )
    if not live.get("exists"):
        fd.status = "deleted"
        fd.changes.append(Change("function", p.name, "exists", None, "delete"))
        return fd
    fd.changes = drift_changes(p.recorded, live) + _unrecorded_versions(p, versions)
    half = interrupted_deployment(p.state.history, p.name)
    rollout = shifting(half)
    if rollout is not None:
        _rolling_out(fd, rollout, live)
    elif half is not None:
        fd.status = "unfinished"
        fd.note = _unfinished_note(half)
    elif fd.changes:
        fd.status = "drifted"
    return fd


def _rolling_out(fd: FunctionDrift, rollout: dict, live: dict) -> None:
    """reconciler's own rollout: the weights it recorded are not drift, others are."""
    alias = str(rollout.get("alias"))
    view = (live.get("aliases") or {}).get(alias)
    fd.changes = []
    fd.status, fd.note = "rolling_out", recorded_message(rollout)
    if not explained(rollout, view):
        # routing nobody recorded, during reconciler's own rollout: reported, never accepted by refresh
        fd.changes = [Change("alias", f"{alias}.weights", None, (view or {}).get("weights"))]
        fd.status = "unfinished"
        fd.note += (
            f"; but alias {alias} is on version {(view or {}).get('version')} with weights "
            f"{(view or {}).get('weights')}, which the rollout did not set"
        )


def _unfinished_note(half: dict) -> str:
    return (
        f"reconciler's own {half.get('operation', 'apply')} started at {half.get('started_at')} did not finish ("
        + ("its rollback failed" if half.get("status") == "rollback_failed" else "it was interrupted")
        + "), so Lambda holds part of reconciler's own change; `reconciler apply` finishes it, `reconciler rollback` undoes it"
    )


def _unrecorded_versions(p: _Recorded, versions: list[dict]) -> list[Change]:
    """The versions published after reconciler's first that neither its records nor the
    descriptions of its deployments' versions know: published outside reconciler."""
    known, first = _known_versions(p)
    if first is None:
        return []
    own = _own_descriptions(p)
    out = []
    for v in sorted(versions, key=lambda v: int(v["Version"]) if str(v.get("Version")).isdigit() else -1):
        num = str(v.get("Version"))
        if num.isdigit() and num not in known and int(num) > first and v.get("Description") not in own:
            out.append(Change("version", num, None, num, "create"))
    return out


def _known_versions(p: _Recorded) -> tuple[set[str], int | None]:
    """The versions reconciler recorded for this function (deployed, or accepted by a
    refresh), and the first of them."""
    known = set()
    for h in p.state.history:
        if h.get("function") != p.name:
            continue
        if h.get("version"):
            known.add(str(h["version"]))
        # versions a refresh accepted
        known.update(
            str(c.get("path")) for c in h.get("accepted") or () if isinstance(c, dict) and c.get("kind") == "version"
        )
    if p.recorded.get("version"):
        known.add(str(p.recorded["version"]))
    return known, min((int(v) for v in known if v.isdigit()), default=None)


def _own_descriptions(p: _Recorded) -> set[str]:
    """The descriptions of versions reconciler's deployments of this function publish:
    a version carrying one is reconciler's, even if its apply never recorded it (killed
    or interrupted while PublishVersion was answered, then rolled back)."""
    return {
        publish_description(h["id"])
        for h in p.state.history
        if h.get("function") == p.name and h.get("operation") == "apply" and isinstance(h.get("id"), str)
    }


def accept(report: DriftReport, states: list[st.State], log: Callable[[str], None]) -> int:
    """Record what is live as the new truth for every drifted function (`refresh`)."""
    from reconciler.engine.live import project

    by_key = {(s.environment, s.infrastructure): s for s in states}
    touched: set[tuple[str, str]] = set()
    changed = 0
    for fd in report.drifted:
        s = by_key[(fd.environment, fd.infrastructure)]
        rec = s.functions.get(fd.name)
        if rec is None:
            continue
        if fd.status == "unfinished":
            log(f"{fd.name}: not accepted: {fd.note}")
            continue
        if fd.status == "deleted":
            s.functions.pop(fd.name)
            log(f"{fd.name}: deleted in Lambda; forgotten")
        else:
            live = fd.live
            rec.update(
                configuration=project(live.get("configuration") or {}, rec.get("configuration") or {}),
                code_sha256=live.get("code_sha256"),
                tags=dict(live.get("tags") or {}),
                aliases={n: a for n, a in (live.get("aliases") or {}).items() if n in (rec.get("aliases") or {})},
                updated_at=st.now(),
            )
            if any(c.kind == "code" for c in fd.changes):
                # the recorded source no longer produces this code
                rec.update(code_params=None, code_source=None)
            log(f"{fd.name}: accepted {len(fd.changes)} difference(s) into the state")
        s.history.append(
            {
                "id": st.now(),
                "function": fd.name,
                "service": fd.service,
                "operation": "refresh",
                "status": "succeeded",
                "started_at": st.now(),
                "finished_at": st.now(),
                "version": (s.functions.get(fd.name) or {}).get("version"),
                "code_sha256": (s.functions.get(fd.name) or {}).get("code_sha256"),
                "accepted": [c.to_dict() for c in fd.changes],
            }
        )
        touched.add((fd.environment, fd.infrastructure))
        changed += 1
    for key in touched:
        by_key[key].write()
    return changed
