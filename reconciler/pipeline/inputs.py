"""Input sets: the pipeline part of a Harness input set file (`--inputs FILE`), its overlay
on the pipeline (stages and steps matched by identifier, variables by name), and the
runtime inputs (`<+input>`) that nothing gives a value to."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.pipeline.model import StageDef
from reconciler.util.yamlsrc import Doc, load_data_file
from reconciler.workspace.expr import input_default, is_runtime_input, leaves
from reconciler.workspace.load import Entity

# serviceInputs leaves the service itself decides when they stay runtime inputs
SERVICE_DECIDES = ("primaryArtifactRef", "sources")


def load_inputs(path: Path, pipeline_id: str) -> tuple[dict, Doc]:
    """The pipeline part of a Harness input set file: `inputSet: {pipeline: {...}}`, or a
    runtime-input YAML `pipeline: {...}`."""
    if not path.is_file():
        raise ConfigError(f"--inputs file '{path}' not found")
    doc = load_data_file(path, str(path))
    data = doc.data if isinstance(doc.data, dict) else {}
    base: tuple[str, ...]
    if isinstance(data.get("inputSet"), dict):
        pipe, base = data["inputSet"].get("pipeline"), ("inputSet", "pipeline")
    else:
        pipe, base = data.get("pipeline"), ("pipeline",)
    if not isinstance(pipe, dict):
        raise doc.error(
            (), "an inputs file needs inputSet.pipeline (a Harness input set) or pipeline: {identifier, stages: [...]}"
        )
    ident = pipe.get("identifier")
    if ident is not None and ident != pipeline_id:
        raise doc.error((*base, "identifier"), f"the input set is for pipeline '{ident}', not '{pipeline_id}'")
    return pipe, doc


def overlay(base: Any, over: Any) -> Any:
    """`over` (an input set) laid over `base` (the pipeline): mappings merge, lists of
    stages/steps match by identifier and variables by name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for k, v in over.items():
            merged[k] = overlay(base[k], v) if k in base else copy.deepcopy(v)
        return merged
    if isinstance(base, list) and isinstance(over, list):
        items = list(base)
        for item in over:
            i = _match(items, item)
            if i is None:
                continue  # nothing in the pipeline to give a value to
            items[i] = overlay(items[i], item)
        return items
    return copy.deepcopy(over)


def _key_of(item: Any) -> tuple | None:
    if not isinstance(item, dict):
        return None
    for wrapper in ("stage", "step", "stepGroup"):
        if len(item) == 1 and isinstance(item.get(wrapper), dict):
            return (wrapper, item[wrapper].get("identifier"))
    if "parallel" in item and len(item) == 1:
        return ("parallel", None)
    if "name" in item:
        return ("name", item["name"])
    if "identifier" in item:
        return ("identifier", item["identifier"])
    return None


def _match(items: list, item: Any) -> int | None:
    key = _key_of(item)
    if key is None:
        return None
    if key[0] == "parallel":  # a parallel group: match by the identifiers inside
        inner = {_key_of(x) for x in item["parallel"]}
        for i, cand in enumerate(items):
            if (
                isinstance(cand, dict)
                and isinstance(cand.get("parallel"), list)
                and inner & {_key_of(x) for x in cand["parallel"]}
            ):
                return i
        return None
    for i, cand in enumerate(items):
        if _key_of(cand) == key:
            return i
    # a step given by identifier that sits in a parallel group or step group of the pipeline
    return None


def unresolved_inputs(pipe: Entity, stages: list[StageDef], given: dict) -> list[ConfigError]:
    """Every `<+input>` without a default that nothing gives a value to."""
    errs: list[ConfigError] = []

    def check(node: Any, path: tuple) -> None:
        if not is_runtime_input(node) or input_default(node)[0]:
            return
        if path and (path[-1] in SERVICE_DECIDES or "artifacts" in path) and "serviceInputs" in path:
            return  # the service's own sources and artifact choice apply (--artifact, --var artifact.FIELD)
        if (
            path[-1:] in (("serviceRef",), ("environmentRef",), ("infrastructureDefinitions",))
            or path[-2:-1] == ("infrastructureDefinitions",)
            or "infrastructureDefinitions" in path
        ):
            return  # chosen with -s/-e/-i: rendering says so when missing
        if path[-1] == "value" and len(path) >= 3 and path[-3] == "variables":
            holder = _at(pipe.body, path[:-1])
            if isinstance(holder, dict) and holder.get("name") in given:
                return
            what = f"variable '{(holder or {}).get('name')}'"
            hint = f"give it with --var {(holder or {}).get('name')}=VALUE or in an --inputs file"
        else:
            what = _dotted(path)
            hint = "give it in an --inputs FILE (a Harness input set)"
        errs.append(pipe.error(path, f"runtime input {what} (<+input>) has no value", hint))

    # only what the run uses: the pipeline's variables and its AwsLambda stages (a CI stage's
    # inputs or properties.ci.codebase are not reconciler's to ask for)
    for value, path in leaves(pipe.body.get("variables"), ("variables",)):
        check(value, path)
    for at in dict.fromkeys(s.path for s in stages):
        for value, path in leaves(_at(pipe.body, at), at):
            check(value, path)
    return errs


def _at(data: Any, path: tuple) -> Any:
    for p in path:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
