"""Input sets: the pipeline part of a Harness input set file (`--inputs FILE`) and its
overlay on the pipeline (stages and steps matched by identifier, variables by name)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.util.yamlsrc import Doc, load_data_file


def load_inputs(path: Path, pipeline_id: str) -> tuple[dict, Doc]:
    """The pipeline part of a Harness input set file: `inputSet: {pipeline: {...}}`, or a
    runtime-input YAML `pipeline: {...}`."""
    if not path.is_file():
        raise ConfigError(f"--inputs file '{path}' not found")
    doc = load_data_file(path, str(path))
    data = doc.data if isinstance(doc.data, dict) else {}
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
        out = dict(base)
        for k, v in over.items():
            out[k] = overlay(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(over, list):
        out = list(base)
        for item in over:
            i = _match(out, item)
            if i is None:
                continue  # nothing in the pipeline to give a value to
            out[i] = overlay(out[i], item)
        return out
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
