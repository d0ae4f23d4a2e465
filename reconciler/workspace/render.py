"""From loaded entities to fully rendered FunctionSpecs, one per target. No AWS."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ConfigError, ErrorList, ReconcilerError, did_you_mean
from reconciler.model import OWNER_ENVIRONMENT, OWNER_INFRASTRUCTURE, OWNER_SERVICE, FunctionSpec, Target
from reconciler.util.secrets import outside_value, references
from reconciler.util.yamlsrc import Doc
from reconciler.workspace.connectors import aws_connector
from reconciler.workspace.expr import Scope, input_default, is_runtime_input, resolve_string, resolve_tree
from reconciler.workspace.load import LOOP, Entity, StageContext, Workspace, pipeline_stages, stage_skipped
from reconciler.workspace.schema import DEFERRED, input_shape, normalise, region_problem, update_config_fields

# Lambda refuses environment variables whose JSON ({"KEY":"value",...}) is over 4 KB
LAMBDA_ENV_LIMIT = 4096
GIT_STORES = ("Github", "GitLab", "Bitbucket", "Git", "AzureRepo", "CodeCommit")
LOCAL_STORES = ("Harness", "Local", "InheritFromManifest")
ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:(?P<name>[A-Za-z0-9_-]+)(?::(?P<qualifier>[^:]+))?$"
)
VARIABLE_TYPES = ("String", "Number", "Secret")


@dataclass
class Options:
    services: list[str] = field(default_factory=list)
    environments: list[str] = field(default_factory=list)
    infrastructures: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)  # --var NAME=VALUE
    artifact: str | None = None  # --artifact ID
    # exactly these targets (a pipeline run's stage target, with its input set), not the
    # workspace's; -s/-e/-i are not used then
    only: list[Target] | None = None
    # <+provisioner.NAME>: {"outputs", "source", "live"} (reconciler.provision); the CLI sets the defaults
    provisioner: dict = field(default_factory=lambda: _provisioner_defaults())


def _provisioner_defaults() -> dict:
    from reconciler.workspace.provision import defaults

    return defaults()


@dataclass
class Rendered:
    functions: list[FunctionSpec]
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- targets


def targets(ws: Workspace, opts: Options) -> list[Target]:
    """The (service, environment, infrastructure) triples to work on, narrowed by -s/-e/-i."""
    if opts.only is not None:
        return list(opts.only)
    _check_selectors(ws, opts)
    found: list[Target] = []
    if ws.pipelines:
        for pipe in ws.pipelines.values():
            for path, stage in pipeline_stages(pipe):
                found.extend(stage_targets(ws, pipe, path, stage, opts))
    else:
        for svc in ws.services:
            for env, infra in ws.infrastructures:
                found.append(Target(svc, env, infra))
    everything = sorted(set(found))
    chosen = [
        t
        for t in everything
        if (not opts.services or t.service in opts.services)
        and (not opts.environments or t.environment in opts.environments)
        and (not opts.infrastructures or t.infrastructure in opts.infrastructures)
    ]
    if not chosen:
        listing = "; ".join(str(t) for t in everything) or "none (define a service and an infrastructureDefinition)"
        raise ConfigError(f"the selection matches no target; targets in this workspace: {listing}")
    return chosen


def stage_targets(ws: Workspace, pipe: Entity, path, stage: dict, opts: Options) -> list[Target]:
    """The targets one Deployment stage deploys to (every infrastructure of the environment
    with deployToAll: true), before -s/-e/-i narrow them."""
    spec = stage.get("spec") or {}
    if stage_skipped(ws, stage):
        return []
    svc = _stage_ref((spec.get("service") or {}).get("serviceRef"), opts.services, pipe, path, "serviceRef")
    env_spec = spec.get("environment") or {}
    env = _stage_ref(env_spec.get("environmentRef"), opts.environments, pipe, path, "environmentRef")
    if env_spec.get("deployToAll") is True or str(env_spec.get("deployToAll")).lower() == "true":
        infras = sorted(i for (e, i) in ws.infrastructures if e == env)
    elif is_runtime_input(env_spec.get("infrastructureDefinitions")):
        infras = [
            _stage_ref(
                env_spec["infrastructureDefinitions"], opts.infrastructures, pipe, path, "infrastructureDefinitions"
            )
        ]
    else:
        infras = []
        for ref in env_spec.get("infrastructureDefinitions") or []:
            ident = ref.get("identifier") if isinstance(ref, dict) else None
            if ident:
                infras.append(_stage_ref(ident, opts.infrastructures, pipe, path, "infrastructureDefinitions"))
    found = []
    for infra in infras:
        if (env, infra) not in ws.infrastructures:  # a runtime-input environment, chosen with -e
            raise pipe.error(
                path,
                f"the stage deploys to infrastructure '{infra}' of environment '{env}', which is not defined",
                did_you_mean(infra, [i for (e, i) in ws.infrastructures if e == env]),
            )
        found.append(
            Target(
                svc,
                env,
                infra,
                str(stage.get("identifier")) if LOOP in stage else "",
                StageContext(pipe, tuple(path), stage),
            )
        )
    return found


def stage_values(context: StageContext, given: dict) -> dict[str, Any]:
    """What `<+pipeline.name>`, `<+pipeline.identifier>`, `<+pipeline.variables.X>`,
    `<+stage.name>`, `<+stage.identifier>`, `<+stage.variables.X>` and a loop's
    `<+repeat.item>`, `<+strategy.iteration>`, `<+strategy.iterations>` are for the targets
    of one stage. `given` (--var) answers variables that are runtime inputs."""
    pipe, stage = context.pipe, context.stage
    out: dict[str, Any] = {
        "pipeline.name": pipe.name,
        "pipeline.identifier": pipe.identifier,
        "stage.name": str(stage.get("name") or stage.get("identifier")),
        "stage.identifier": str(stage.get("identifier")),
        "stage.description": stage.get("description", ""),
    }
    for prefix, items in (
        ("pipeline.variables.", pipe.body.get("variables")),
        ("stage.variables.", stage.get("variables")),
    ):
        for v in items if isinstance(items, list) else []:
            if isinstance(v, dict) and "name" in v:
                out[prefix + str(v["name"])] = variable_input(v, given)
    out.update(stage.get(LOOP) or {})
    return out


def variable_input(v: dict, given: dict) -> Any:
    """A pipeline or stage variable's value: for a runtime input, --var NAME or its .default(...)
    (else `<+input>` stays, and using it is an error naming where)."""
    value = v.get("value")
    secret = v.get("type") == "Secret"
    if is_runtime_input(value):
        if str(v["name"]) in given:
            # data; a secret reference, or the name of a secret for a Secret variable, refers to it
            return outside_value(given[str(v["name"])], secret)
        has, default = input_default(value)
        return default if has else value
    # a Secret variable's value names a secret (as in Harness): a reference, read where it is used
    return outside_value(value, secret)


def _check_selectors(ws: Workspace, opts: Options) -> None:
    pairs = (
        ("service", opts.services, list(ws.services)),
        ("environment", opts.environments, list(ws.environments)),
        ("infrastructure", opts.infrastructures, sorted({i for (_, i) in ws.infrastructures})),
    )
    for what, chosen, known in pairs:
        for c in chosen:
            if c not in known:
                hint = did_you_mean(c, known)  # the list of valid names is in the message already
                raise ConfigError(
                    f"no {what} '{c}' in the workspace; defined: {', '.join(known) or 'none'}",
                    hint=hint if hint and hint.startswith("did you mean") else None,
                )


def _stage_ref(value: Any, selected: list[str], pipe: Entity, path, what: str) -> str:
    if is_runtime_input(value):
        if len(selected) == 1:
            return selected[0]
        has_default, default = input_default(value)
        if has_default:
            return str(default)
        raise pipe.error(
            path, f"the stage's {what} is a runtime input (<+input>); choose one with the matching -s/-e/-i option"
        )
    return str(value)


# ---------------------------------------------------------------- variables


def _variables(entity: Entity, path: tuple, errors: list) -> dict[str, tuple[Any, Entity, tuple]]:
    """name → (raw value, entity, path) from a Harness variables list."""
    out: dict[str, tuple[Any, Entity, tuple]] = {}
    node: Any = entity.body
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    if node is None:
        return out
    if not isinstance(node, list):
        errors.append(entity.error(path, "variables must be a list of {name, type, value}"))
        return out
    for i, var in enumerate(node):
        vp = (*path, i)
        if not isinstance(var, dict) or "name" not in var:
            errors.append(entity.error(vp, "a variable needs 'name', 'type' and 'value'"))
            continue
        vtype = var.get("type", "String")
        if vtype not in VARIABLE_TYPES:
            errors.append(
                entity.error(
                    (*vp, "type"),
                    f"variable type '{vtype}' is not one of {', '.join(VARIABLE_TYPES)}",
                    did_you_mean(str(vtype), VARIABLE_TYPES),
                )
            )
            continue
        value = var.get("value")
        if vtype == "Number" and isinstance(value, str) and not is_runtime_input(value) and "<+" not in value:
            try:
                value = int(value) if re.fullmatch(r"-?\d+", value.strip()) else float(value)
            except ValueError:
                errors.append(
                    entity.error((*vp, "value"), f"variable '{var['name']}' is a Number but its value is '{value}'")
                )
                continue
        if vtype == "Secret" and isinstance(value, str) and value.strip() and "<+" not in value:
            # a Secret variable's value names a secret (as in Harness): it is a reference
            from reconciler.util.secrets import expression

            value = expression(value.strip())
        out[str(var["name"])] = (value, entity, (*vp, "value"))
    return out


def _declared_secret(entry: tuple[Any, Entity | None, tuple] | None) -> bool:
    """Is a variable (an entry of _variables) declared `type: Secret`?"""
    if entry is None or entry[1] is None or not entry[2]:
        return False
    return entry[1].get(*entry[2][:-1], "type", want=str, default=None) == "Secret"


def _override_layers(ws: Workspace, t: Target) -> list[Entity]:
    order = {
        name: i
        for i, name in enumerate(
            ("ENV_GLOBAL_OVERRIDE", "ENV_SERVICE_OVERRIDE", "INFRA_GLOBAL_OVERRIDE", "INFRA_SERVICE_OVERRIDE")
        )
    }
    hits = []
    for ov in ws.overrides_of(t.environment, t.service):
        b = ov.body
        kind = b["type"]
        if "SERVICE" in kind and b.get("serviceRef") != t.service:
            continue
        if kind.startswith("INFRA") and b.get("infraIdentifier") != t.infrastructure:
            continue
        hits.append(ov)
    return sorted(hits, key=lambda o: order[o.body["type"]])


# ---------------------------------------------------------------- rendering


def render(ws: Workspace, opts: Options) -> Rendered:
    """Every selected target rendered to a FunctionSpec; all errors reported together."""
    chosen = targets(ws, opts)
    errors: list[ReconcilerError] = []
    warnings: list[str] = []
    specs: list[FunctionSpec] = []
    rendered: list[tuple[Target, FunctionSpec]] = []
    for t in chosen:
        try:
            rendered.append((t, render_target(ws, t, opts, warnings)))
        except ErrorList as exc:
            errors.extend(exc.errors)
        except ReconcilerError as exc:
            errors.append(exc)
    seen: dict[tuple[str, str], tuple[Target, FunctionSpec]] = {}
    for t, s in rendered:
        key = (s.region, s.name)
        if key in seen:
            first_t, first = seen[key]
            if first.to_dict() != s.to_dict():
                errors.append(
                    ConfigError(
                        f"function '{s.name}' in {s.region} is defined by two targets: {first_t} ({first.source}) and {t} ({s.source})"
                    )
                )
            continue  # else the same function from two stage runs (strategy.parallelism): deployed once
        seen[key] = (t, s)
        specs.append(s)
    if errors:
        uniq = list({str(e): e for e in errors}.values())
        raise uniq[0] if len(uniq) == 1 else ErrorList(uniq)
    # identical warnings from several targets are said once
    return Rendered(functions=specs, warnings=list(dict.fromkeys(warnings)))


def render_target(ws: Workspace, t: Target, opts: Options, warnings: list[str]) -> FunctionSpec:
    svc = ws.services[t.service]
    infra = ws.infrastructures[(t.environment, t.infrastructure)]
    scope = target_scope(ws, t, opts)
    region = scope.fixed["infra.region"]

    sd_spec = svc.body["serviceDefinition"].get("spec") or {}
    base = ("serviceDefinition", "spec")
    artifact = _artifact(ws, svc, sd_spec, base, scope, opts, t)
    fdef_doc, alias_docs = _manifests(ws, svc, sd_spec, base, scope)
    connector = aws_connector(ws, infra.body["spec"].get("connectorRef"))
    return _function_spec(t, svc, infra, scope, region, artifact, fdef_doc, alias_docs, connector, warnings)


def target_scope(ws: Workspace, t: Target, opts: Options) -> Scope:
    """What expressions see for one target: variables by precedence, entity fields,
    provisioner outputs and the resolved `infra.region`."""
    from reconciler.workspace.provision import resolver

    svc = ws.services[t.service]
    env = ws.environments[t.environment]
    infra = ws.infrastructures[(t.environment, t.infrastructure)]
    errors: list[ReconcilerError] = []

    # variables, lowest precedence first; a later layer replaces the whole value
    service_vars = _variables(svc, ("serviceDefinition", "spec", "variables"), errors)
    env_vars = _variables(env, ("variables",), errors)
    # (value, the entity that defines it, its path there); a --var value has no entity
    merged: dict[str, tuple[Any, Entity | None, tuple]] = dict(service_vars)
    env_scope: dict[str, tuple[Any, Entity | None, tuple]] = dict(env_vars)
    for name, v in env_vars.items():
        if name in merged:
            merged[name] = v
    for ov in _override_layers(ws, t):
        layer = _variables(ov, ("spec", "variables"), errors)
        merged.update(layer)
        if "SERVICE" not in ov.body["type"]:
            env_scope.update(layer)
    for name, given in opts.variables.items():
        # data, never read for expressions; but a value that is one secret reference, or any
        # value of a variable declared `type: Secret` (it names the secret), refers to a secret
        value = outside_value(given, _declared_secret(merged.get(name)))
        merged[name] = (value, None, ())
        if name in env_scope:
            env_scope[name] = (value, None, ())
    if errors:
        raise ErrorList(errors) if len(errors) > 1 else errors[0]

    region_raw = infra.body["spec"]["region"]
    fixed = {
        "service.name": svc.name,
        "service.identifier": svc.identifier,
        "service.description": svc.body.get("description", ""),
        "env.name": env.name,
        "env.identifier": env.identifier,
        "env.type": env.body.get("type", ""),
        "infra.name": infra.name,
        "infra.identifier": infra.identifier,
        "infra.connectorRef": infra.body["spec"].get("connectorRef", ""),
        "infra.connector.name": infra.body["spec"].get("connectorRef", ""),
    }
    if t.context is not None:
        fixed.update(stage_values(t.context, opts.variables))
    resolving: list[str] = []
    resolved: dict[int, tuple[Any, Any]] = {}  # id(entry) → (entry, value): each variable resolves once

    def resolve_variable(name: str, entry: Any) -> Any:
        value, ent, path = entry
        if not isinstance(value, str) or "<+" not in value or ent is None:
            return value  # a value given from outside (--var, an input set) is data: never read for expressions
        if id(entry) in resolved:
            return resolved[id(entry)][1]
        if name in resolving:
            raise KeyError(f"variable '{name}' refers to itself ({' → '.join([*resolving, name])})", None)
        if is_runtime_input(value) and ent is not None and not input_default(value)[0]:
            raise ConfigError(
                f"variable '{name}' is a runtime input", ent.file, ent.line(*path), f"pass --var {name}=VALUE"
            )
        resolving.append(name)
        try:
            got = resolve_string(value, scope, lambda: (ent.file, ent.line(*path)))
        finally:
            resolving.pop()
        resolved[id(entry)] = (entry, got)
        return got

    scope = Scope(
        fixed=fixed,
        service_variables=merged,
        env_variables=env_scope,
        resolve_variable=resolve_variable,
        provisioner=resolver(ws, infra, opts.provisioner),
        in_pipeline=t.context is not None,
    )
    region = resolve_string(str(region_raw), scope, lambda: (infra.file, infra.line("spec", "region")))
    if references(region):
        raise infra.error(
            ("spec", "region"),
            "a secret reference cannot be used in the region: it chooses where the functions are deployed, "
            "and names the state, the ARNs and every plan",
        )
    problem = region_problem(region)
    if problem:
        raise infra.error(("spec", "region"), f"infrastructureDefinition '{infra.identifier}': spec.region {problem}")
    scope.fixed["infra.region"] = region
    return scope


def _function_spec(
    t: Target,
    svc: Entity,
    infra: Entity,
    scope: Scope,
    region: str,
    artifact: dict | None,
    fdef_doc: Doc,
    alias_docs: list[Doc],
    connector: dict | None,
    warnings: list[str],
) -> FunctionSpec:
    # the function definition, rendered and checked against CreateFunction
    fdata = resolve_tree(fdef_doc.data, scope, fdef_doc)
    if not isinstance(fdata, dict):
        raise fdef_doc.error((), "a function definition must be a mapping in CreateFunction shape")
    norm_errors: list[ConfigError] = []
    fdef = normalise(fdata, input_shape("CreateFunction"), fdef_doc, (), norm_errors)
    if norm_errors:
        raise norm_errors[0] if len(norm_errors) == 1 else ErrorList(list(norm_errors))
    where = f"{fdef_doc.file}:{fdef_doc.line()}"
    _secret_places(fdef, fdef_doc, fdata, warnings)

    for required in ("FunctionName", "Role"):
        if not fdef.get(required):
            raise fdef_doc.error((), f"function definition has no '{required}' (required by CreateFunction)")
    name = fdef.pop("FunctionName")
    account = None
    m = ARN.match(name)
    if m:
        if m.group("qualifier"):
            raise fdef_doc.error(
                _key(fdata, "FunctionName"),
                f"FunctionName '{name}' has a qualifier; give the unqualified function ARN or name",
            )
        if m.group("region") != region and DEFERRED not in region:  # a region still to be provisioned
            raise fdef_doc.error(
                _key(fdata, "FunctionName"),
                f"FunctionName ARN is in region {m.group('region')} but infrastructure '{infra.identifier}' deploys to {region}",
            )
        account = m.group("account")
        name = m.group("name")

    code = fdef.pop("Code", None)
    if code:
        if artifact is None:
            artifact = _artifact_from_code(code, fdef_doc, fdata, region)
        else:
            warnings.append(
                f"{where}: the function definition's Code is ignored: the service's artifact is deployed instead"
            )
    if artifact is None:
        raise svc.error(
            ("serviceDefinition", "spec"),
            f"service '{svc.identifier}' has no artifact (serviceDefinition.spec.artifacts.primary) and its function definition no Code",
        )
    fdef.pop("Publish", None)
    tags = fdef.pop("Tags", None) or {}
    architectures = fdef.pop("Architectures", None)
    package_type = fdef.pop("PackageType", None) or ("Image" if artifact["type"] == "ECR" else "Zip")
    if package_type == "Image" and artifact["type"] != "ECR":
        raise fdef_doc.error(_key(fdata, "PackageType"), "PackageType is Image but the artifact is an S3 zip")
    if package_type == "Zip" and artifact["type"] == "ECR":
        raise fdef_doc.error(_key(fdata, "PackageType"), "the artifact is an ECR image but PackageType is Zip")
    if package_type == "Zip":
        for required in ("Runtime", "Handler"):
            if not fdef.get(required):
                raise fdef_doc.error((), f"function definition has no '{required}' (required for a Zip function)")
    variables = (fdef.get("Environment") or {}).get("Variables")
    if isinstance(variables, dict):
        size = len(json.dumps(variables, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        if size > LAMBDA_ENV_LIMIT:
            raise fdef_doc.error(
                _key(fdata, "Environment"),
                f"the environment variables of function '{name}' take {size} bytes; "
                f"Lambda allows {LAMBDA_ENV_LIMIT} (4 KB, measured as their JSON)",
            )
    updatable = update_config_fields()
    config = {k: v for k, v in fdef.items() if k in updatable}
    create_only = {k: v for k, v in fdef.items() if k not in updatable}

    aliases = []
    seen_alias: dict[str, str] = {}
    for adoc in alias_docs:
        adata = resolve_tree(adoc.data, scope, adoc)
        a_errors: list[ConfigError] = []
        alias = normalise(adata, input_shape("CreateAlias"), adoc, (), a_errors)
        if a_errors:
            raise a_errors[0] if len(a_errors) == 1 else ErrorList(list(a_errors))
        for filled in ("FunctionName", "FunctionVersion"):
            if filled in alias:
                alias.pop(filled)
                warnings.append(
                    f"{adoc.file}:{adoc.line(_key(adata, filled))}: '{filled}' in an alias definition is ignored; reconciler fills it in"
                )
        if not alias.get("Name"):
            raise adoc.error((), "alias definition has no 'name'")
        for k, v in alias.items():
            if k != "Description" and references(v):
                raise adoc.error(
                    _key(adata, k),
                    f"a secret reference cannot be used in an alias's {k}: the name identifies the alias, and the "
                    "routing names versions and their weights (a secret can be used in its Description)",
                )
        if references(alias.get("Description")):
            warnings.append(_in_clear(f"{adoc.file}:{adoc.line(_key(adata, 'Description'))}", "alias Description"))
        if alias["Name"] in seen_alias:
            raise adoc.error(
                _key(adata, "Name"), f"alias '{alias['Name']}' is defined twice (also in {seen_alias[alias['Name']]})"
            )
        seen_alias[alias["Name"]] = f"{adoc.file}:{adoc.line(_key(adata, 'Name'))}"
        aliases.append(alias)

    return FunctionSpec(
        name=name,
        service=t.service,
        environment=t.environment,
        infrastructure=t.infrastructure,
        region=region,
        package_type=package_type,
        config=config,
        # ownership tags: a lost state can be rebuilt with `import`, and another service's
        # (or another infrastructure's) function is never taken over silently
        tags={
            **{str(k): str(v) for k, v in tags.items()},
            OWNER_SERVICE: t.service,
            OWNER_ENVIRONMENT: t.environment,
            OWNER_INFRASTRUCTURE: t.infrastructure,
        },
        artifact=artifact,
        aliases=aliases,
        architectures=architectures,
        create_only=create_only,
        connector=connector,
        account=account,
        allow_simultaneous=str(infra.body.get("allowSimultaneousDeployments", False)).strip().lower() == "true",
        source=where,
    )


# fields of a function definition that cannot take a secret, and why
NO_SECRET = {
    "FunctionName": "the name is part of the function's ARN, of the state and of every plan",
    "PackageType": "it is compared with the artifact to choose how the code is deployed",
    "Architectures": "they are compared with the code's",
    "Code": "the code comes from the service's artifact",
    "Publish": "reconciler publishes versions itself",
}


def _in_clear(where: str, place: str) -> str:
    return (
        f"{where}: {place} uses a secret: Lambda keeps {place} in clear (whoever can read the function's "
        "configuration sees the value); reconciler deploys it, masks it in every output and stores only its fingerprint"
    )


def _secret_places(fdef: dict, doc: Doc, fdata: dict, warnings: list[str]) -> None:
    """Secrets in a function definition: environment values as they are (Lambda encrypts
    them); any other updatable field and a tag's value with a warning naming it (Lambda
    keeps them in clear); an identifier or a field given only at creation
    (never compared, so a rotation could not be seen) is an error naming the file and line."""
    updatable = update_config_fields()
    for k, v in fdef.items():
        if k == "Environment":
            inner = {kk: vv for kk, vv in v.items() if kk != "Variables"} if isinstance(v, dict) else v
            if references(inner):
                raise doc.error(_key(fdata, k), "a secret reference in Environment can only be a variable's value")
            continue
        if not references(v):
            continue
        at = f"{doc.file}:{doc.line(_key(fdata, k))}"
        if k == "Tags" and isinstance(v, dict):
            # (a key is not an expression: `<+...>` there is refused as not a tag key)
            warnings.extend(_in_clear(at, f"Tags.{tk}") for tk, tv in v.items() if references(tv))
            continue
        why = NO_SECRET.get(k) or (
            None
            if k in updatable
            else "it is given only when the function is created and never compared, so a rotation could not be seen"
        )
        if why:
            raise doc.error(_key(fdata, k), f"a secret reference cannot be used in {k}: {why}")
        warnings.append(_in_clear(at, k))


def _key(data: dict, canon: str) -> tuple:
    """The path of a field as the user wrote it (any case)."""
    for k in data if isinstance(data, dict) else ():
        if str(k).lower() == canon.lower():
            return (k,)
    return ()


def _manifests(ws: Workspace, svc: Entity, sd_spec: dict, base: tuple, scope: Scope) -> tuple[Doc, list[Doc]]:
    manifests = sd_spec.get("manifests") or []
    if not isinstance(manifests, list):
        raise svc.error((*base, "manifests"), "manifests must be a list")
    fdefs: list[Doc] = []
    aliases: list[Doc] = []
    for i, item in enumerate(manifests):
        mp = (*base, "manifests", i, "manifest")
        m = item.get("manifest") if isinstance(item, dict) else None
        if not isinstance(m, dict):
            raise svc.error((*base, "manifests", i), "each manifests entry needs a 'manifest' mapping")
        mtype = m.get("type")
        if mtype not in ("AwsLambdaFunctionDefinition", "AwsLambdaFunctionAliasDefinition"):
            raise svc.error(
                (*mp, "type"),
                f"manifest type '{mtype}' is not supported for AwsLambda services",
                did_you_mean(str(mtype), ["AwsLambdaFunctionDefinition", "AwsLambdaFunctionAliasDefinition"]),
            )
        docs = [
            ws.read_file(str(resolve_string(ref, scope, _at(svc, p))), svc, p) for ref, p in _store_files(svc, m, mp)
        ]
        (fdefs if mtype == "AwsLambdaFunctionDefinition" else aliases).extend(docs)
    if len(fdefs) != 1:
        raise svc.error(
            (*base, "manifests"),
            f"service '{svc.identifier}' needs exactly one AwsLambdaFunctionDefinition manifest file, found {len(fdefs)}",
        )
    return fdefs[0], aliases


def _at(ent: Entity, path: tuple) -> Callable[[], tuple[str, int | None]]:
    """Where `path` of an entity is (file, line), asked only when an error names it."""
    return lambda: (ent.file, ent.line(*path))


def _store_files(svc: Entity, m: dict, mp: tuple) -> list[tuple[str, tuple]]:
    sp = (*mp, "spec", "store")
    store = svc.get(*sp, default={})
    stype = store.get("type")
    sspec = svc.get(*sp, "spec", default={})
    if stype in GIT_STORES:
        key = "paths"
    elif stype in LOCAL_STORES:
        key = "files"
    else:
        raise svc.error(
            (*sp, "type"),
            f"manifest store type '{stype}' is not supported",
            did_you_mean(str(stype), GIT_STORES + LOCAL_STORES),
        )
    files = sspec.get(key)
    if not isinstance(files, list) or not files:
        raise svc.error((*sp, "spec"), f"a {stype} store needs spec.{key}: a list of files")
    for i, f in enumerate(files):
        if is_runtime_input(f) or not isinstance(f, str):
            raise svc.error((*sp, "spec", key, i), f"manifest path must be a file path, got {f!r}")
    return [(f, (*sp, "spec", key, i)) for i, f in enumerate(files)]


def _artifact(
    ws: Workspace, svc: Entity, sd_spec: dict, base: tuple, scope: Scope, opts: Options, t: Target
) -> dict | None:
    pp = (*base, "artifacts", "primary")
    primary = svc.get(*pp)
    if not primary:
        return None
    sources = svc.get(*pp, "sources", want=list, default=[])
    ids = []
    for i in range(len(sources)):
        ident = svc.get(*pp, "sources", i, "identifier", want=str)
        if not ident:
            raise svc.error((*pp, "sources", i), "an artifact source needs an 'identifier'")
        ids.append(ident)
    if not ids:
        raise svc.error(pp, "artifacts.primary has no sources")
    ref = primary.get("primaryArtifactRef")
    has_default, default = input_default(ref)
    if has_default and opts.artifact is None:
        ref = str(default)
    if opts.artifact is not None:
        if opts.artifact not in ids:
            raise svc.error(
                (*pp, "sources"),
                f"--artifact '{opts.artifact}' names no artifact source of service '{svc.identifier}'",
                did_you_mean(opts.artifact, ids),
            )
        ref = opts.artifact
    elif ref is None or is_runtime_input(ref):
        if len(ids) != 1:
            raise svc.error(
                (*pp, "primaryArtifactRef"),
                f"primaryArtifactRef is a runtime input; choose one of {', '.join(ids)} with --artifact",
            )
        ref = ids[0]
    elif ref not in ids:
        raise svc.error(
            (*pp, "primaryArtifactRef"),
            f"primaryArtifactRef '{ref}' names no artifact source",
            did_you_mean(str(ref), ids),
        )
    idx = ids.index(ref)
    src = sources[idx]
    sp = (*pp, "sources", idx)
    stype = src.get("type")
    raw = _source_inputs(svc, sp, str(stype), ref, t, opts)
    spec = resolve_tree(raw, scope, svc.doc, ("service", *sp, "spec"))
    if references(spec):
        raise svc.error(
            (*sp, "spec"),
            "a secret reference cannot be used in an artifact source: it locates the code, and the plan, the "
            "state and the history record that location",
        )

    def need(key: str) -> Any:
        v = spec.get(key)
        if v in (None, ""):
            raise svc.error((*sp, "spec"), f"{stype} artifact '{ref}' needs spec.{key}")
        return v

    region = spec.get("region") or scope.fixed["infra.region"]
    problem = region_problem(region)
    if problem:
        raise svc.error((*sp, "spec", "region"), f"{stype} artifact '{ref}': spec.region {problem}")
    svc.get(*sp, "spec", "connectorRef", want=str)
    connector = aws_connector(ws, spec.get("connectorRef"))
    if stype == "AmazonS3":
        return {
            "type": "S3",
            "bucket": str(need("bucketName")),
            "key": str(need("filePath")).lstrip("/"),
            "region": str(region),
            "connector": connector,
            "id": ref,
        }
    if stype == "Ecr":
        out = {
            "type": "ECR",
            "repository": str(need("imagePath")),
            "region": str(region),
            "connector": connector,
            "id": ref,
            "registry_id": str(spec["registryId"]) if spec.get("registryId") else None,
        }
        pins = [k for k in ("digest", "tag", "tagRegex") if spec.get(k)]
        if not pins:
            raise svc.error((*sp, "spec"), f"Ecr artifact '{ref}' needs spec.tag, spec.tagRegex or spec.digest")
        out["digest"] = spec.get("digest") or None
        out["tag"] = str(spec["tag"]) if spec.get("tag") else None
        out["tag_regex"] = str(spec["tagRegex"]) if spec.get("tagRegex") else None
        if out["tag_regex"]:
            try:
                re.compile(out["tag_regex"])
            except re.error as exc:
                raise svc.error(
                    (*sp, "spec", "tagRegex"), f"tagRegex is not a valid regular expression: {exc}"
                ) from None
        return out
    raise svc.error(
        (*sp, "type"),
        f"artifact type '{stype}' is not supported; use AmazonS3 or Ecr",
        did_you_mean(str(stype), ["AmazonS3", "Ecr"]),
    )


def _source_inputs(svc: Entity, sp: tuple, stype: str, ref: str, t: Target, opts: Options) -> dict:
    """The source's spec with its `<+input>` fields given, as in Harness: by the stage's
    serviceInputs (where an --inputs input set lands), or by --var artifact.FIELD=VALUE (which
    wins); else a `.default(...)`; else an error that says how to give it."""
    spec = dict(svc.get(*sp, "spec", default={}))
    staged: dict = {}
    if t.context is not None:
        si = ((t.context.stage.get("spec") or {}).get("service") or {}).get("serviceInputs") or {}
        primary = (
            (((si.get("serviceDefinition") or {}).get("spec") or {}).get("artifacts") or {}).get("primary")
            if isinstance(si, dict)
            else None
        )
        for src in (primary or {}).get("sources") or [] if isinstance((primary or {}).get("sources"), list) else []:
            if isinstance(src, dict) and src.get("identifier") == ref and isinstance(src.get("spec"), dict):
                staged = src["spec"]
    for key, value in spec.items():
        if not is_runtime_input(value):
            continue
        given = opts.variables.get(f"artifact.{key}")
        if given is None and staged.get(key) is not None and not is_runtime_input(staged[key]):
            given = staged[key]
        if given is None:
            has_default, default = input_default(value)
            if not has_default:
                raise svc.error(
                    (*sp, "spec", key),
                    f"{stype} artifact '{ref}': spec.{key} is a runtime input (<+input>) with no value",
                    f"give it in the stage's serviceInputs, in an input set (--inputs FILE with run or plan --pipeline), "
                    f"or with --var artifact.{key}=VALUE",
                )
            given = default
        spec[key] = given
    return spec


def _artifact_from_code(code: dict, doc: Doc, fdata: dict, region: str) -> dict:
    if code.get("S3Bucket") and code.get("S3Key"):
        return {
            "type": "S3",
            "bucket": code["S3Bucket"],
            "key": code["S3Key"],
            "region": region,
            "connector": None,
            "id": "Code",
        }
    if code.get("ImageUri"):
        uri = code["ImageUri"]
        m = re.match(
            r"^(?P<reg>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repo>[^:@]+)(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$",
            uri,
        )
        if not m:
            raise doc.error(_key(fdata, "Code"), f"Code.ImageUri '{uri}' is not an ECR image URI")
        return {
            "type": "ECR",
            "repository": m.group("repo"),
            "region": m.group("region"),
            "registry_id": m.group("reg"),
            "connector": None,
            "id": "Code",
            "tag": m.group("tag"),
            "digest": m.group("digest"),
            "tag_regex": None,
        }
    raise doc.error(_key(fdata, "Code"), "Code must give S3Bucket and S3Key, or ImageUri")
