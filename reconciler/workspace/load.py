"""Workspace discovery: every Harness entity in the workspace's YAML files. No AWS."""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, ErrorList, ReconcilerError, did_you_mean
from reconciler.model import IDENTIFIER, IDENTIFIER_RULE
from reconciler.util.yamlsrc import (
    MAX_FILE_BYTES,
    MAX_NODES,
    Doc,
    PathT,
    decode_text,
    load_data_file,
    load_yaml_documents,
    read_regular_file,
)
from reconciler.workspace.expr import _text, input_default

KINDS = ("service", "environment", "infrastructureDefinition", "pipeline", "connector", "overrides")
OVERRIDE_TYPES = ("ENV_GLOBAL_OVERRIDE", "ENV_SERVICE_OVERRIDE", "INFRA_GLOBAL_OVERRIDE", "INFRA_SERVICE_OVERRIDE")
SKIP_DIRS = {"node_modules", "__pycache__"}
# a file that may hold an entity: one of the kinds as a top-level key (quoted or not)
# (or an indented `identifier:`, so that a misspelt kind is reported as skipped, not ignored)
_KINDS_RX = "|".join(KINDS)
ENTITY_LINE = re.compile(
    rf"""^(?:---[ \t]*)?["']?(?:{_KINDS_RX})["']?[ \t]*:|^\s*\{{\s*["']?(?:{_KINDS_RX})["']?\s*:|^[ \t]+["']?identifier["']?[ \t]*:""",
    re.M,
)
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
        return self.doc.line((self.kind, *tuple(path)))

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
        if not isinstance(node, want) or (
            isinstance(node, bool) and bool not in (want if isinstance(want, tuple) else (want,))
        ):
            wanted = " or ".join(_KIND_NAMES.get(w, w.__name__) for w in (want if isinstance(want, tuple) else (want,)))
            raise self.error(path, f"'{_dotted(path)}' must be {wanted}, got {_kind(node)}")
        return node


@dataclass(eq=False, frozen=True)
class StageContext:
    """The pipeline stage (a loop's iteration) that deploys a target: what `<+pipeline.*>`,
    `<+stage.*>` and `<+repeat.item>` mean while it is rendered. Shared, never copied."""

    pipe: Entity
    path: tuple
    stage: dict

    def __deepcopy__(self, memo: dict) -> StageContext:
        return self


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
    # documents that look like entities but are not read as ones: (file, line, why)
    skipped: list[tuple[str, int | None, str]] = field(default_factory=list)
    # (kind, identifier) → why: services and infrastructures of other deployment types
    skipped_entities: dict[tuple[str, str], str] = field(default_factory=dict)
    other_files: int = 0  # YAML files with no sign of a Harness entity (CI workflows, charts...)
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
                index.setdefault((b.get("environmentRef"), b.get("serviceRef") if per_service else None), []).append(
                    (i, ov)
                )
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
            raise entity.error(
                path, f"path '{rel}' leaves the workspace", "manifest files must live inside the workspace"
            )
        if candidate.is_dir():
            raise entity.error(path, f"manifest path '{rel}' is a directory, not a file")
        if not candidate.exists():
            raise entity.error(path, f"manifest file '{rel}' not found in the workspace ({root})")
        return candidate


_KIND_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
    }.get(type(value), type(value).__name__)


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
    parsed: list[tuple[Path, str, list[Doc]]] = []
    for path in discover(root, state_dir):
        shown = ws.shown(path)
        try:
            raw = read_regular_file(path, shown)
            text = decode_text(raw, shown)
        except ConfigError as exc:
            if _may_be_entity(path, exc):
                errors.append(exc)
                incomplete = True
            continue
        if not ENTITY_LINE.search(text):
            # not a Harness entity (a Helm template, a CI workflow...): ignored, even if it is not valid YAML
            ws.other_files += 1
            continue
        try:
            docs = load_yaml_documents(text, shown)
        except ReconcilerError as exc:
            errors.append(exc)
            incomplete = True
            continue
        parsed.append((path, shown, docs))
    # a file a service names as a manifest is that manifest (a YAML function definition may
    # well have an `environment:` key), never an entity
    manifests = _manifest_files(ws, [d for _, _, docs in parsed for d in docs])
    for path, shown, docs in parsed:
        if str(path) in manifests:
            continue
        ws.files.append(shown)
        for doc in docs:
            kind, why = entity_kind(doc)
            if kind is None:
                if why:
                    ws.skipped.append((shown, doc.line(), why))
                continue
            try:
                ent = _entity(kind, doc)
            except Skipped as exc:
                ws.skipped.append((shown, doc.line(), str(exc)))
                ws.skipped_entities[(kind, exc.identifier)] = str(exc)
                continue
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
                errors.append(
                    ent.error((), f"duplicate {kind} identifier '{ent.identifier}' (first defined at {first.where()})")
                )
                continue
            seen[(kind, key)] = ent
            by_kind: dict[str, dict[Any, Entity]] = {
                "service": ws.services,
                "environment": ws.environments,
                "infrastructureDefinition": ws.infrastructures,
                "pipeline": ws.pipelines,
                "connector": ws.connectors,
            }
            by_kind[kind][key] = ent
    if not incomplete:  # else a reference may name an entity of the file that could not be read
        errors.extend(_check_references(ws))
    if errors:
        raise errors[0] if len(errors) == 1 else ErrorList(errors)
    return ws


class Skipped(Exception):
    """An entity reconciler does not deploy (a service or infrastructure of another deployment type)."""

    def __init__(self, message: str, identifier: str):
        super().__init__(message)
        self.identifier = identifier


def entity_kind(doc: Doc) -> tuple[str | None, str | None]:
    """(kind, None) for a Harness entity document: exactly one top-level key, that key a kind,
    its value a mapping that carries an `identifier` (overrides: or a `type`). Otherwise
    (None, why it is skipped), or (None, None) for a document with no sign of being one."""
    data = doc.data
    if not isinstance(data, dict) or not data:
        return None, None
    keys = [str(k) for k in data]
    kinds = [k for k in keys if k in KINDS]
    if len(keys) > 1:
        if not kinds:
            return None, None  # a CI workflow, a CloudFormation template, ...
        return (
            None,
            f"not a Harness entity: {len(keys)} top-level keys ({_listing(keys)}); an entity has only its kind ({kinds[0]})",
        )
    key = keys[0]
    body = next(iter(data.values()))
    if key not in KINDS:
        if isinstance(body, dict) and "identifier" in body:
            if key == "inputSet":
                return None, "an input set: reconciler reads it when given with --inputs FILE"
            hint = did_you_mean(key, KINDS)
            if hint and hint.startswith("did you mean"):
                return None, f"'{key}' is not a kind reconciler reads ({', '.join(KINDS)}); {hint}"
            return None, f"a Harness '{key}', which reconciler does not read"
        return None, None
    if not isinstance(body, dict):
        return None, f"not a Harness entity: '{key}' is not a mapping"
    if "identifier" not in body and not (key == "overrides" and body.get("type") in OVERRIDE_TYPES):
        return None, f"not a Harness entity: '{key}' has no identifier"
    return key, None


def _listing(keys: list[str], most: int = 5) -> str:
    return ", ".join(keys[:most]) + (", ..." if len(keys) > most else "")


def _manifest_files(ws: Workspace, docs: list[Doc]) -> set[str]:
    """The files the services of `docs` name as manifests (literal paths only), as the paths
    discover() gives (below the resolved root; normalised, not resolved: a thousand services
    naming files cost no thousand realpath calls)."""
    refs: set[str] = set()
    for doc in docs:
        if entity_kind(doc)[0] != "service":
            continue
        sd = doc.data["service"].get("serviceDefinition")
        manifests = ((sd or {}).get("spec") or {}).get("manifests") if isinstance(sd, dict) else None
        for item in manifests if isinstance(manifests, list) else []:
            store = (
                (((item or {}).get("manifest") or {}).get("spec") or {}).get("store")
                if isinstance(item, dict)
                else None
            )
            sspec = store.get("spec") if isinstance(store, dict) else None
            if not isinstance(sspec, dict):
                continue
            for key in ("paths", "files"):
                for ref in sspec.get(key) or [] if isinstance(sspec.get(key), list) else []:
                    if isinstance(ref, str) and ref.strip() and "<+" not in ref:
                        refs.add(ref.strip().lstrip("/"))
    return {os.path.normpath(os.path.join(ws.root, ref)) for ref in refs}


def _may_be_entity(path: Path, exc: ConfigError) -> bool:
    """Whether a YAML file that could not be read may hold a Harness entity: an unreadable,
    special or oversized file may; text in another encoding does if an entity key shows in it."""
    if "not UTF" not in exc.message and "not valid UTF" not in exc.message:
        if "larger than" in exc.message:
            with open(path, "rb") as f:
                return bool(ENTITY_LINE.search(f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")))
        return True
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES)
    guesses = [raw.decode("utf-8", errors="replace")]
    if b"\x00" in raw[:64]:
        guesses += [raw.decode("utf-16-le", errors="replace"), raw.decode("utf-16-be", errors="replace")]
    return any(ENTITY_LINE.search(g) for g in guesses)


def _entity(kind: str, doc: Doc) -> Entity:
    body = doc.data[kind]
    if not isinstance(body, dict):
        raise doc.error((kind,), f"'{kind}' must be a mapping")
    ident = body.get("identifier")
    if kind == "overrides" and ident is None:
        ident = f"{body.get('type', '')}:{body.get('environmentRef', '')}:{body.get('serviceRef', '')}:{body.get('infraIdentifier', '')}"
    if not isinstance(ident, str) or not ident:
        raise doc.error((kind,), f"{kind} has no 'identifier'")
    if kind != "overrides" and not IDENTIFIER.fullmatch(ident):
        raise doc.error(
            (kind, "identifier"), f"{kind} identifier {ident[:60]!r} is not a Harness identifier ({IDENTIFIER_RULE})"
        )
    name = body.get("name", ident)
    ent = Entity(kind=kind, identifier=ident, name=str(name), body=body, doc=doc)
    if kind == "service":
        sd = body.get("serviceDefinition")
        if not isinstance(sd, dict):
            raise ent.error((), f"service '{ident}' has no serviceDefinition")
        if not isinstance(sd.get("type"), str) or not sd["type"]:
            raise ent.error(
                ("serviceDefinition",), f"service '{ident}' has no serviceDefinition.type (AwsLambda for reconciler)"
            )
        if sd.get("type") != "AwsLambda":
            raise Skipped(
                f"service '{ident}' is of type {sd.get('type')}: reconciler deploys AwsLambda services only", ident
            )
        ent.get("serviceDefinition", "spec")
    if kind == "environment" and body.get("type") not in (None, "PreProduction", "Production"):
        raise ent.error(("type",), f"environment type '{body.get('type')}' is not PreProduction or Production")
    if kind == "infrastructureDefinition":
        t = body.get("deploymentType") or body.get("type")
        if t not in (None, "AwsLambda") or body.get("type") not in (None, "AwsLambda"):
            raise Skipped(
                f"infrastructureDefinition '{ident}' is of type {t}: reconciler deploys to AwsLambda infrastructure only",
                ident,
            )
        if not ent.get("environmentRef", want=str):
            raise ent.error((), f"infrastructureDefinition '{ident}' has no environmentRef")
        spec = body.get("spec")
        if not isinstance(spec, dict) or not ent.get("spec", "region", want=str):
            raise ent.error(("spec",), f"infrastructureDefinition '{ident}' needs spec.region")
        ent.get("spec", "connectorRef", want=str)
    if kind == "overrides":
        t = body.get("type")
        if t not in OVERRIDE_TYPES:
            raise ent.error(
                ("type",),
                f"overrides type '{t}' is not one of {', '.join(OVERRIDE_TYPES)}",
                did_you_mean(str(t), OVERRIDE_TYPES),
            )
        need = {
            "ENV_GLOBAL_OVERRIDE": ("environmentRef",),
            "ENV_SERVICE_OVERRIDE": ("environmentRef", "serviceRef"),
            "INFRA_GLOBAL_OVERRIDE": ("environmentRef", "infraIdentifier"),
            "INFRA_SERVICE_OVERRIDE": ("environmentRef", "infraIdentifier", "serviceRef"),
        }[t]
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
            errs.append(
                infra.error(
                    ("environmentRef",),
                    f"infrastructureDefinition '{ident}' references environment '{env_ref}', which is not defined",
                    did_you_mean(env_ref, ws.environments),
                )
            )
    for ov in ws.overrides:
        ov_env = ov.body.get("environmentRef")
        if ov_env and ov_env not in ws.environments:
            errs.append(
                ov.error(
                    ("environmentRef",),
                    f"overrides reference environment '{ov_env}', which is not defined",
                    did_you_mean(str(ov_env), ws.environments),
                )
            )
        svc = ov.body.get("serviceRef")
        if ("service", svc) in ws.skipped_entities or (
            "infrastructureDefinition",
            ov.body.get("infraIdentifier"),
        ) in ws.skipped_entities:
            continue  # an override of a service or infrastructure reconciler does not deploy
        if svc and svc not in ws.services:
            errs.append(
                ov.error(
                    ("serviceRef",),
                    f"overrides reference service '{svc}', which is not defined",
                    did_you_mean(str(svc), ws.services),
                )
            )
        ov_infra = ov.body.get("infraIdentifier")
        if ov_infra and ov_env and (ov_env, ov_infra) not in ws.infrastructures:
            errs.append(
                ov.error(
                    ("infraIdentifier",),
                    f"overrides reference infrastructure '{ov_infra}' of environment '{ov_env}', which is not defined",
                    did_you_mean(str(ov_infra), [i for (e, i) in ws.infrastructures if e == ov_env]),
                )
            )
    for pipe in ws.pipelines.values():
        try:
            stages = pipeline_stages(pipe)
        except ConfigError as exc:
            errs.append(exc)
            continue
        for path, stage in stages:
            try:
                errs.extend(_check_stage(ws, pipe, path, stage))
            except ConfigError as exc:
                errs.append(exc)
    return list({str(e): e for e in errs}.values())


def all_stages(pipe: Entity) -> list[tuple[PathT, dict]]:
    """Every stage of the pipeline, whatever its type (parallel groups flattened in order), with its path."""
    out: list[tuple[PathT, dict]] = []
    stages = pipe.body.get("stages") or []
    for i, item in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("parallel"), list):
            for j, sub in enumerate(item["parallel"]):
                if isinstance(sub, dict) and isinstance(sub.get("stage"), dict):
                    out.append((("stages", i, "parallel", j, "stage"), sub["stage"]))
        elif isinstance(item.get("stage"), dict):
            out.append((("stages", i, "stage"), item["stage"]))
    return out


LOOP_EXPR = re.compile(r"<\+\s*(repeat\.item|strategy\.iteration|strategy\.iterations)\s*>")


def pipeline_stages(pipe: Entity) -> list[tuple[PathT, dict]]:
    """The Deployment stages of a pipeline (parallel groups flattened), with their paths; a
    looping stage (strategy.repeat, strategy.parallelism) once per iteration."""
    out: list[tuple[PathT, dict]] = []
    for p, s in all_stages(pipe):
        if s.get("type") == "Deployment":
            out.extend((p, it) for it in stage_iterations(pipe, p, s))
    return out


def stage_iterations(pipe: Entity, path: PathT, stage: dict) -> list[dict]:
    """A stage, or for a looping stage one copy per iteration as Harness runs them: identifier
    and name suffixed `_0`, `_1`, ..., `<+repeat.item>`, `<+strategy.iteration>` and
    `<+strategy.iterations>` replaced, and the iteration kept under LOOP for the stage's other
    expressions (services, manifests). strategy.matrix is refused."""
    strategy = stage.get("strategy")
    if strategy is None:
        return [stage]
    sid = stage.get("identifier")
    sp = (*path, "strategy")
    if not isinstance(strategy, dict):
        raise pipe.error(sp, f"stage '{sid}': strategy must be a mapping (repeat or parallelism)")
    if "matrix" in strategy:
        raise pipe.error(
            (*sp, "matrix"),
            f"stage '{sid}': strategy.matrix is not supported by reconciler",
            "loop with strategy.repeat.items (one stage run per item, <+repeat.item>) instead",
        )
    if "repeat" in strategy:
        rep = strategy["repeat"] if isinstance(strategy["repeat"], dict) else {}
        items, times = rep.get("items"), rep.get("times")
        if isinstance(items, list) and items:
            values = list(items)
        elif items is None and (count := _count(times)) is not None:
            values = list(range(count))
        else:
            raise pipe.error(
                (*sp, "repeat"),
                f"stage '{sid}': strategy.repeat needs items (a non-empty list written in the pipeline) "
                f"or times (a number from 1 to {MAX_ITERATIONS}); a runtime input or an expression is not supported here",
            )
    elif "parallelism" in strategy:
        n = _count(strategy["parallelism"])
        if n is None:
            raise pipe.error(
                (*sp, "parallelism"), f"stage '{sid}': strategy.parallelism must be a number from 1 to {MAX_ITERATIONS}"
            )
        values = list(range(n))
    else:
        raise pipe.error(
            sp,
            f"stage '{sid}': strategy {_listing([str(k) for k in strategy])} is not supported; use repeat or parallelism",
        )
    body = {k: v for k, v in stage.items() if k != "strategy"}
    out = []
    for i, value in enumerate(values):
        loop = {"repeat.item": value, "strategy.iteration": i, "strategy.iterations": len(values)}
        it = _substitute(body, loop)
        it["identifier"] = f"{sid}_{i}"
        it["name"] = f"{stage.get('name') or sid}_{i}"
        it[LOOP] = loop
        out.append(it)
    return out


LOOP = "__loop__"  # the iteration's values, in a looping stage's copies


# a loop runs no more times than a list of items written in the pipeline could have
MAX_ITERATIONS = MAX_NODES


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        return None
    return n if 1 <= n <= MAX_ITERATIONS else None


def _substitute(node: Any, loop: dict) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, loop) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, loop) for v in node]
    if isinstance(node, str) and "<+" in node:
        whole = LOOP_EXPR.fullmatch(node.strip())
        if whole:
            return loop[whole.group(1)]
        return LOOP_EXPR.sub(lambda m: _text(loop[m.group(1)]), node)
    return node


def skipped_stages(ws: Workspace) -> list[tuple[str, int | None, str]]:
    """(file, line, why) of every stage of every pipeline that reconciler does not run."""
    return [
        (
            pipe.file,
            pipe.line(*path),
            f"stage '{stage.get('identifier')}' of pipeline '{pipe.identifier}' is skipped: {why}",
        )
        for pipe in ws.pipelines.values()
        for path, stage, why in pipe_skipped_stages(ws, pipe)
    ]


def pipe_skipped_stages(ws: Workspace, pipe: Entity) -> list[tuple[PathT, dict, str]]:
    """(path, stage, why) of each stage of `pipe` that is not reconciler's."""
    out = []
    for path, stage in all_stages(pipe):
        why = f"type {stage.get('type')}" if stage.get("type") != "Deployment" else stage_skipped(ws, stage)
        if why:
            out.append((path, stage, why))
    return out


def _check_stage(ws: Workspace, pipe: Entity, path: PathT, stage: dict) -> list[ReconcilerError]:
    errs: list[ReconcilerError] = []
    spec = pipe.get(*path, "spec", default={})
    dtype = spec.get("deploymentType")
    if dtype not in (None, "AwsLambda"):
        return errs  # stages for other deployment types are not ours
    svc = _ref(pipe.get(*path, "spec", "service", "serviceRef", want=str))
    if stage_skipped(ws, stage):
        return errs
    if svc is None:
        errs.append(pipe.error((*path, "spec"), f"stage '{stage.get('identifier')}' has no spec.service.serviceRef"))
    elif svc not in ws.services and not _is_runtime(svc):
        errs.append(
            pipe.error(
                (*path, "spec", "service", "serviceRef"),
                f"stage '{stage.get('identifier')}' references service '{svc}', which is not defined",
                did_you_mean(str(svc), ws.services),
            )
        )
    env_ref = _ref(pipe.get(*path, "spec", "environment", "environmentRef", want=str))
    if env_ref is None:
        errs.append(
            pipe.error((*path, "spec"), f"stage '{stage.get('identifier')}' has no spec.environment.environmentRef")
        )
        return errs
    if _is_runtime(env_ref):
        return errs  # chosen with -e; its infrastructures are checked then
    if env_ref not in ws.environments:
        errs.append(
            pipe.error(
                (*path, "spec", "environment", "environmentRef"),
                f"stage '{stage.get('identifier')}' references environment '{env_ref}', which is not defined",
                did_you_mean(str(env_ref), ws.environments),
            )
        )
        return errs
    infras = pipe.get(*path, "spec", "environment", "infrastructureDefinitions", want=(list, str), default=[])
    if _is_runtime(infras):
        return errs
    if isinstance(infras, str):
        raise pipe.error(
            (*path, "spec", "environment", "infrastructureDefinitions"),
            "infrastructureDefinitions must be a list of {identifier: ...} or <+input>",
        )
    for k in range(len(infras)):
        ident = _ref(pipe.get(*path, "spec", "environment", "infrastructureDefinitions", k, "identifier", want=str))
        if ident and not _is_runtime(ident) and (env_ref, ident) not in ws.infrastructures:
            errs.append(
                pipe.error(
                    (*path, "spec", "environment", "infrastructureDefinitions", k, "identifier"),
                    f"stage '{stage.get('identifier')}' references infrastructure '{ident}' of environment '{env_ref}', which is not defined",
                    did_you_mean(ident, [i for (e, i) in ws.infrastructures if e == env_ref]),
                )
            )
    return errs


def stage_skipped(ws: Workspace, stage: dict) -> str | None:
    """Why a Deployment stage is not reconciler's (another deployment type, or a service or
    infrastructure of one), else None."""
    spec = stage.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    dtype = spec.get("deploymentType")
    if dtype not in (None, "AwsLambda"):
        return f"deploymentType {dtype}"
    svc = _ref((spec.get("service") or {}).get("serviceRef")) if isinstance(spec.get("service"), dict) else None
    if isinstance(svc, str) and ("service", svc) in ws.skipped_entities:
        return ws.skipped_entities[("service", svc)]
    env_spec = spec.get("environment")
    if not isinstance(env_spec, dict):
        env_spec = {}
    infras = env_spec.get("infrastructureDefinitions")
    refs = [_ref(i.get("identifier")) for i in infras if isinstance(i, dict)] if isinstance(infras, list) else []
    skipped = [
        ws.skipped_entities[("infrastructureDefinition", r)]
        for r in refs
        if ("infrastructureDefinition", r) in ws.skipped_entities
    ]
    if refs and len(skipped) == len(refs):
        return skipped[0]
    return None


def _ref(value: Any) -> Any:
    """A stage's reference as written, or the default of a `<+input>.default(x)`."""
    has_default, default = input_default(value)
    return str(default) if has_default else value


def _is_runtime(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("<+input>")
