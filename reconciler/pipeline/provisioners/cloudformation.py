"""CloudFormation provisioner steps, as Harness writes them:

- `CloudformationCreateStack`: `spec.provisionerIdentifier`, `spec.configuration.{stackName,
  region, connectorRef, templateFile, parameters, parameterOverrides, capabilities, tags,
  roleArn}`. Creates the stack, or updates it when it exists, waiting with botocore's waiters;
  its outputs are the stack's Outputs. A stack left in ROLLBACK_COMPLETE by a failed creation
  is deleted first (it cannot be updated).
- `CloudformationDeleteStack`: `configuration.type: Inline` (`spec.{stackName, region,
  connectorRef}`) or `Reference` (`spec.provisionerIdentifier`: the stack a create step of
  this run, or the last one recorded in the state, made).
- `CloudformationRollbackStack`: `configuration.provisionerIdentifier`: deletes the stack if
  this run created it, else updates it back to the template, parameters, capabilities and
  tags it had before this run's create step; nothing when that step changed nothing.

Templates: `templateFile.type` `Inline` (`spec.templateBody`), `Remote` (`spec.store`: a Git
store's `paths` or a Harness store's `files`, read from the workspace) or `S3URL`
(`spec.templateUrl`). Parameter files (`parameters[].store`) are JSON lists of
{ParameterKey, ParameterValue} from the workspace; `parameterOverrides` ({name, value}) win.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.pipeline.model import StepFailed
from reconciler.pipeline.provisioners.base import Kind, Provisioned

TEMPLATE_TYPES = ("Inline", "Remote", "S3URL")
GIT_STORES = ("Github", "GitLab", "Bitbucket", "Git", "AzureRepo", "CodeCommit")
LOCAL_STORES = ("Harness", "Local")
CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND")


def _text(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _store_paths(store, err: Callable[..., ConfigError], path: tuple) -> tuple[list, list[ConfigError]]:
    if not isinstance(store, dict):
        return [], [err(path, "a Remote template or parameter file needs store: {type, spec: {paths: [...]}}")]
    stype = store.get("type")
    key = "paths" if stype in GIT_STORES else "files" if stype in LOCAL_STORES else None
    if key is None:
        return [], [
            err(
                (*path, "type"),
                f"store type '{stype}' is not supported; use one of {', '.join(GIT_STORES + LOCAL_STORES)}",
            )
        ]
    files = (store.get("spec") or {}).get(key)
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        return [], [err((*path, "spec"), f"a {stype} store needs spec.{key}: a list of file paths in the workspace")]
    return [(f, (*path, "spec", key, i)) for i, f in enumerate(files)], []


def _check_template(conf: dict, err) -> list[ConfigError]:
    """CloudformationCreateStack: its templateFile and parameter files."""
    errs: list[ConfigError] = []
    tf = conf.get("templateFile")
    ttype = tf.get("type") if isinstance(tf, dict) else None
    tspec = (tf.get("spec") or {}) if isinstance(tf, dict) else {}
    tp = ("configuration", "templateFile")
    if ttype not in TEMPLATE_TYPES:
        errs.append(err(tp, f"configuration.templateFile.type must be one of {', '.join(TEMPLATE_TYPES)}"))
    elif ttype == "Inline" and not _text(tspec.get("templateBody")):
        errs.append(err((*tp, "spec"), "an Inline template needs templateFile.spec.templateBody"))
    elif ttype == "S3URL" and not _text(tspec.get("templateUrl")):
        errs.append(err((*tp, "spec"), "an S3URL template needs templateFile.spec.templateUrl"))
    elif ttype == "Remote":
        errs += _store_paths(tspec.get("store"), err, (*tp, "spec", "store"))[1]
    for i, p in enumerate(conf.get("parameters") or []):
        errs += _store_paths(
            (p or {}).get("store") if isinstance(p, dict) else None,
            err,
            ("configuration", "parameters", i, "store"),
        )[1]
    for i, o in enumerate(conf.get("parameterOverrides") or []):
        if not isinstance(o, dict) or not _text(o.get("name")):
            errs.append(
                err(("configuration", "parameterOverrides", i), "each parameter override needs a name and a value")
            )
    return errs


def _check_options(conf: dict, err) -> list[ConfigError]:
    """CloudformationCreateStack: its capabilities and tags."""
    errs: list[ConfigError] = []
    caps = conf.get("capabilities") or []
    for i, c in enumerate(caps if isinstance(caps, list) else [caps]):
        if c not in CAPABILITIES and not (isinstance(c, str) and "<+" in c):
            errs.append(
                err(
                    ("configuration", "capabilities", i),
                    f"capability '{c}' is not one of {', '.join(CAPABILITIES)}",
                )
            )
    tags = conf.get("tags")
    if tags is not None and (
        not isinstance(tags, dict)
        or tags.get("type", "Inline") != "Inline"
        or not isinstance((tags.get("spec") or {}).get("content"), str)
    ):
        errs.append(
            err(
                ("configuration", "tags"),
                'tags must be {type: Inline, spec: {content: \'[{"key": ..., "value": ...}]\'}}',
            )
        )
    return errs


def _create(ctx, cfn, params: dict, mem: dict, pid: str, what: dict) -> str:
    """Create the stack and wait for it; `mem[pid]` says so before the wait (a rollback deletes it)."""
    name = params["StackName"]
    ctx.log(f"   creating CloudFormation stack {name} in {cfn.region}")
    stack_id = cfn.create(params)
    mem[pid] = {**what, "created": True, "stack_id": stack_id}
    _wait(ctx, cfn, "stack_create_complete", name)
    return "created"


def _update(ctx, cfn, params: dict, stack: dict, mem: dict, pid: str, what: dict) -> str:
    """Update the stack and wait for it; `mem[pid]` keeps what it was before (a rollback puts it back)."""
    name = params["StackName"]
    previous = {
        "TemplateBody": cfn.template(name),
        "Parameters": [
            {"ParameterKey": p["ParameterKey"], "ParameterValue": p.get("ParameterValue", "")}
            for p in stack.get("Parameters") or []
        ],
        "Capabilities": list(stack.get("Capabilities") or []),
        "Tags": list(stack.get("Tags") or []),
    }
    ctx.log(f"   updating CloudFormation stack {name} in {cfn.region}")
    changed = cfn.update(params)
    mem[pid] = {**what, "created": False, "stack_id": stack.get("StackId"), "previous": previous if changed else None}
    if not changed:
        ctx.log("   no updates are to be performed")
        return "unchanged"
    _wait(ctx, cfn, "stack_update_complete", name)
    return "updated"


class CreateStack:
    def check(self, spec: dict, err) -> list[ConfigError]:
        errs = []
        if not _text(spec.get("provisionerIdentifier")):
            errs.append(
                err(("provisionerIdentifier",), "a CloudformationCreateStack step needs spec.provisionerIdentifier")
            )
        conf = spec.get("configuration")
        if not isinstance(conf, dict):
            return [
                *errs,
                err(
                    ("configuration",),
                    "a CloudformationCreateStack step needs spec.configuration {stackName, region, templateFile}",
                ),
            ]
        for key in ("stackName", "region"):
            if not _text(conf.get(key)):
                errs.append(err(("configuration",), f"a CloudformationCreateStack step needs configuration.{key}"))
        return errs + _check_template(conf, err) + _check_options(conf, err)

    def run(self, ctx):
        from reconciler.aws.client import CloudFormation

        conf = ctx.spec["configuration"]
        pid, name, region = ctx.spec["provisionerIdentifier"], conf["stackName"], conf["region"]
        connector = ctx.connector(conf.get("connectorRef"))
        cfn = CloudFormation(ctx.aws, region, connector)
        params = {
            "StackName": name,
            **_template(ctx, conf),
            "Parameters": _parameters(ctx, conf),
            "Capabilities": list(conf.get("capabilities") or []),
            "Tags": _tags(ctx, conf),
        }
        if conf.get("roleArn"):
            params["RoleARN"] = conf["roleArn"]
        mem = ctx.by_identifier()
        stack = cfn.describe(name)
        if stack is not None and stack.get("StackStatus") == "ROLLBACK_COMPLETE":
            ctx.log(f"   stack {name} is in ROLLBACK_COMPLETE (a failed creation): deleting it first")
            cfn.delete(name)
            _wait(ctx, cfn, "stack_delete_complete", name)
            stack = None
        what = {"kind": "cloudformation", "stack": name, "region": region, "connector": connector}
        if stack is None:
            action = _create(ctx, cfn, params, mem, pid, what)
        else:
            action = _update(ctx, cfn, params, stack, mem, pid, what)
        stack = cfn.describe(name) or {}
        outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or []}
        ctx.log(f"   stack {name}: {stack.get('StackStatus')} ({action})")
        record = {
            "provisioner_identifier": pid,
            "stack_name": name,
            "stack_id": stack.get("StackId") or mem[pid].get("stack_id"),
            "region": region,
            "action": action,
            **({"connector": conf["connectorRef"]} if conf.get("connectorRef") else {}),
        }
        return Provisioned(outputs=outputs, record=record)


class DeleteStack:
    def check(self, spec: dict, err) -> list[ConfigError]:
        conf = spec.get("configuration")
        ctype = conf.get("type") if isinstance(conf, dict) else None
        cspec = (conf.get("spec") or {}) if isinstance(conf, dict) else {}
        if ctype == "Reference":
            if not _text(cspec.get("provisionerIdentifier")):
                return [
                    err(("configuration", "spec"), "a Reference delete needs configuration.spec.provisionerIdentifier")
                ]
            return []
        if ctype == "Inline":
            return [
                err(("configuration", "spec"), f"an Inline delete needs configuration.spec.{k}")
                for k in ("stackName", "region")
                if not _text(cspec.get(k))
            ]
        return [
            err(
                ("configuration",),
                "configuration.type must be Inline ({stackName, region}) or Reference ({provisionerIdentifier})",
            )
        ]

    def run(self, ctx):
        from reconciler.aws.client import CloudFormation

        conf = ctx.spec["configuration"]
        cspec = conf.get("spec") or {}
        if conf["type"] == "Reference":
            known = _known_stack(ctx, cspec["provisionerIdentifier"])
            if known is None:
                ctx.log(f"   no stack is known for provisioner '{cspec['provisionerIdentifier']}': nothing to delete")
                return Provisioned(summary={"deleted": "false"})
            name, region, connector = known["stack"], known["region"], known.get("connector")
        else:
            name, region, connector = cspec["stackName"], cspec["region"], ctx.connector(cspec.get("connectorRef"))
        cfn = CloudFormation(ctx.aws, region, connector)
        stack = cfn.describe(name)
        if stack is None:
            ctx.log(f"   stack {name} does not exist in {region}: nothing to delete")
            return Provisioned(
                summary={"deleted": "false"}, record={"stack_name": name, "region": region, "action": "absent"}
            )
        ctx.log(f"   deleting CloudFormation stack {name} in {region}")
        cfn.delete(name)
        _wait(ctx, cfn, "stack_delete_complete", name)
        return Provisioned(
            summary={"deleted": "true"},
            record={"stack_name": name, "stack_id": stack.get("StackId"), "region": region, "action": "deleted"},
        )


class RollbackStack:
    def check(self, spec: dict, err) -> list[ConfigError]:
        conf = spec.get("configuration")
        if not isinstance(conf, dict) or not _text(conf.get("provisionerIdentifier")):
            return [
                err(("configuration",), "a CloudformationRollbackStack step needs configuration.provisionerIdentifier")
            ]
        return []

    def run(self, ctx):
        from reconciler.aws.client import CloudFormation

        pid = ctx.spec["configuration"]["provisionerIdentifier"]
        mem = ctx.by_identifier().get(pid)
        if not mem or mem.get("kind") != "cloudformation":
            ctx.log(f"   no stack of provisioner '{pid}' was created or updated in this run: nothing to roll back")
            return Provisioned(summary={"rolledBack": "false"})
        name, region = mem["stack"], mem["region"]
        cfn = CloudFormation(ctx.aws, region, mem.get("connector"))
        record = {"provisioner_identifier": pid, "stack_name": name, "stack_id": mem.get("stack_id"), "region": region}
        if mem.get("created"):
            ctx.log(f"   deleting CloudFormation stack {name} in {region}: this run created it")
            if cfn.describe(name) is not None:
                cfn.delete(name)
                _wait(ctx, cfn, "stack_delete_complete", name)
            return Provisioned(
                summary={"rolledBack": "true", "action": "deleted"}, record={**record, "action": "deleted"}
            )
        prev = mem.get("previous")
        if not prev:
            ctx.log(f"   stack {name} was not changed by this run: nothing to roll back")
            return Provisioned(summary={"rolledBack": "false"}, record={**record, "action": "unchanged"})
        ctx.log(f"   updating CloudFormation stack {name} in {region} back to its previous template")
        if cfn.update({"StackName": name, **prev}):
            _wait(ctx, cfn, "stack_update_complete", name)
        return Provisioned(
            summary={"rolledBack": "true", "action": "restored"}, record={**record, "action": "restored"}
        )


def _wait(ctx, cfn, waiter: str, name: str) -> None:

    try:
        cfn.wait(waiter, name, ctx.timeout)
    except ReconcilerError as exc:
        stack = cfn.describe(name) or {}
        status = stack.get("StackStatus")
        reason = stack.get("StackStatusReason")
        raise StepFailed(
            f"CloudFormation stack {name}: {status or 'gone'}" + (f" ({reason})" if reason else "") + f": {exc}"
        ) from None


def _template(ctx, conf: dict) -> dict:
    tf = conf["templateFile"]
    tspec = tf.get("spec") or {}
    if tf["type"] == "Inline":
        return {"TemplateBody": tspec["templateBody"]}
    if tf["type"] == "S3URL":
        return {"TemplateURL": tspec["templateUrl"]}
    files, _ = _store_paths(tspec.get("store"), ctx.error, ("configuration", "templateFile", "spec", "store"))
    rel, path = files[0]
    return {"TemplateBody": ctx.workspace_file(rel, path).read_text(encoding="utf-8")}


def _parameters(ctx, conf: dict) -> list[dict]:
    values: dict[str, str] = {}
    for i, p in enumerate(conf.get("parameters") or []):
        files, _ = _store_paths(p.get("store"), ctx.error, ("configuration", "parameters", i, "store"))
        for rel, path in files:
            try:
                data = json.loads(ctx.workspace_file(rel, path).read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ctx.error(path, f"parameter file '{rel}' is not JSON: {exc.msg}") from None
            if not isinstance(data, list) or not all(isinstance(x, dict) and "ParameterKey" in x for x in data):
                raise ctx.error(path, f"parameter file '{rel}' must be a JSON list of {{ParameterKey, ParameterValue}}")
            values.update({str(x["ParameterKey"]): str(x.get("ParameterValue", "")) for x in data})
    for o in conf.get("parameterOverrides") or []:
        values[str(o["name"])] = "" if o.get("value") is None else str(o.get("value"))
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _tags(ctx, conf: dict) -> list[dict]:
    tags = conf.get("tags")
    if not tags:
        return []
    content = (tags.get("spec") or {}).get("content") or "[]"
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise ctx.error(("configuration", "tags", "spec", "content"), f"tags content is not JSON: {exc.msg}") from None
    items = (
        data.items()
        if isinstance(data, dict)
        else ((x.get("key", x.get("Key")), x.get("value", x.get("Value"))) for x in data if isinstance(x, dict))
    )
    return [{"Key": str(k), "Value": "" if v is None else str(v)} for k, v in items if k is not None]


def _known_stack(ctx, pid: str) -> dict | None:
    """The stack of a provisionerIdentifier: from this run, else the last `provision` record of the target's state."""
    from reconciler.store import state as st

    mem = ctx.by_identifier().get(pid)
    if mem and mem.get("kind") == "cloudformation":
        return mem
    t = ctx.sr.target
    state = st.load(ctx.runner.settings.state_dir, t.environment, t.infrastructure)
    for h in reversed(state.history):
        for p in reversed(h.get("provisioned") or []) if h.get("operation") == "provision" else []:
            if p.get("provisioner_identifier") == pid and p.get("stack_name"):
                return {
                    "stack": p["stack_name"],
                    "region": p.get("region"),
                    "connector": ctx.connector(p.get("connector")),
                }
    return None


KINDS: dict[str, Kind] = {
    "CloudformationCreateStack": CreateStack(),
    "CloudformationDeleteStack": DeleteStack(),
    "CloudformationRollbackStack": RollbackStack(),
}
