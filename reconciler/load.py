"""Workspace discovery: every Harness entity in the workspace's YAML files. No AWS."""

from __future__ import annotations

import gc
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from reconciler.errors import ConfigError, ErrorList, ReconcilerError, did_you_mean
from reconciler.expr import input_default
from reconciler.yamlsrc import Doc, PathT, load_data_file, load_yaml_documents

KINDS = ("service", "environment", "infrastructureDefinition", "pipeline", "connector", "overrides")
OVERRIDE_TYPES = ("ENV_GLOBAL_OVERRIDE", "ENV_SERVICE_OVERRIDE", "INFRA_GLOBAL_OVERRIDE", "INFRA_SERVICE_OVERRIDE")
SKIP_DIRS = {"node_modules", "__pycache__"}
# a file that may hold an entity: one of the kinds as a top-level key (quoted or not)
ENTITY_LINE = re.compile(r"""^(?:---[ \t]*)?["']?(?:%s)["']?[ \t]*:|^\s*\{\s*["']?(?:%s)["']?\s*:""" % ("|".join(KINDS), "|".join(KINDS)), re.M)
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Entity:
    """One Harness entity: its kind, identifier and body (the mapping under the kind key)."""

    kind: str
    identifier: str
    name: str
    body: dict
    doc: Doc

    @property
    def file(self) -> str:
        return self.doc.file

    def line(self, *path: Any) -> int | None:
        return self.doc.line((self.kind,) + tuple(path))

    def error(self, path: PathT, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, self.doc.file, self.line(*path), hint)

    def where(self) -> str:
        return f"{self.file}:{self.line()}"

    def get(self, *path: Any, want: type | tuple = dict, default: Any = None) -> Any:
        """The value at `path` in the body, checked to be a `want` (mapping by default);
        `default` when it is absent. A wrong type is an error naming the file and line."""
        node: Any = self.body
        for i, p in enumerate(path):
            if node is None:
                return default
            if isinstance(p, int):
                if not isinstance(node, list):
                    raise self.error(path[:i], f"'{_dotted(path[:i])}' must be a list, got {_kind(node)}")
                node = node[p] if p < len(node) else None
            else:
                if not isinstance(node, dict):
                    raise self.error(path[:i], f"'{_dotted(path[:i])}' must be a mapping, got {_kind(node)}")
                node = node.get(p)
        if node is None:
            return default
        if not isinstance(node, want) or (isinstance(node, bool) and bool not in (want if isinstance(want, tuple) else (want,))):
            wanted = " or ".join(_KIND_NAMES.get(w, w.__name__) for w in (want if isinstance(want, tuple) else (want,)))
            raise self.error(path, f"'{_dotted(path)}' must be {wanted}, got {_kind(node)}")
        return node


@dataclass
class Workspace:
    root: Path
    services: dict[str, Entity] = field(default_factory=dict)
    environments: dict[str, Entity] = field(default_factory=dict)
    # keyed by (environmentRef, identifier): Harness scopes infrastructures to an environment
    infrastructures: dict[tuple[str, str], Entity] = field(default_factory=dict)
    pipelines: dict[str, Entity] = field(default_factory=dict)
    connectors: dict[str, Entity] = field(default_factory=dict)
    overrides: list[Entity] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # manifest files already read, by the path as written: a thousand services naming the
    # same /fn.json read and parse it once (the Doc is shared; rendering copies its data)
    _manifests: dict[str, Doc] = field(default_factory=dict, repr=False, compare=False)
    _real_root: Path | None = field(default=None, repr=False, compare=False)
    _override_index: dict[tuple, list[tuple[int, Entity]]] | None = field(default=None, repr=False, compare=False)

    def overrides_of(self, environment: str, service: str) -> list[Entity]:
        """The overrides that may apply to a service in an environment (those of the
        environment naming that service, or no service), in the order they were read. An
        index made once: a thousand targets each looking through a thousand overrides
        would be quadratic."""
        index = self._override_index
        if index is None or sum(map(len, index.values())) != len(self.overrides):
            index = {}
            for i, ov in enumerate(self.overrides):
                b = ov.body
                per_service = "SERVICE" in str(b.get("type"))
                index.setdefault((b.get("environmentRef"), b.get("serviceRef") if per_service else None), []).append((i, ov))
            self._override_index = index
        found = index.get((environment, None), [])
        if service is not None:
            found = sorted(found + index.get((environment, service), []), key=lambda x: x[0])
        return [ov for _, ov in found]

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def read_file(self, ref: str, entity: Entity, path: PathT) -> Doc:
        """A manifest file named in `entity` at `path`, resolved inside the workspace."""
        doc = self._manifests.get(ref)
        if doc is None:
            target = self.resolve(ref, entity, path)
            doc = self._manifests[ref] = load_data_file(target, self.shown(target))
        return doc

    def resolve(self, ref: str, entity: Entity, path: PathT) -> Path:
        rel = str(ref).strip()
        if not rel:
            raise entity.error(path, "empty file path")
        # Harness file-store and Git paths are relative to the workspace root, even with a leading '/'
        candidate = (self.root / rel.lstrip("/")).resolve()
        root = self._real_root
        if root is None:
            root = self._real_root = self.root.resolve()
        if candidate != root and root not in candidate.parents:
            raise entity.error(path, f"path '{rel}' leaves the workspace", "manifest files must live inside the workspace")
        if not candidate.is_file():
            raise entity.error(path, f"manifest file '{rel}' not found in the workspace ({root})")
        return candidate


_KIND_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def _dotted(path: PathT) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(document)"


def discover(root: Path, state_dir: Path | None = None) -> list[Path]:
    """Every YAML file below `root`: skips the state directory, node_modules and
    dot-directories other than `.harness`."""
    root = root.resolve()
    skip_state = state_dir.resolve() if state_dir else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d in SKIP_DIRS or (d.startswith(".") and d != ".harness"):
                continue
            if skip_state is not None and (here / d).resolve() == skip_state:
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.endswith(YAML_SUFFIXES):
                found.append(here / f)
    return found


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a workspace loads: the parsed data has no cycles,
    and the collector, triggered again and again by the thousands of new dicts, lists and
    tuples of a large workspace, would otherwise scan them all repeatedly (~20% of a load)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_workspace(root: Path, state_dir: Path | None = None) -> Workspace:
    """Load every entity; collect all errors and raise them together."""
    with _gc_paused():
        return _load_workspace(root, state_dir)


def _load_workspace(root: Path, state_dir: Path | None) -> Workspace:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"workspace '{root}' is not a directory")
    ws = Workspace(root=root.resolve())
    errors: list[ReconcilerError] = []
    seen: dict[tuple[str, Any], Entity] = {}
    incomplete = False
    for path in discover(root, state_dir):
        shown = ws.shown(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            errors.append(ConfigError(f"cannot read file: {exc.strerror or exc}", shown))
            incomplete = True
            continue
        if not ENTITY_LINE.search(raw.decode("utf-8", errors="replace")):
            # not a Harness entity (a Helm template, a CI workflow...): ignored, even if it is not valid YAML
            continue
        try:
            text = raw.decode("utf-8")
            docs = load_yaml_documents(text, shown)
        except UnicodeDecodeError:
            errors.append(ConfigError("not UTF-8 text", shown))
            incomplete = True
            continue
        except ReconcilerError as exc:
            errors.append(exc)
            incomplete = True
            continue
        ws.files.append(shown)
        for doc in docs:
            if not isinstance(doc.data, dict) or len(doc.data) == 0:
                continue
            kinds = [k for k in doc.data if k in KINDS]
            if not kinds:
                continue  # a CI workflow, a CloudFormation template, ...
            if len(doc.data) > 1:
                errors.append(doc.error((), f"a Harness entity document has exactly one top-level key, found {', '.join(map(str, doc.data))}"))
                incomplete = True
                continue
            kind = kinds[0]
            try:
                ent = _entity(kind, doc)
            except ReconcilerError as exc:
                errors.append(exc)
                incomplete = True
                continue
            key: Any = ent.identifier
            if kind == "infrastructureDefinition":
                key = (str(ent.body.get("environmentRef", "")), ent.identifier)
            if kind == "overrides":
                ws.overrides.append(ent)
                continue
            if (kind, key) in seen:
                first = seen[(kind, key)]
                errors.append(ent.error((), f"duplicate {kind} identifier '{ent.identifier}' (first defined at {first.where()})"))
                continue
            seen[(kind, key)] = ent
            {
                "service": ws.services,
                "environment": ws.environments,
                "infrastructureDefinition": ws.infrastructures,
                "pipeline": ws.pipelines,
                "connector": ws.connectors,
            }[kind][key] = ent
    if not incomplete:  # else a reference may name an entity of the file that could not be read
        errors.extend(_check_references(ws))
    if errors:
        raise errors[0] if len(errors) == 1 else ErrorList(errors)
    return ws


def _entity(kind: str, doc: Doc) -> Entity:
    body = doc.data[kind]
    if not isinstance(body, dict):
        raise doc.error((kind,), f"'{kind}' must be a mapping")
    ident = body.get("identifier")
    if kind == "overrides" and ident is None:
        ident = f"{body.get('type', '')}:{body.get('environmentRef', '')}:{body.get('serviceRef', '')}:{body.get('infraIdentifier', '')}"
    if not isinstance(ident, str) or not ident:
        raise doc.error((kind,), f"{kind} has no 'identifier'")
    name = body.get("name", ident)
    ent = Entity(kind=kind, identifier=ident, name=str(name), body=body, doc=doc)
    if kind == "service":
        sd = body.get("serviceDefinition")
        if not isinstance(sd, dict):
            raise ent.error((), f"service '{ident}' has no serviceDefinition")
        if sd.get("type") != "AwsLambda":
            raise ent.error(("serviceDefinition", "type"), f"service '{ident}' has serviceDefinition.type '{sd.get('type')}'; reconciler deploys only 'AwsLambda'")
        ent.get("serviceDefinition", "spec")
    if kind == "environment" and body.get("type") not in (None, "PreProduction", "Production"):
        raise ent.error(("type",), f"environment type '{body.get('type')}' is not PreProduction or Production")
    if kind == "infrastructureDefinition":
        if not ent.get("environmentRef", want=str):
            raise ent.error((), f"infrastructureDefinition '{ident}' has no environmentRef")
        spec = body.get("spec")
        if not isinstance(spec, dict) or not ent.get("spec", "region", want=str):
            raise ent.error(("spec",), f"infrastructureDefinition '{ident}' needs spec.region")
        ent.get("spec", "connectorRef", want=str)
        t = body.get("type") or body.get("deploymentType")
        if t not in (None, "AwsLambda"):
            raise ent.error(("type",), f"infrastructureDefinition type '{t}' is not AwsLambda")
    if kind == "overrides":
        t = body.get("type")
        if t not in OVERRIDE_TYPES:
            raise ent.error(("type",), f"overrides type '{t}' is not one of {', '.join(OVERRIDE_TYPES)}", did_you_mean(str(t), OVERRIDE_TYPES))
        need = {"ENV_GLOBAL_OVERRIDE": ("environmentRef",), "ENV_SERVICE_OVERRIDE": ("environmentRef", "serviceRef"),
                "INFRA_GLOBAL_OVERRIDE": ("environmentRef", "infraIdentifier"),
                "INFRA_SERVICE_OVERRIDE": ("environmentRef", "infraIdentifier", "serviceRef")}[t]
        for k in ("environmentRef", "serviceRef", "infraIdentifier"):
            ent.get(k, want=str)
        for k in need:
            if not body.get(k):
                raise ent.error((), f"{t} needs '{k}'")
    return ent


def _check_references(ws: Workspace) -> list[ReconcilerError]:
    errs: list[ReconcilerError] = []
    for (env_ref, ident), infra in ws.infrastructures.items():
        if env_ref not in ws.environments:
            errs.append(infra.error(("environmentRef",), f"infrastructureDefinition '{ident}' references environment '{env_ref}', which is not defined",
                                    did_you_mean(env_ref, ws.environments)))
    for ov in ws.overrides:
        env_ref = ov.body.get("environmentRef")
        if env_ref and env_ref not in ws.environments:
            errs.append(ov.error(("environmentRef",), f"overrides reference environment '{env_ref}', which is not defined", did_you_mean(str(env_ref), ws.environments)))
        svc = ov.body.get("serviceRef")
        if svc and svc not in ws.services:
            errs.append(ov.error(("serviceRef",), f"overrides reference service '{svc}', which is not defined", did_you_mean(str(svc), ws.services)))
        infra = ov.body.get("infraIdentifier")
        if infra and env_ref and (env_ref, infra) not in ws.infrastructures:
            errs.append(ov.error(("infraIdentifier",), f"overrides reference infrastructure '{infra}' of environment '{env_ref}', which is not defined",
                                 did_you_mean(str(infra), [i for (e, i) in ws.infrastructures if e == env_ref])))
    for pipe in ws.pipelines.values():
        for path, stage in pipeline_stages(pipe):
            try:
                errs.extend(_check_stage(ws, pipe, path, stage))
            except ConfigError as exc:
                errs.append(exc)
    return errs


def pipeline_stages(pipe: Entity) -> list[tuple[PathT, dict]]:
    """The Deployment stages of a pipeline (parallel groups flattened), with their paths."""
    out = []
    stages = pipe.body.get("stages") or []
    if not isinstance(stages, list):
        return out
    for i, item in enumerate(stages):
        if not isinstance(item, dict):
            continue
        if "parallel" in item and isinstance(item["parallel"], list):
            for j, sub in enumerate(item["parallel"]):
                if isinstance(sub, dict) and isinstance(sub.get("stage"), dict):
                    out.append((("stages", i, "parallel", j, "stage"), sub["stage"]))
        elif isinstance(item.get("stage"), dict):
            out.append((("stages", i, "stage"), item["stage"]))
    return [(p, s) for p, s in out if s.get("type") == "Deployment"]


def _check_stage(ws: Workspace, pipe: Entity, path: PathT, stage: dict) -> list[ReconcilerError]:
    errs: list[ReconcilerError] = []
    spec = pipe.get(*path, "spec", default={})
    dtype = spec.get("deploymentType")
    if dtype not in (None, "AwsLambda"):
        return errs  # stages for other deployment types are not ours
    svc = _ref(pipe.get(*path, "spec", "service", "serviceRef", want=str))
    if svc is None:
        errs.append(pipe.error(path + ("spec",), f"stage '{stage.get('identifier')}' has no spec.service.serviceRef"))
    elif svc not in ws.services and not _is_runtime(svc):
        errs.append(pipe.error(path + ("spec", "service", "serviceRef"),
                               f"stage '{stage.get('identifier')}' references service '{svc}', which is not defined", did_you_mean(str(svc), ws.services)))
    env_ref = _ref(pipe.get(*path, "spec", "environment", "environmentRef", want=str))
    if env_ref is None:
        errs.append(pipe.error(path + ("spec",), f"stage '{stage.get('identifier')}' has no spec.environment.environmentRef"))
        return errs
    if _is_runtime(env_ref):
        return errs  # chosen with -e; its infrastructures are checked then
    if env_ref not in ws.environments:
        errs.append(pipe.error(path + ("spec", "environment", "environmentRef"),
                               f"stage '{stage.get('identifier')}' references environment '{env_ref}', which is not defined", did_you_mean(str(env_ref), ws.environments)))
        return errs
    infras = pipe.get(*path, "spec", "environment", "infrastructureDefinitions", want=(list, str), default=[])
    if _is_runtime(infras):
        return errs
    if isinstance(infras, str):
        raise pipe.error(path + ("spec", "environment", "infrastructureDefinitions"), "infrastructureDefinitions must be a list of {identifier: ...} or <+input>")
    for k, ref in enumerate(infras):
        ident = _ref(pipe.get(*path, "spec", "environment", "infrastructureDefinitions", k, "identifier", want=str))
        if ident and not _is_runtime(ident) and (env_ref, ident) not in ws.infrastructures:
            errs.append(pipe.error(path + ("spec", "environment", "infrastructureDefinitions", k, "identifier"),
                                   f"stage '{stage.get('identifier')}' references infrastructure '{ident}' of environment '{env_ref}', which is not defined",
                                   did_you_mean(ident, [i for (e, i) in ws.infrastructures if e == env_ref])))
    return errs


def _ref(value: Any) -> Any:
    """A stage's reference as written, or the default of a `<+input>.default(x)`."""
    has_default, default = input_default(value)
    return str(default) if has_default else value


def _is_runtime(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("<+input>")
