"""make_plan: load → render → refresh → plan for the selected targets. Reads the state files
(taking their locks for an apply), the secrets, the artifacts and what is live, then hands
each function to the pure planner (`diff.plan_function`) and numbers the versions to publish.
Makes only read calls to AWS."""

from __future__ import annotations

import datetime as _dt
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from reconciler.engine.artifacts import artifact_key, resolve_artifact
from reconciler.engine.context import Context, load_and_render
from reconciler.engine.refresh import Want, alias_check, early_refresh, parallel_map, refresh_all
from reconciler.errors import ConfigError
from reconciler.model import FunctionSpec, Plan
from reconciler.store import state as st
from reconciler.workspace.render import Options, targets


def make_plan(ctx: Context, aws, prune: bool = False, hold: ExitStack | None = None, lock_timeout: float = 0) -> Plan:
    """The plan for the selected targets. With `hold` (an apply), the lock of each state
    file whose functions are deployed under it (allowSimultaneousDeployments false) is
    taken before its state is read and what is live refreshed, and kept in `hold`: no
    other reconciler can change these functions between this read and the apply, which
    then uses the plan's snapshots as its rollback data."""
    from reconciler.aws.client import Lambda, caller_account
    from reconciler.engine.diff import interrupted_deployment, number_versions, orphan, plan_function

    # A plan of everything (no selector, no lock to take first) starts reading the functions
    # its local state files record while the workspace loads and renders: they are nearly
    # always the functions the plan needs (desired, or orphans to report).
    # (its thread is a daemon: a workspace that fails to load does not wait for it)
    early = early_refresh(ctx, aws) if hold is None else None
    ws, rendered = load_and_render(ctx)
    specs = rendered.functions
    locked: set[str] = set()
    with ctx.stats.phase("refresh"):
        states: dict[tuple[str, str], st.State] = {}
        by_key: dict[tuple[str, str], list[FunctionSpec]] = {}
        for s in specs:
            by_key.setdefault((s.environment, s.infrastructure), []).append(s)
        for key in sorted(by_key):
            path = st.state_path(ctx.state_dir, *key)
            shared = all(s.allow_simultaneous for s in by_key[key]) and isinstance(path, Path)
            if hold is not None and not shared:
                hold.enter_context(st.locked(path, "apply", timeout=lock_timeout))
                locked.add(str(path))
            states[key] = (
                early.states.get(key) if early is not None and key in early.states else st.load(ctx.state_dir, *key)
            )

        # secrets: each reference read once from the store (an error names every reference
        # that cannot be read, and where it is used, never a value); the sealer of each state
        # (its fingerprint key: created when a function there uses a secret)
        from reconciler.aws.secrets import read_values as read_secret_values
        from reconciler.store.seals import sealer_for
        from reconciler.util import secrets as sec

        wanted = sec.wanted_by(specs)
        secret_values = read_secret_values(aws, wanted) if wanted else {}
        sealers = {
            key: sealer_for(
                st.state_path(ctx.state_dir, *key),
                create=any(sec.references(sec.env_vars(s.config)) for s in by_key[key]),
            )
            for key in by_key
        }
        for s in specs:
            sec.remember_env(s.config)

        # artifacts: once per distinct artifact, whatever number of functions deploy it;
        # an ECR repository once whatever number of tags are read from it
        cache: dict[str, str] = {}
        for s_ in states.values():
            cache.update(s_.artifacts)

        def resolve_all() -> dict[str, dict]:
            code_by_artifact: dict[str, dict] = {}
            ecr_repos: dict = {}
            for s in specs:
                key = artifact_key(s.artifact)
                if key not in code_by_artifact:
                    ctx.log(f"artifact {s.artifact.get('id')}: resolving {key}")
                    code_by_artifact[key] = resolve_artifact(aws, s, cache, ecr_repos)
            return code_by_artifact

        # resolved alongside the refresh of the functions
        artifacts_ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artifacts")
        artifacts = artifacts_ex.submit(resolve_all)
        artifacts_ex.shutdown(wait=False)

        accounts: dict[tuple, str] = {}
        for s in specs:
            if s.account:
                k = (s.region, (s.connector or {}).get("role_arn"))
                if k not in accounts:
                    accounts[k] = caller_account(aws, s.region, s.connector)
                if accounts[k] != s.account:
                    raise ConfigError(
                        f"FunctionName ARN is in account {s.account} but the credentials for {s.target} are for account {accounts[k]}",
                        *_split_source(s.source),
                    )

        ordered = sorted(specs, key=lambda x: (x.environment, x.infrastructure, x.name))
        # functions recorded in state that no target of the workspace deploys any more
        orphans: list[tuple[str, dict, st.State, str, str]] = []
        every = set(targets(ws, Options()))
        for (env, infra), state in sorted(states.items()):
            desired_names = {s.name for s in specs if (s.environment, s.infrastructure) == (env, infra)}
            for name, rec in sorted(state.functions.items()):
                if name in desired_names:
                    continue
                still = any(
                    t.service == rec.get("service") and t.environment == env and t.infrastructure == infra
                    for t in every
                )
                if still:
                    continue  # another service's function, or one outside the selection
                orphans.append((name, rec, state, env, infra))

        wants = [
            Want(
                s.region,
                s.connector,
                s.name,
                alias_check(s, states[(s.environment, s.infrastructure)].functions.get(s.name)),
            )
            for s in ordered
        ]
        wants += [
            Want(rec.get("region") or state.region, rec.get("connector"), name) for name, rec, state, _, _ in orphans
        ]
        ctx.log(f"refreshing {len(wants)} function(s)")
        try:
            if early is not None:
                lives = early.complete(wants)
            else:
                lives, _ = refresh_all(aws, wants, ctx.parallelism, ctx.progress)
        finally:
            code_by_artifact = artifacts.result()

    with ctx.stats.phase("plan"):
        plan = Plan(
            functions=[],
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            workspace=str(ctx.workspace),
            prune=prune,
            locked=locked,
        )
        for key, s_ in sorted(states.items()):
            plan.state_refs[str(s_.path)] = s_.ref
        for s, live in zip(ordered, lives, strict=False):
            state = states[(s.environment, s.infrastructure)]
            code = code_by_artifact[artifact_key(s.artifact)]
            sec.remember_env(live.get("configuration"))
            fp = plan_function(
                s,
                state.functions.get(s.name),
                live,
                code,
                str(state.path),
                interrupted=interrupted_deployment(state.history, s.name),
                secrets=secret_values,
                sealer=sealers[(s.environment, s.infrastructure)],
            )
            fp.live = live
            plan.functions.append(fp)

        # The number the next version gets: the one after the version this state records
        # (published versions are immutable and reconciler publishes them). Lambda's list of
        # versions is read only where the state cannot say: no version recorded, an alias
        # already on a newer version (published outside reconciler), or an interrupted
        # apply to converge (which may have published one already, to be reused).
        publishing = []
        newest_by_state: dict[tuple[str, str], dict[str, int]] = {}
        for fp, s in zip(plan.functions, ordered, strict=False):
            if not (fp.publish and fp.action == "update"):
                continue
            key = (s.environment, s.infrastructure)
            state = states[key]
            if key not in newest_by_state:
                newest_by_state[key] = _newest_versions(state)
            newest = newest_by_state[key].get(s.name)
            seen = [
                int(a["version"])
                for a in (fp.live or {}).get("aliases", {}).values()
                if str(a.get("version")).isdigit()
            ]
            if (
                newest is not None
                and all(v <= newest for v in seen)
                and not interrupted_deployment(state.history, s.name)
            ):
                number_versions(fp, [{"Version": str(newest)}])
            else:
                publishing.append((fp, s))

        def versions_of(item) -> list[dict]:
            fp, s = item
            return Lambda(aws, s.region, s.connector).list_versions(s.name)

        # the next version number; or, converging an apply that was killed after it
        # published, that version (reused, not published again)
        for (fp, s), versions in zip(publishing, parallel_map(versions_of, publishing, ctx.parallelism), strict=False):
            history = states[(s.environment, s.infrastructure)].history
            number_versions(fp, versions, interrupted_deployment(history, s.name))

        # rollouts: how each alias moving to a new version shifts its traffic (a rule of
        # reconciler.yaml, or a rollout a killed apply left to resume)
        _plan_rollouts(ctx, aws, plan, ordered, states)

        for (name, rec, state, env, infra), live in zip(orphans, lives[len(ordered) :], strict=False):
            plan.functions.append(orphan(name, rec, live, prune, str(state.path), env, infra))
    return plan


def _plan_rollouts(ctx: Context, aws, plan: Plan, ordered: list[FunctionSpec], states: dict) -> None:
    from reconciler.aws.client import Lambda
    from reconciler.aws.cloudwatch import CloudWatch
    from reconciler.engine.diff import interrupted_deployment
    from reconciler.engine.traffic import plan_rollout

    for fp, s in zip(plan.functions, ordered, strict=False):
        if fp.action != "update":
            continue
        interrupted = interrupted_deployment(states[(s.environment, s.infrastructure)].history, s.name)
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


def _split_source(source: str) -> tuple[str | None, int | None]:
    if ":" in source:
        f, _, line = source.rpartition(":")
        return f, int(line) if line.isdigit() else None
    return source or None, None
