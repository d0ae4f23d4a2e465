"""`ShellScriptProvision`: a bash script that writes its outputs as a JSON object to the file
named by `$PROVISIONER_OUTPUT_PATH`; each top-level key is a `<+provisioner.NAME>` output.

The script runs exactly as a ShellScript step's does (the pipeline's own script runner:
the same environment, `environmentVariables`, expressions, timeout and process-group kill);
its source is inline (`source: {type: Inline, spec: {script}}`) or a file of the workspace
(`source: {type: Harness, spec: {file: path}}`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.pipeline.model import SHELL_VAR, StepDef, StepFailed
from reconciler.pipeline.provisioners.base import Kind, Provisioned
from reconciler.pipeline.scripts import run_shell

FILE_SOURCES = ("Harness", "File", "Local")


class ShellScriptProvision:
    def check(self, spec: dict, err: Callable[..., ConfigError]) -> list[ConfigError]:

        errs = []
        shell = spec.get("shell", "Bash")
        if shell not in ("Bash", "Sh"):
            errs.append(err(("shell",), f"shell '{shell}' is not supported; use Bash"))
        src = spec.get("source")
        stype = src.get("type", "Inline") if isinstance(src, dict) else None
        sspec = (src.get("spec") or {}) if isinstance(src, dict) else {}
        if stype == "Inline":
            if not isinstance(sspec.get("script"), str):
                errs.append(err(("source",), "a ShellScriptProvision step needs source.spec.script (the script)"))
        elif stype in FILE_SOURCES:
            if not isinstance(sspec.get("file"), str) or not sspec["file"].strip():
                errs.append(
                    err(("source", "spec"), f"a {stype} script source needs source.spec.file (a path in the workspace)")
                )
        else:
            errs.append(
                err(
                    ("source", "type") if isinstance(src, dict) else ("source",),
                    f"script source type '{stype}' is not supported; use Inline (source.spec.script) or Harness (source.spec.file)",
                )
            )
        items = spec.get("environmentVariables") or []
        if not isinstance(items, list):
            errs.append(err(("environmentVariables",), "environmentVariables must be a list of {name, type, value}"))
        else:
            for i, v in enumerate(items):
                if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not SHELL_VAR.fullmatch(v["name"]):
                    errs.append(
                        err(
                            ("environmentVariables", i),
                            "each of environmentVariables needs a 'name' that is a shell variable name",
                        )
                    )
        return errs

    def run(self, ctx):

        spec = ctx.step.body.get("spec") or {}
        src = spec.get("source") or {}
        body = dict(ctx.step.body)
        if src.get("type", "Inline") in FILE_SOURCES:
            rel = ctx.spec["source"]["spec"]["file"]
            path = ctx.workspace_file(rel, ("source", "spec", "file"))
            body["spec"] = {**spec, "source": {"type": "Inline", "spec": {"script": path.read_text(encoding="utf-8")}}}
        body["spec"] = {**body.get("spec", spec), "outputVariables": []}
        step = StepDef(
            body, ctx.step.path, ctx.step.phase, ctx.step.group_when, ctx.step.group_strategies, ctx.step.group
        )
        with tempfile.TemporaryDirectory(prefix="reconciler-provision-") as tmp:
            out_path = Path(tmp) / "provisioner-output.json"
            _, output = run_shell(ctx.runner, ctx.sr, step, ctx.timeout, {"PROVISIONER_OUTPUT_PATH": str(out_path)})
            text = out_path.read_text(encoding="utf-8", errors="replace") if out_path.exists() else ""
        if not text.strip():
            ctx.log("   the script wrote nothing to $PROVISIONER_OUTPUT_PATH: no outputs")
            return Provisioned(output=output)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StepFailed(
                f"$PROVISIONER_OUTPUT_PATH must hold a JSON object: {exc.msg} (line {exc.lineno})",
                "Unknown",
                {},
                output,
            ) from None
        if not isinstance(data, dict):
            raise StepFailed(
                '$PROVISIONER_OUTPUT_PATH must hold a JSON object: {"name": value, ...}', "Unknown", {}, output
            )
        outputs = {
            str(k): (v if isinstance(v, str) else json.dumps(v)) if not isinstance(v, (int, float, bool)) else v
            for k, v in data.items()
        }
        return Provisioned(outputs=outputs, output=output)


KINDS: dict[str, Kind] = {"ShellScriptProvision": ShellScriptProvision()}
