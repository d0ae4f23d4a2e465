"""`reconciler import`: adopt functions that already exist in Lambda into the state,
recording them as they are, without changing anything in AWS."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from reconciler.errors import ReconcilerError, did_you_mean
from reconciler.model import owner_conflict
from reconciler.store import state as st


def import_functions(ctx, aws, names: list[str], log: Callable[[str], None], lock_timeout: float = 0) -> list[str]:
    from reconciler.aws.client import Lambda
    from reconciler.engine.diff import desired_config
    from reconciler.engine.live import project
    from reconciler.engine.artifacts import resolve_artifact
    from reconciler.engine.context import load_and_render
    from reconciler.engine.refresh import refresh_function

    _, rendered = load_and_render(ctx)
    specs = rendered.functions
    if names:
        known = [s.name for s in specs]
        for n in names:
            if n not in known:
                raise ReconcilerError(f"no selected target deploys a function named '{n}'", hint=did_you_mean(n, known))
        specs = [s for s in specs if s.name in names]
    imported = []
    for spec in specs:
        live = refresh_function(aws, spec.region, spec.connector, spec.name)
        if not live.get("exists"):
            raise ReconcilerError(
                f"function {spec.name} does not exist in Lambda ({spec.region}); `reconciler apply` creates it"
            )
        why = owner_conflict(spec.service, spec.environment, live.get("tags", {}), spec.infrastructure)
        if why:
            raise ReconcilerError(f"refusing to import {spec.name} for service '{spec.service}': {why}")
        path = st.state_path(ctx.state_dir, spec.environment, spec.infrastructure)
        with st.locked(Path(path), "import", timeout=lock_timeout):
            state = st.load(ctx.state_dir, spec.environment, spec.infrastructure)
            if spec.name in state.functions:
                log(f"{spec.name}: already in the state; nothing to import")
                continue
            versions = Lambda(aws, spec.region, spec.connector).list_versions(spec.name)
            matching = [v["Version"] for v in versions if v.get("CodeSha256") == live.get("code_sha256")]
            alias_versions = [a["version"] for a in live.get("aliases", {}).values() if a.get("version") in matching]
            version = alias_versions[0] if alias_versions else (matching[-1] if matching else None)
            config, _ = desired_config(spec, None)
            from reconciler.util.secrets import env_vars, references, shown

            code_params = None
            try:
                code = resolve_artifact(aws, spec, dict(state.artifacts))
                if code["sha256"] == live.get("code_sha256"):
                    code_params = code["params"]
            except ReconcilerError:
                code = {}
            wanted_aliases = {a["Name"] for a in spec.aliases}
            state.region = state.region or spec.region
            state.functions[spec.name] = {
                "service": spec.service,
                "region": spec.region,
                "arn": live.get("arn"),
                "package_type": live.get("package_type"),
                "version": version,
                "code_sha256": live.get("code_sha256"),
                "code_source": code.get("source") if code_params else None,
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
            state.write()
            log(f"{spec.name}: imported (version {version or '-'}, code {live.get('code_sha256')})")
            imported.append(spec.name)
    return imported
