"""make_plan: load → render → refresh → plan for the selected targets.

Reads, in this order: the state files (taking their locks for an apply), the secrets, the
artifacts (on a thread, alongside the rest), the accounts of the credentials and what is
live; then hands each function to the pure planner (`diff.plan_function`), numbers the
versions to publish, plans the rollouts (`traffic.plan_rollout`: the schedule and Lambda's
rules, checked) and lists the orphans. Makes only read calls to AWS. Each step below
is one function; a new plan-time step (a check, a schedule) is one more call in `_plan`.
"""

from __future__ import annotations

import datetime as _dt
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from reconciler.engine.artifacts import artifact_key, resolve_all
from reconciler.engine.context import Context, load_and_render
from reconciler.engine.diff import interrupted_deployment, number_versions, orphan, plan_function, source_location
from reconciler.engine.refresh import EarlyRefresh, Want, alias_check, early_refresh, parallel_map, refresh_all
from reconciler.errors import ConfigError
from reconciler.model import FunctionPlan, FunctionSpec, Plan
from reconciler.store import state as st
from reconciler.workspace.load import Workspace
from reconciler.workspace.render import Options, targets

StateKey = tuple[str, str]  # (environment, infrastructure): one state file


@dataclass
class _States:
    """The state files of the selected functions, read (under their locks for an apply)."""

    by_key: dict[StateKey, list[FunctionSpec]]
    states: dict[StateKey, st.State]
    locked: set[str]


@dataclass
class _Secrets:
    """The secret values the functions reference, and the sealer of each state file."""

    values: dict
    sealers: dict[StateKey, Any]


class _Orphan(NamedTuple):
    """A function recorded in a state that no target of the workspace deploys any more."""

    name: str
    recorded: dict
    state: st.State
    environment: str
    infrastructure: str


@dataclass
class _Read:
    """Everything the planner is given, read before it runs."""

    ordered: list[FunctionSpec]  # the desired functions, by environment, infrastructure, name
    orphans: list[_Orphan]
    states: _States
    secrets: _Secrets
    lives: list[dict]  # live snapshots of `ordered`, then of `orphans`
    codes: dict[str, dict]  # artifact_key() → the resolved code

    def state_of(self, spec: FunctionSpec) -> st.State:
        return self.states.states[(spec.environment, spec.infrastructure)]


def make_plan(ctx: Context, aws, prune: bool = False, hold: ExitStack | None = None, lock_timeout: float = 0) -> Plan:
    """The plan for the selected targets. With `hold` (an apply), the lock of each state
    file whose functions are deployed under it (allowSimultaneousDeployments false) is
    taken before its state is read and what is live refreshed, and kept in `hold`: no
    other reconciler can change these functions between this read and the apply, which
    then uses the plan's snapshots as its rollback data."""
    # A plan of everything (no selector, no lock to take first) starts reading the functions
    # its local state files record while the workspace loads and renders: they are nearly
    # always the functions the plan needs (desired, or orphans to report).
    # (its thread is a daemon: a workspace that fails to load does not wait for it)
    early = early_refresh(ctx, aws) if hold is None else None
    ws, rendered = load_and_render(ctx)
    with ctx.stats.phase("refresh"):
        read = _read(ctx, aws, ws, rendered.functions, hold, lock_timeout, early)
    with ctx.stats.phase("plan"):
        return _plan(ctx, aws, read, prune)


def _read(
    ctx: Context,
    aws,
    ws: Workspace,
    specs: list[FunctionSpec],
    hold: ExitStack | None,
    lock_timeout: float,
    early: EarlyRefresh | None,
) -> _Read:
    """Every read the plan needs; the artifacts resolve on a thread alongside the others."""
    states = _read_states(ctx, specs, hold, lock_timeout, early)
    secrets = _read_secrets(ctx, aws, specs, states.by_key)
    codes = _start_resolving(ctx, aws, specs, states.states)
    _check_accounts(aws, specs)
    ordered = sorted(specs, key=lambda x: (x.environment, x.infrastructure, x.name))
    orphans = _orphans(ws, specs, states.states)
    wants = _wants(ordered, orphans, states.states)
    ctx.log(f"refreshing {len(wants)} function(s)")
    try:
        if early is not None:
            lives = early.complete(wants)
        else:
            lives, _ = refresh_all(aws, wants, ctx.parallelism, ctx.progress)
    finally:
        code_by_artifact = codes.result()
    return _Read(ordered, orphans, states, secrets, lives, code_by_artifact)


def _read_states(
    ctx: Context, specs: list[FunctionSpec], hold: ExitStack | None, lock_timeout: float, early: EarlyRefresh | None
) -> _States:
    """Each state file the selected functions are recorded in: locked first for an apply
    (unless all its functions allow simultaneous deployments), then read; the early
    refresh has read the local ones already."""
    out = _States(by_key={}, states={}, locked=set())
    for s in specs:
        out.by_key.setdefault((s.environment, s.infrastructure), []).append(s)
    for key in sorted(out.by_key):
        path = st.state_path(ctx.state_dir, *key)
        shared = all(s.allow_simultaneous for s in out.by_key[key]) and isinstance(path, Path)
        if hold is not None and not shared:
            hold.enter_context(st.locked(path, "apply", timeout=lock_timeout))
            out.locked.add(str(path))
        if early is not None and key in early.states:
            out.states[key] = early.states[key]
        else:
            out.states[key] = st.load(ctx.state_dir, *key)
    return out


def _read_secrets(ctx: Context, aws, specs: list[FunctionSpec], by_key: dict[StateKey, list[FunctionSpec]]) -> _Secrets:
    """Each secret reference read once from the store (an error names every reference that
    cannot be read, and where it is used, never a value); the sealer of each state (its
    fingerprint key: created when a function there uses a secret)."""
    from reconciler.aws.secrets import read_values as read_secret_values
    from reconciler.store.seals import sealer_for
    from reconciler.util import secrets as sec

    wanted = sec.wanted_by(specs)
    values = read_secret_values(aws, wanted) if wanted else {}
    sealers = {
        key: sealer_for(
            st.state_path(ctx.state_dir, *key),
            create=any(sec.uses_secrets(s) for s in by_key[key]),
        )
        for key in by_key
    }
    for s in specs:
        sec.remember_env(s.config)
    return _Secrets(values, sealers)


def _start_resolving(
    ctx: Context, aws, specs: list[FunctionSpec], states: dict[StateKey, st.State]
) -> Future[dict[str, dict]]:
    """The artifacts, resolved on a thread alongside the refresh of the functions (with
    what the state files remember of them)."""
    cache: dict[str, str] = {}
    for s_ in states.values():
        cache.update(s_.artifacts)
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artifacts")
    future = ex.submit(resolve_all, aws, specs, cache, ctx.log)
    ex.shutdown(wait=False)
    return future


def _check_accounts(aws, specs: list[FunctionSpec]) -> None:
    """A FunctionName given as an ARN names an account: the credentials must be for it."""
    from reconciler.aws.client import caller_account

    accounts: dict[tuple, str] = {}
    for s in specs:
        if not s.account:
            continue
        k = (s.region, (s.connector or {}).get("role_arn"))
        if k not in accounts:
            accounts[k] = caller_account(aws, s.region, s.connector)
        if accounts[k] != s.account:
            raise ConfigError(
                f"FunctionName ARN is in account {s.account} but the credentials for {s.target} are for account {accounts[k]}",
                *source_location(s.source),
            )


def _orphans(ws: Workspace, specs: list[FunctionSpec], states: dict[StateKey, st.State]) -> list[_Orphan]:
    """The functions recorded in these states that no target of the workspace deploys any
    more (not another service's function, nor one outside the selection)."""
    out: list[_Orphan] = []
    every = set(targets(ws, Options()))
    for (env, infra), state in sorted(states.items()):
        desired_names = {s.name for s in specs if (s.environment, s.infrastructure) == (env, infra)}
        for name, rec in sorted(state.functions.items()):
            if name in desired_names:
                continue
            still = any(
                t.service == rec.get("service") and t.environment == env and t.infrastructure == infra for t in every
            )
            if still:
                continue  # another service's function, or one outside the selection
            out.append(_Orphan(name, rec, state, env, infra))
    return out


def _wants(ordered: list[FunctionSpec], orphans: list[_Orphan], states: dict[StateKey, st.State]) -> list[Want]:
    """What to refresh: the desired functions, then the orphans."""
    wants = [
        Want(
            s.region,
            s.connector,
            s.name,
            alias_check(s, states[(s.environment, s.infrastructure)].functions.get(s.name)),
        )
        for s in ordered
    ]
    wants += [Want(o.recorded.get("region") or o.state.region, o.recorded.get("connector"), o.name) for o in orphans]
    return wants


def _plan(ctx: Context, aws, read: _Read, prune: bool) -> Plan:
    """The plan from what was read: each desired function planned, the versions to publish
    numbered, the rollout of each alias shifted gradually, the orphans listed (deleted with
    `prune`)."""
    plan = Plan(
        functions=[],
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        workspace=str(ctx.workspace),
        prune=prune,
        locked=read.states.locked,
    )
    for _key, s_ in sorted(read.states.states.items()):
        plan.state_refs[str(s_.path)] = s_.ref
    plan.functions = [_plan_function(s, live, read) for s, live in zip(read.ordered, read.lives, strict=False)]
    _number_versions(ctx, aws, plan.functions, read)
    _plan_rollouts(ctx, aws, plan.functions, read)
    for o, live in zip(read.orphans, read.lives[len(read.ordered) :], strict=False):
        plan.functions.append(
            orphan(o.name, o.recorded, live, prune, str(o.state.path), o.environment, o.infrastructure)
        )
    return plan


def _plan_function(spec: FunctionSpec, live: dict, read: _Read) -> FunctionPlan:
    """One desired function through the pure planner, with its live snapshot kept."""
    from reconciler.util import secrets as sec

    state = read.state_of(spec)
    sec.remember_env(live.get("configuration"))
    fp = plan_function(
        spec,
        state.functions.get(spec.name),
        live,
        read.codes[artifact_key(spec.artifact)],
        str(state.path),
        interrupted=interrupted_deployment(state.history, spec.name),
        secrets=read.secrets.values,
        sealer=read.secrets.sealers[(spec.environment, spec.infrastructure)],
    )
    fp.live = live
    return fp


def _number_versions(ctx: Context, aws, planned: list[FunctionPlan], read: _Read) -> None:
    """The version each publishing update gets: the next number; or, converging an apply
    that was killed after it published, that version (reused, not published again)."""
    from reconciler.aws.client import Lambda

    publishing = _number_from_state(planned, read)

    def versions_of(item: tuple[FunctionPlan, FunctionSpec]) -> list[dict]:
        _fp, s = item
        return Lambda(aws, s.region, s.connector).list_versions(s.name)

    for (fp, s), versions in zip(publishing, parallel_map(versions_of, publishing, ctx.parallelism), strict=False):
        number_versions(fp, versions, interrupted_deployment(read.state_of(s).history, s.name))


def _number_from_state(planned: list[FunctionPlan], read: _Read) -> list[tuple[FunctionPlan, FunctionSpec]]:
    """Numbers the publishing updates the state can: the one after the version it records
    (published versions are immutable and reconciler publishes them). Returns the others,
    whose versions Lambda must list: no version recorded, an alias already on a newer
    version (published outside reconciler), or an interrupted apply to converge (which may
    have published one already, to be reused)."""
    publishing = []
    newest_by_state: dict[StateKey, dict[str, int]] = {}
    for fp, s in zip(planned, read.ordered, strict=False):
        if not (fp.publish and fp.action == "update"):
            continue
        key = (s.environment, s.infrastructure)
        state = read.state_of(s)
        if key not in newest_by_state:
            newest_by_state[key] = _newest_versions(state)
        newest = newest_by_state[key].get(s.name)
        seen = [
            int(a["version"]) for a in (fp.live or {}).get("aliases", {}).values() if str(a.get("version")).isdigit()
        ]
        if newest is not None and all(v <= newest for v in seen) and not interrupted_deployment(state.history, s.name):
            number_versions(fp, [{"Version": str(newest)}])
        else:
            publishing.append((fp, s))
    return publishing


def _plan_rollouts(ctx: Context, aws, planned: list[FunctionPlan], read: _Read) -> None:
    """How each alias moving to a new version shifts its traffic: a rule of
    reconciler.yaml, or a rollout a killed apply left to resume (engine.traffic)."""
    from reconciler.aws.client import Lambda
    from reconciler.aws.cloudwatch import CloudWatch
    from reconciler.engine.traffic import plan_rollout

    for fp, s in zip(planned, read.ordered, strict=False):
        if fp.action != "update":
            continue
        interrupted = interrupted_deployment(read.state_of(s).history, s.name)
        if not ctx.rollout_rules and interrupted is None:
            continue
        plan_rollout(
            fp,
            s,
            fp.live or {},
            ctx.rollout_rules,
            Lambda(aws, s.region, s.connector),
            lambda region, connector: CloudWatch(aws, region, connector),
            interrupted,
        )


def _newest_versions(state: st.State) -> dict[str, int]:
    """Per function, the newest version number this state knows was published: the one
    recorded, or one a deployment published (a rolled-back apply leaves the older one
    recorded, but its version exists)."""
    out: dict[str, int] = {}

    def see(name, v) -> None:
        if name and str(v or "").isdigit() and int(v) > out.get(name, 0):
            out[name] = int(v)

    for name, rec in state.functions.items():
        see(name, rec.get("version"))
    for h in state.history:
        see(h.get("function"), h.get("version"))
    return out
