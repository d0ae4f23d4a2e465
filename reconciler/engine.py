"""load → render → refresh → plan: the read-only half, shared by validate, plan and apply."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from reconciler import state as st
from reconciler.errors import AwsError, ConfigError
from reconciler.load import Workspace, load_workspace
from reconciler.model import FunctionSpec, Plan
from reconciler.render import Options, Rendered, render, targets


@dataclass
class Context:
    workspace: Path
    state_dir: Path
    options: Options
    log: Callable[[str], None] = lambda msg: None
    warnings: list[str] = field(default_factory=list)


def load_and_render(ctx: Context) -> tuple[Workspace, Rendered]:
    ws = load_workspace(ctx.workspace, ctx.state_dir)
    rendered = render(ws, ctx.options)
    ctx.warnings.extend(rendered.warnings)
    return ws, rendered


def resolve_artifact(aws, spec: FunctionSpec, cache: dict) -> dict:
    """The code to deploy: its SHA-256 as Lambda reports it, where it comes from, and the
    Code parameters for Lambda."""
    from reconciler.aws import ecr_image, s3_sha256

    art = spec.artifact
    if art["type"] == "S3":
        got = s3_sha256(aws, art, cache)
        params = {"S3Bucket": art["bucket"], "S3Key": art["key"]}
        if got.get("version_id") and got["version_id"] != "null":
            params["S3ObjectVersion"] = got["version_id"]
        return {"sha256": got["sha256"], "source": {"type": "S3", "uri": got["uri"], "etag": got["etag"], "version_id": got.get("version_id")},
                "params": params}
    got = ecr_image(aws, art)
    return {"sha256": got["sha256"], "source": {"type": "ECR", "uri": got["uri"], "digest": got["digest"], "tag": got.get("tag")},
            "params": {"ImageUri": got["image_uri"]}}


def refresh_function(aws, region: str, connector: dict | None, name: str) -> dict:
    from reconciler.aws import Lambda
    from reconciler.live import snapshot

    lam = Lambda(aws, region, connector)
    got = lam.get_function(name)
    aliases = lam.list_aliases(name) if got is not None else {}
    return snapshot(got, aliases)


def make_plan(ctx: Context, aws, prune: bool = False) -> Plan:
    from reconciler.aws import Lambda, caller_account
    from reconciler.plan import orphan, plan_function

    ws, rendered = load_and_render(ctx)
    specs = rendered.functions
    states: dict[tuple[str, str], st.State] = {}
    for s in specs:
        key = (s.environment, s.infrastructure)
        if key not in states:
            states[key] = st.load(ctx.state_dir, *key)

    # artifacts: once per distinct artifact, whatever number of functions deploy it
    cache: dict[str, str] = {}
    for s_ in states.values():
        cache.update(s_.artifacts)
    code_by_artifact: dict[str, dict] = {}
    for s in specs:
        key = _artifact_key(s.artifact)
        if key not in code_by_artifact:
            ctx.log(f"artifact {s.artifact.get('id')}: resolving {key}")
            code_by_artifact[key] = resolve_artifact(aws, s, cache)

    accounts: dict[tuple, str] = {}
    for s in specs:
        if s.account:
            k = (s.region, (s.connector or {}).get("role_arn"))
            if k not in accounts:
                accounts[k] = caller_account(aws, s.region, s.connector)
            if accounts[k] != s.account:
                raise ConfigError(f"FunctionName ARN is in account {s.account} but the credentials for {s.target} are for account {accounts[k]}",
                                  *_split_source(s.source))

    plan = Plan(functions=[], created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                workspace=str(ctx.workspace), prune=prune)
    for key, s_ in sorted(states.items()):
        plan.state_refs[str(s_.path)] = s_.ref
    for s in sorted(specs, key=lambda x: (x.environment, x.infrastructure, x.name)):
        state = states[(s.environment, s.infrastructure)]
        ctx.log(f"refreshing {s.name} ({s.region})")
        live = refresh_function(aws, s.region, s.connector, s.name)
        code = code_by_artifact[_artifact_key(s.artifact)]
        fp = plan_function(s, state.functions.get(s.name), live, code, str(state.path))
        if fp.publish and fp.action == "update":
            versions = Lambda(aws, s.region, s.connector).list_versions(s.name)
            numbers = [int(v["Version"]) for v in versions if str(v.get("Version", "")).isdigit()]
            fp.next_version = str(max(numbers, default=0) + 1)
            for c in fp.changes:
                if c.new == "(new)":
                    c.new = fp.next_version
        plan.functions.append(fp)

    # functions recorded in state that no target of the workspace deploys any more
    every = set(targets(ws, Options()))
    for (env, infra), state in sorted(states.items()):
        desired_names = {s.name for s in specs if (s.environment, s.infrastructure) == (env, infra)}
        for name, rec in sorted(state.functions.items()):
            if name in desired_names:
                continue
            still = any(t.service == rec.get("service") and t.environment == env and t.infrastructure == infra for t in every)
            if still:
                continue  # another service's function, or one outside the selection
            live = refresh_function(aws, rec.get("region") or state.region, rec.get("connector"), name)
            plan.functions.append(orphan(name, rec, live, prune, str(state.path), env, infra))
    return plan


def _artifact_key(art: dict) -> str:
    if art["type"] == "S3":
        return f"s3://{art['bucket']}/{art['key']}@{art['region']}"
    pin = art.get("digest") or art.get("tag") or f"~{art.get('tag_regex')}"
    return f"ecr:{art.get('registry_id') or ''}/{art['repository']}:{pin}@{art['region']}"


def _split_source(source: str) -> tuple[str | None, int | None]:
    if ":" in source:
        f, _, line = source.rpartition(":")
        return f, int(line) if line.isdigit() else None
    return source or None, None


def check_aws_error(exc: Exception) -> AwsError:
    return exc if isinstance(exc, AwsError) else AwsError(str(exc))
