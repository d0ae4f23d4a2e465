"""Terraform and Terragrunt provisioner steps: the `terraform` (or `terragrunt`) executable
found on PATH, run in the configuration folder of the workspace, as Harness's steps run it.

- `TerraformPlan` / `TerragruntPlan`: `spec.provisionerIdentifier`, `spec.configuration.{command
  (Apply|Destroy), configFiles.store.spec.folderPath, varFiles, backendConfig, workspace,
  environmentVariables, targets}` (Terragrunt: also `moduleConfig.path`, a module folder under
  folderPath; `terragruntRunType: RunModule` only). Runs `init`, `workspace select -or-create`
  when a workspace is named, and `plan -out=FILE`; the plan file is kept for the apply of the
  same provisionerIdentifier in this run.
- `TerraformApply` / `TerragruntApply`: `configuration.type: InheritFromPlan` applies that
  saved plan; `Inline` (`configuration.spec` as a plan's configuration) runs `init` and `apply
  -auto-approve`. Before applying it records the state (`state pull`); afterwards the outputs
  are `terraform output -json` (sensitive ones masked).
- `TerraformRollback` / `TerragruntRollback`: `provisionerIdentifier`: when this run's apply
  started from an empty state, `destroy -auto-approve` with the same inputs; otherwise the
  configuration of the last successful apply the state's history records at a git commit
  (an apply records HEAD when its folder and Remote var files are committed unchanged) is
  applied again from a `git archive` copy; without such a record the step fails saying so.
- `TerraformDestroy` / `TerragruntDestroy`: `InheritFromPlan`, `InheritFromApply` or `Inline`.

Var files: `varFiles[].varFile` `type: Inline` (`spec.content`, written to a private temporary
file) or `Remote` (`spec.store.spec.paths`, files of the workspace). `backendConfig` the same
(`spec.content`, or `spec.store.spec.paths`). Commands run through the pipeline's script
runner (own process group, killed on `timeout`); their output is the step's log.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.pipeline.model import StepFailed
from reconciler.pipeline.provisioners.base import Kind, Provisioned, workspace_file

GIT_STORES = ("Github", "GitLab", "Bitbucket", "Git", "AzureRepo", "CodeCommit")


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


class Terraform:
    """One step kind ("Plan", "Apply", "Rollback", "Destroy") of one tool (terraform or terragrunt)."""

    def __init__(self, tool: str, kind: str):
        self.tool, self.kind = tool, kind
        self.type_name = ("Terraform" if tool == "terraform" else "Terragrunt") + kind

    # ------------------------------------------------------------ check
    def check(self, spec: dict, err: Callable[..., ConfigError]) -> list[ConfigError]:
        errs = []
        if shutil.which(self.tool) is None:
            errs.append(
                err(
                    (),
                    f"a {self.type_name} step runs the {self.tool} executable, and there is none on PATH",
                    f"install {self.tool} (or put it on PATH) on the machine that runs the pipeline",
                )
            )
        if not _text(spec.get("provisionerIdentifier")):
            errs.append(err(("provisionerIdentifier",), f"a {self.type_name} step needs spec.provisionerIdentifier"))
        conf = spec.get("configuration")
        if self.kind == "Rollback":
            return errs
        if not isinstance(conf, dict):
            return [*errs, err(("configuration",), f"a {self.type_name} step needs spec.configuration")]
        if self.kind == "Plan":
            if conf.get("command", "Apply") not in ("Apply", "Destroy"):
                errs.append(err(("configuration", "command"), "configuration.command must be Apply or Destroy"))
            return errs + self._check_config(conf, err, ("configuration",))
        ctype = conf.get("type")
        allowed = ("InheritFromPlan", "Inline") + (("InheritFromApply",) if self.kind == "Destroy" else ())
        if ctype not in allowed:
            return [*errs, err(("configuration", "type"), f"configuration.type must be one of {', '.join(allowed)}")]
        if ctype == "Inline":
            errs += self._check_config(conf.get("spec") or {}, err, ("configuration", "spec"))
        return errs

    def _check_config(self, conf: dict, err, path: tuple) -> list[ConfigError]:
        errs = []
        store = (
            ((conf.get("configFiles") or {}).get("store") or {}) if isinstance(conf.get("configFiles"), dict) else {}
        )
        if store.get("type") not in GIT_STORES or not _text((store.get("spec") or {}).get("folderPath")):
            errs.append(
                err(
                    (*path, "configFiles"),
                    "configuration.configFiles.store needs a Git store type and spec.folderPath "
                    "(the configuration folder in the workspace)",
                )
            )
        if self.tool == "terragrunt":
            mc = conf.get("moduleConfig") or {}
            if isinstance(mc, dict) and mc.get("terragruntRunType", "RunModule") != "RunModule":
                errs.append(
                    err((*path, "moduleConfig", "terragruntRunType"), "only terragruntRunType RunModule is supported")
                )
        for i, item in enumerate(conf.get("varFiles") or []):
            vf = (item or {}).get("varFile") if isinstance(item, dict) else None
            errs += _check_file(vf, err, (*path, "varFiles", i, "varFile"), "var file")
        if conf.get("backendConfig") is not None:
            errs += _check_file(conf.get("backendConfig"), err, (*path, "backendConfig"), "backend config")
        for i, v in enumerate(conf.get("environmentVariables") or []):
            if not isinstance(v, dict) or not _text(v.get("name")):
                errs.append(err((*path, "environmentVariables", i), "each of environmentVariables needs a name"))
        if not isinstance(conf.get("targets") or [], list):
            errs.append(err((*path, "targets"), "targets must be a list of resource addresses"))
        return errs

    # ------------------------------------------------------------ run
    def run(self, ctx):

        pid = ctx.spec["provisionerIdentifier"]
        mem = ctx.by_identifier()
        prev = mem.get(pid) if (mem.get(pid) or {}).get("kind") == self.tool else None
        if self.kind == "Rollback":
            return self._rollback(ctx, pid, prev)
        conf = ctx.spec["configuration"]
        if self.kind == "Plan":
            cfg = conf
        elif conf["type"] == "Inline":
            cfg = conf.get("spec") or {}
        else:
            if prev is None or (conf["type"] == "InheritFromPlan" and not prev.get("plan_file")):
                raise StepFailed(
                    f"no {self.tool} plan of provisioner '{pid}' ran before this step in this run "
                    f"({conf['type']} needs a {self.type_name.replace(self.kind, 'Plan')} step first)"
                )
            cfg = prev["cfg"]
        run = _Run(ctx, self.tool, cfg, mem)
        record = {
            "provisioner_identifier": pid,
            "folder": run.folder_rel,
            **({"workspace": cfg["workspace"]} if cfg.get("workspace") else {}),
        }
        if self.kind == "Plan":
            return self._plan(run, cfg, mem, pid, record)
        if self.kind == "Destroy":
            run.go(
                [
                    run.init(),
                    *run.select(),
                    run.cmd(
                        "destroy", "-input=false", "-no-color", "-auto-approve", *run.var_args(), *run.target_args()
                    ),
                ]
            )
            return Provisioned(output=run.output, record={**record, "action": "destroyed"})
        return self._apply(ctx, run, cfg, mem, pid, prev, conf["type"] == "InheritFromPlan", record)

    def _plan(self, run: _Run, cfg: dict, mem: dict, pid: str, record: dict) -> Provisioned:
        """TerraformPlan: a plan file the apply (InheritFromPlan) of the same provisioner uses."""
        plan_file = run.private("tfplan")
        destroy = cfg.get("command") == "Destroy"
        run.go(
            [
                run.init(),
                *run.select(),
                run.cmd(
                    "plan",
                    "-input=false",
                    "-no-color",
                    f"-out={plan_file}",
                    *run.var_args(),
                    *(["-destroy"] if destroy else []),
                    *run.target_args(),
                ),
            ]
        )
        mem[pid] = {"kind": self.tool, "cfg": cfg, "plan_file": plan_file, "destroy": destroy}
        return Provisioned(output=run.output, record={**record, "action": "planned"})

    def _apply(
        self, ctx, run: _Run, cfg: dict, mem: dict, pid: str, prev: dict | None, inherit: bool, record: dict
    ) -> Provisioned:
        """TerraformApply: the state before it kept (for a rollback), its outputs read with `output -json`."""
        previous = run.private("previous.tfstate")
        outputs_file = run.private("outputs.json")
        apply = (
            run.cmd("apply", "-input=false", "-no-color", "-auto-approve", (prev or {})["plan_file"])
            if inherit
            else run.cmd("apply", "-input=false", "-no-color", "-auto-approve", *run.var_args(), *run.target_args())
        )
        mem[pid] = {**(prev or {}), "kind": self.tool, "cfg": cfg}
        run.go([run.init(), *run.select(), run.cmd("state", "pull") + f" > {shlex.quote(previous)}"])
        mem[pid]["previous_empty"] = _empty_state(previous)
        mem[pid]["applied"] = True
        run.go([apply, run.cmd("output", "-json") + f" > {shlex.quote(outputs_file)}"])
        outputs, sensitive = self._outputs(run, outputs_file)
        action = "destroyed" if inherit and (prev or {}).get("destroy") else "applied"
        return Provisioned(
            outputs=outputs,
            sensitive=sensitive,
            output=run.output,
            record={**record, "action": action, "tool": self.tool, **_revision(ctx, run)},
        )

    def _outputs(self, run: _Run, outputs_file: str) -> tuple[dict, set]:
        """The outputs `output -json` wrote, and the names of the sensitive ones."""
        try:
            data = json.loads(Path(outputs_file).read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError as exc:
            raise StepFailed(
                f"`{self.tool} output -json` did not print JSON: {exc.msg}", "Unknown", {}, run.output
            ) from None
        outputs, sensitive = {}, set()
        for k, v in (data or {}).items():
            value = v.get("value") if isinstance(v, dict) else v
            outputs[str(k)] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
            if isinstance(v, dict) and v.get("sensitive"):
                sensitive.add(str(k))
        return outputs, sensitive

    def _rollback(self, ctx, pid: str, prev: dict | None):

        if not prev or not prev.get("applied"):
            ctx.log(f"   no {self.tool} apply of provisioner '{pid}' ran in this run: nothing to roll back")
            return Provisioned(summary={"rolledBack": "false"})
        if not prev.get("previous_empty"):
            earlier = _last_applied(ctx, pid, self.tool)
            if earlier is None:
                raise StepFailed(
                    f"provisioner '{pid}': the {self.tool} state held resources before this run's apply, and the state "
                    "records no earlier apply of it at a git commit to re-apply; roll it back by running the "
                    "previous revision's pipeline"
                )
            return self._reapply(ctx, pid, prev, earlier)
        run = _Run(ctx, self.tool, prev["cfg"], ctx.by_identifier())
        ctx.log(f"   destroying what this run's apply of provisioner '{pid}' created")
        run.go(
            [
                run.init(),
                *run.select(),
                run.cmd("destroy", "-input=false", "-no-color", "-auto-approve", *run.var_args(), *run.target_args()),
            ]
        )
        return Provisioned(
            output=run.output,
            summary={"rolledBack": "true", "action": "destroyed"},
            record={"provisioner_identifier": pid, "folder": run.folder_rel, "action": "destroyed"},
        )

    def _reapply(self, ctx, pid: str, prev: dict, earlier: dict):
        """Apply the configuration the last successful apply of `pid` recorded: its folder and
        Remote var files as they were at its git commit (a copy, with this folder's local
        state files copied in and back), the Inline var files and backend config of now."""

        commit, folder_rel = earlier["commit"], earlier["folder"]
        ctx.log(
            f"   re-applying provisioner '{pid}' as applied at commit {commit[:12]} ({earlier.get('finished_at') or 'an earlier run'})"
        )
        tmp = Path(
            tempfile.mkdtemp(dir=Path(ctx.by_identifier()["tmp"].name) if "tmp" in ctx.by_identifier() else None)
        )
        paths = [folder_rel, *list(earlier.get("var_files") or [])]
        try:
            archive = _git(ctx.workspace, "archive", "--format=tar", commit, "--", *[p.strip("/") for p in paths])
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(tmp, filter="data")
        except (OSError, ValueError, tarfile.TarError) as exc:
            raise StepFailed(f"cannot read commit {commit[:12]} of the workspace: {exc}") from None
        cfg = dict(prev["cfg"])
        cfg["varFiles"] = [v for v in cfg.get("varFiles") or [] if (v.get("varFile") or {}).get("type") == "Inline"] + [
            {
                "varFile": {
                    "type": "Remote",
                    "spec": {"store": {"type": "Git", "spec": {"paths": list(earlier.get("var_files") or [])}}},
                }
            }
        ]
        if not earlier.get("var_files"):
            cfg["varFiles"] = cfg["varFiles"][:-1]
        original = workspace_folder(ctx, folder_rel)
        run = _Run(ctx, self.tool, cfg, ctx.by_identifier(), root=tmp)
        _copy_state(original, run.folder)
        try:
            run.go(
                [
                    run.init(),
                    *run.select(),
                    run.cmd("apply", "-input=false", "-no-color", "-auto-approve", *run.var_args(), *run.target_args()),
                ]
            )
        finally:
            _copy_state(run.folder, original)
        return Provisioned(
            output=run.output,
            summary={"rolledBack": "true", "action": "reapplied", "commit": commit},
            record={"provisioner_identifier": pid, "folder": folder_rel, "action": "reapplied", "commit": commit},
        )


STATE_FILES = ("terraform.tfstate", "terraform.tfstate.backup", "terraform.tfstate.d")


def _copy_state(src: Path, dst: Path) -> None:
    """A local backend's state files (the folder's own), from one copy of the configuration to the other."""
    for name in STATE_FILES:
        s, d = src / name, dst / name
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        elif s.is_file():
            shutil.copy2(s, d)


def workspace_folder(ctx, rel: str) -> Path:
    return workspace_file(ctx.workspace, rel, lambda m, h=None: ctx.error(("configuration",), m, h), folder=True)


def _git(root: Path, *args: str) -> bytes:
    import subprocess

    git = shutil.which("git")
    if git is None:
        raise OSError("git is not on PATH")
    proc = subprocess.run(
        [git, "-C", str(root), *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise OSError(
            (proc.stderr.decode("utf-8", "replace").strip().splitlines() or [f"git exited {proc.returncode}"])[-1]
        )
    return proc.stdout


def _revision(ctx, run) -> dict:
    """The git commit of the configuration just applied, when its folder and Remote var files
    are committed unchanged (so that a later rollback can apply it again); else nothing."""
    var_files = []
    for item in run.cfg.get("varFiles") or []:
        vf = item.get("varFile") or {}
        if vf.get("type") == "Remote":
            var_files += list(vf["spec"]["store"]["spec"]["paths"])
    try:
        commit = _git(ctx.workspace, "rev-parse", "HEAD").decode().strip()
        dirty = _git(
            ctx.workspace, "status", "--porcelain", "--untracked-files=no", "--", run.folder_rel, *var_files
        ).strip()
    except (OSError, ValueError):
        return {}
    return {} if dirty or not commit else {"commit": commit, "var_files": var_files}


def _last_applied(ctx, pid: str, tool: str) -> dict | None:
    """The last successful apply of `pid` before this run that the target's state records at a commit."""
    from reconciler.store import state as st

    t = ctx.sr.target
    state = st.load(ctx.runner.settings.state_dir, t.environment, t.infrastructure)
    current = ctx.memory.get("record_id")
    for h in reversed(state.history):
        if h.get("operation") != "provision" or h.get("id") == current or h.get("status") != "succeeded":
            continue
        for p in reversed(h.get("provisioned") or []):
            if (
                p.get("provisioner_identifier") == pid
                and p.get("tool") == tool
                and p.get("action") == "applied"
                and p.get("commit")
            ):
                return {**p, "finished_at": h.get("finished_at")}
    return None


def _check_file(item, err, path: tuple, what: str) -> list[ConfigError]:
    if not isinstance(item, dict):
        return [err(path, f"a {what} needs type Inline (spec.content) or Remote (spec.store.spec.paths)")]
    spec = item.get("spec") or {}
    if item.get("type") == "Inline":
        return (
            []
            if isinstance(spec.get("content"), str)
            else [err((*path, "spec"), f"an Inline {what} needs spec.content")]
        )
    if item.get("type") == "Remote":
        paths = (
            ((spec.get("store") or {}).get("spec") or {}).get("paths") if isinstance(spec.get("store"), dict) else None
        )
        if isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths):
            return []
        return [err((*path, "spec", "store"), f"a Remote {what} needs spec.store.spec.paths (files in the workspace)")]
    return [err((*path, "type"), f"a {what} needs type Inline or Remote")]


def _empty_state(path: str) -> bool:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
        return not text or not (json.loads(text).get("resources") or [])
    except (OSError, ValueError, AttributeError):
        return False


class _Run:
    """The commands of one step, run in the configuration folder through the pipeline's script runner."""

    def __init__(self, ctx, tool: str, cfg: dict, mem: dict, root: Path | None = None):
        self.ctx, self.tool, self.cfg = ctx, tool, cfg
        self.root = root or ctx.workspace
        exe = shutil.which(tool)
        if exe is None:
            raise StepFailed(f"the {tool} executable is not on PATH")
        self.exe: str = exe
        base = ("configuration",) if ctx.step.type.endswith("Plan") else ("configuration", "spec")
        folder_rel = cfg["configFiles"]["store"]["spec"]["folderPath"]
        mc = cfg.get("moduleConfig") or {}
        if tool == "terragrunt" and _text(mc.get("path")):
            folder_rel = str(Path(folder_rel) / mc["path"])
        self.folder_rel = folder_rel
        self.folder = workspace_file(
            self.root, folder_rel, lambda m, h=None: ctx.error((*base, "configFiles"), m, h), folder=True
        )
        if "tmp" not in mem:
            mem["tmp"] = tempfile.TemporaryDirectory(prefix="reconciler-terraform-")
        self.tmp = Path(mem["tmp"].name)
        self.base = base
        self.output = ""

    def private(self, name: str) -> str:
        return str(Path(tempfile.mkdtemp(dir=self.tmp)) / name)

    def _file(self, item: dict, path: tuple) -> list[str]:
        spec = item.get("spec") or {}
        if item["type"] == "Inline":
            p = self.private("inline.tfvars")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(spec["content"])
            return [p]
        paths = spec["store"]["spec"]["paths"]
        return [
            str(
                workspace_file(
                    self.root,
                    rel,
                    lambda m, h=None, i=i: self.ctx.error((*path, "spec", "store", "spec", "paths", i), m, h),
                )
            )
            for i, rel in enumerate(paths)
        ]

    def var_args(self) -> list[str]:
        out = []
        for i, item in enumerate(self.cfg.get("varFiles") or []):
            out += [f"-var-file={p}" for p in self._file(item["varFile"], (*self.base, "varFiles", i, "varFile"))]
        return out

    def target_args(self) -> list[str]:
        return [f"-target={t}" for t in self.cfg.get("targets") or [] if _text(t)]

    def init(self) -> str:
        backend = []
        if self.cfg.get("backendConfig"):
            backend = [
                f"-backend-config={p}" for p in self._file(self.cfg["backendConfig"], (*self.base, "backendConfig"))
            ]
        return self.cmd("init", "-input=false", "-no-color", *backend)

    def select(self) -> list[str]:
        ws = self.cfg.get("workspace")
        return [self.cmd("workspace", "select", "-or-create", str(ws))] if _text(ws) else []

    def cmd(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (self.exe, *args))

    def go(self, commands: list[str]) -> None:
        from reconciler.workspace.shell import run_script

        env = dict(os.environ)
        env.update({"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"})
        for v in self.cfg.get("environmentVariables") or []:
            env[str(v["name"])] = "" if v.get("value") is None else str(v.get("value"))
        script = "set -e\n" + "\n".join(commands) + "\n"
        for c in commands:
            self.ctx.log(f"   $ {c.replace(self.exe, self.tool, 1)}")
        result = run_script(script, env, self.folder, self.ctx.timeout, [], lambda line: self.ctx.log(f"   {line}"))
        self.output = (self.output + "\n" + result.output).strip()
        if result.timed_out:
            raise StepFailed(
                f"timed out after {self.ctx.timeout:g}s; {self.tool} was killed", "Timeout", {}, self.output
            )
        if result.exit_code != 0:
            raise StepFailed(f"{self.tool} exited {result.exit_code}", "Unknown", {}, self.output)


KINDS: dict[str, Kind] = {
    t.type_name: t
    for t in (
        Terraform(tool, kind)
        for tool in ("terraform", "terragrunt")
        for kind in ("Plan", "Apply", "Rollback", "Destroy")
    )
}
