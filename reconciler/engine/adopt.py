"""`reconciler import`: adopt functions that already exist in Lambda into the state,
recording them as they are, without changing anything in AWS.

The steps, per function: read it (it must exist and not be another owner's), then under
the state's lock: the version that runs its code, the code's source when the artifact
resolves to the same code, the record and its history entry."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from reconciler.engine.context import Context, load_and_render
from reconciler.errors import ReconcilerError, did_you_mean
from reconciler.model import FunctionSpec, owner_conflict
from reconciler.store import state as st


def import_functions(
    ctx: Context, aws, names: list[str], log: Callable[[str], None], lock_timeout: float = 0
) -> list[str]:
    """Adopt the selected functions (those named, when `names` is given); the names of those
    imported (one already in the state is left as it is)."""
    _, rendered = load_and_render(ctx)
    imported = []
    for spec in _selected(rendered.functions, names):
        live = _read_adoptable(aws, spec)
        path = st.state_path(ctx.state_dir, spec.environment, spec.infrastructure)
        with st.locked(Path(path), "import", timeout=lock_timeout):
            state = st.load(ctx.state_dir, spec.environment, spec.infrastructure)
            if spec.name in state.functions:
                log(f"{spec.name}: already in the state; nothing to import")
                continue
            version = _running_version(aws, spec, live)
            _record(state, spec, live, version, _code_source(aws, spec, state, live))
            state.write()
            log(f"{spec.name}: imported (version {version or '-'}, code {live.get('code_sha256')})")
            imported.append(spec.name)
    return imported


def _selected(specs: list[FunctionSpec], names: list[str]) -> list[FunctionSpec]:
    """The functions named (each must be deployed by a selected target), or all."""
    if not names:
        return specs
    known = [s.name for s in specs]
    for n in names:
        if n not in known:
            raise ReconcilerError(f"no selected target deploys a function named '{n}'", hint=did_you_mean(n, known))
    return [s for s in specs if s.name in names]


def _read_adoptable(aws, spec: FunctionSpec) -> dict:
    """The live function, which must exist and not belong to another owner."""
    from reconciler.engine.refresh import refresh_function

    live = refresh_function(aws, spec.region, spec.connector, spec.name)
    if not live.get("exists"):
        raise ReconcilerError(
            f"function {spec.name} does not exist in Lambda ({spec.region}); `reconciler apply` creates it"
        )
    why = owner_conflict(spec.service, spec.environment, live.get("tags", {}), spec.infrastructure)
    if why:
        raise ReconcilerError(f"refusing to import {spec.name} for service '{spec.service}': {why}")
    return live


def _running_version(aws, spec: FunctionSpec, live: dict) -> str | None:
    """The published version with the live code: the one an alias points to, else the newest."""
    from reconciler.aws.client import Lambda

    versions = Lambda(aws, spec.region, spec.connector).list_versions(spec.name)
    matching = [v["Version"] for v in versions if v.get("CodeSha256") == live.get("code_sha256")]
    alias_versions = [a["version"] for a in live.get("aliases", {}).values() if a.get("version") in matching]
    return alias_versions[0] if alias_versions else (matching[-1] if matching else None)


def _code_source(aws, spec: FunctionSpec, state: st.State, live: dict) -> tuple[dict | None, dict | None]:
    """(source, Code parameters) of the artifact when it resolves to the live code, else
    (None, None): the state then does not claim where the code came from."""
    from reconciler.engine.artifacts import resolve_artifact

    try:
        code = resolve_artifact(aws, spec, dict(state.artifacts))
    except ReconcilerError:
        return None, None
    if code["sha256"] != live.get("code_sha256"):
        return None, None
    return code.get("source"), code["params"]


def _record(
    state: st.State, spec: FunctionSpec, live: dict, version: str | None, code: tuple[dict | None, dict | None]
) -> None:
    """The function recorded in `state` as it is live, with an `import` history entry."""
    from reconciler.engine.diff import desired_config
    from reconciler.engine.live import project
    from reconciler.util.secrets import env_vars, references, secret_places, shown

    config, _ = desired_config(spec, None)
    code_source, code_params = code
    wanted_aliases = {a["Name"] for a in spec.aliases}
    state.region = state.region or spec.region
    state.functions[spec.name] = {
        "service": spec.service,
        "region": spec.region,
        "arn": live.get("arn"),
        "package_type": live.get("package_type"),
        "version": version,
        "code_sha256": live.get("code_sha256"),
        "code_source": code_source,
        "code_params": code_params,
        "image_uri": live.get("image_uri"),
        "architectures": live.get("architectures"),
        "configuration": project(live.get("configuration") or {}, config),
        "tags": {k: v for k, v in (live.get("tags") or {}).items() if k in spec.tags},
        "aliases": {n: a for n, a in (live.get("aliases") or {}).items() if n in wanted_aliases},
        "connector": spec.connector,
        "updated_at": st.now(),
    }
    refs = {k: shown(v) for k, v in env_vars(spec.config).items() if references(v)}
    if refs:  # kept as seals in the state, like an apply's (reconciler.secrets)
        state.functions[spec.name]["secrets"] = refs
    places = secret_places(spec.config, spec.tags, spec.aliases)
    if places:  # a description, a tag... that uses a secret: the same
        state.functions[spec.name]["secret_fields"] = places
    state.history.append(
        {
            "id": str(uuid.uuid4()),
            "function": spec.name,
            "service": spec.service,
            "operation": "import",
            "status": "succeeded",
            "started_at": st.now(),
            "finished_at": st.now(),
            "version": version,
            "code_sha256": live.get("code_sha256"),
        }
    )
