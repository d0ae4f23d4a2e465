"""Render plans and drift reports as text, JSON and Markdown — each from the same data, with
the values of secrets and of sensitive variables masked unless asked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from reconciler.model import Change, FunctionPlan, Plan
from reconciler.util.secrets import CHANGED, MASK, hidden_value, is_sealed, mask_vars

if TYPE_CHECKING:
    from reconciler.engine.drift import DriftReport

SYMBOL = {"create": "+", "update": "~", "delete": "-", "noop": " ", "orphan": "!"}
COMMENT_LIMIT = 65_536
ENV_PREFIX = "Environment.Variables."


def _hide_env(v: Any, show_values: bool) -> Any:
    if isinstance(v, dict):
        if isinstance(v.get("Variables"), dict):
            return {**v, "Variables": mask_vars(v["Variables"], show_values)}
        return mask_vars(v, show_values)
    return v


def masked(change: Change, show_values: bool) -> Change:
    """The change as it may be shown: values of secrets and of sensitive variables masked;
    a masked value that changed says so."""
    if is_sealed(change.old) or is_sealed(change.new):  # a place that uses a secret (a description, a tag...)
        old = None if change.old is None else MASK
        new = None if change.new is None else (CHANGED if change.old is not None else MASK)
        return Change(change.kind, change.path, old, new, change.action)
    if change.kind != "config":
        return change
    if change.path.startswith(ENV_PREFIX):
        name = change.path[len(ENV_PREFIX) :]
        if not (hidden_value(name, change.old, show_values) or hidden_value(name, change.new, show_values)):
            return change
        old = None if change.old is None else MASK
        new = None if change.new is None else (CHANGED if change.old is not None else MASK)
        return Change(change.kind, change.path, old, new, change.action)
    if change.path in ("Environment", "Environment.Variables"):
        return Change(
            change.kind,
            change.path,
            _hide_env(change.old, show_values),
            _hide_env(change.new, show_values),
            change.action,
        )
    return change


def fmt(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True)


def summary_line(plan: Plan) -> str:
    c = plan.counts()
    parts = [f"{c['create']} to create", f"{c['update']} to update"]
    if c["delete"]:
        parts.append(f"{c['delete']} to delete")
    parts.append(f"{c['noop']} unchanged")
    if c["orphan"]:
        parts.append(f"{c['orphan']} orphaned")
    text = ", ".join(parts)
    if c["drift"]:
        text += f"; drift: {c['drift']}"
    return text


def plan_dict(plan: Plan, show_values: bool = False) -> dict:
    """The plan as machine output: masked unless asked, without the deploy internals."""
    d = plan.to_dict()
    for f, fp in zip(d["functions"], plan.functions, strict=False):
        f["changes"] = [masked(c, show_values).to_dict() for c in fp.changes]
        f["drift"] = [masked(c, show_values).to_dict() for c in fp.drift]
        f.pop("desired", None)
        f.pop("secret_seals", None)
        f.pop("secret_fields", None)
        if isinstance(f.get("code"), dict):
            f["code"] = {k: v for k, v in f["code"].items() if k in ("sha256", "source")}
    return d


def render_json(plan: Plan, show_values: bool = False) -> str:
    return json.dumps(plan_dict(plan, show_values), indent=2, sort_keys=False) + "\n"


def _change_line(c: Change) -> str:
    if c.kind == "function":
        return f"function {c.action}"
    if c.kind == "code":
        return f"{c.path}: {fmt(c.old)} → {fmt(c.new)}"
    if c.kind == "alias":
        if c.action == "create":
            return f"alias {c.path}: (new) → version {c.new}"
        if c.action == "delete":
            return f"alias {c.path}: version {c.old} → (deleted)"
        if "." in c.path:
            return f"alias {c.path}: {fmt(c.old)} → {fmt(c.new)}"
        return f"alias {c.path}: version {c.old} → {c.new}"
    if c.kind == "version":
        if c.path == "reuse":
            return f"use version {c.new}, already published by the interrupted apply" + (
                f" (current {c.old})" if c.old else ""
            )
        return f"publish version {c.new}" + (f" (current {c.old})" if c.old else "")
    if c.action == "create":
        return f"{c.path}: {fmt(c.new)}" if c.kind == "config" and c.old is None else f"{c.path}: (none) → {fmt(c.new)}"
    if c.action == "delete":
        return f"{c.path}: {fmt(c.old)} → (removed)"
    if c.new == CHANGED:
        return f"{c.path}: {CHANGED}"
    return f"{c.path}: {fmt(c.old)} → {fmt(c.new)}"


def _rollout_text(fp: FunctionPlan, c: Change) -> str:
    """`, canary 10% for 5m then 100%, stops on billing-5xx` after the line of the alias a
    rollout moves."""
    ro = fp.rollout
    if not ro or c.kind != "alias" or c.path != ro.get("alias") or c.action != "update":
        return ""
    text = ro.get("description") or ""
    return f", {text}" if text else ""


def function_lines(fp: FunctionPlan, show_values: bool) -> list[str]:
    lines = []
    for c in fp.changes:
        if c.kind == "function":
            continue
        cm = masked(c, show_values)
        sym = {"create": "+", "delete": "-"}.get(c.action, "~")
        lines.append(f"{sym} {_change_line(cm)}" + _rollout_text(fp, c))
        if c.kind == "code" and c.path == "CodeSha256" and fp.code.get("source"):
            lines.append(f"    from {fp.code['source'].get('uri')}")
    return lines


def render_text(plan: Plan, show_values: bool = False) -> str:
    """The human plan: one block per function, drift apart, a summary line last."""
    out: list[str] = []
    drifted = [fp for fp in plan.functions if fp.drift]
    if drifted:
        out.append("Changed outside reconciler (drift since the last apply):")
        for fp in drifted:
            out.append(f"  {fp.name} ({fp.environment}/{fp.infrastructure})")
            for c in fp.drift:
                out.append(f"      {_change_line(masked(c, show_values))}")
        out.append("")
    for fp in plan.functions:
        head = f"{SYMBOL.get(fp.action, '?')} {fp.name}"
        what = {
            "create": "will be created",
            "update": "will be updated",
            "noop": "no changes",
            "delete": "will be deleted",
            "orphan": "orphaned",
        }[fp.action]
        extra = f", version {fp.next_version} will be published" if fp.publish and fp.next_version else ""
        out.append(f"{head}  [{fp.service} → {fp.environment}/{fp.infrastructure}, {fp.region}] {what}{extra}")
        for line in function_lines(fp, show_values):
            out.append(f"    {line}")
        for n in fp.notes:
            out.append(f"    note: {n}")
    out.append("")
    out.append(("Plan: " if plan.has_changes else "No changes. ") + summary_line(plan) + ".")
    return "\n".join(out) + "\n"


def _details(summary: str, body: list[str], fence: str = "```") -> list[str]:
    """A collapsed block of a pull-request comment: its summary, the body fenced."""
    return [f"<details><summary>{summary}</summary>", "", fence, *body, "```", "", "</details>"]


def render_markdown(plan: Plan, show_values: bool = False, title: str | None = None) -> str:
    """A pull-request comment: title, one summary line, a table, details collapsed."""
    targets = sorted({f"{fp.environment}/{fp.infrastructure}" for fp in plan.functions})
    lines = [f"## reconciler plan: {title or ', '.join(targets)}", "", f"**{summary_line(plan)}**", ""]
    lines += ["| | function | service | target | action | version |", "|---|---|---|---|---|---|"]
    for fp in plan.functions:
        lines.append(
            f"| {SYMBOL.get(fp.action, '?').strip() or '·'} | `{fp.name}` | {fp.service} | {fp.environment}/{fp.infrastructure} | {fp.action} | "
            f"{fp.next_version if fp.publish else ''} |"
        )
    rollouts = [fp for fp in plan.functions if fp.rollout]
    if rollouts:
        lines.append("")
        lines += [
            f"- `{fp.name}`: alias {fp.rollout['alias']}: version {fp.rollout['from']} → {fp.rollout['to']}, "
            f"{fp.rollout.get('description')}"
            for fp in rollouts
            if fp.rollout
        ]
    for fp in plan.functions:
        body = function_lines(fp, show_values) + [f"note: {n}" for n in fp.notes]
        if not body:
            continue
        lines += ["", *_details(f"<code>{fp.name}</code>: {fp.action}", body, "```diff")]
    drifted = [fp for fp in plan.functions if fp.drift]
    if drifted:
        lines += ["", "### Changed outside reconciler", ""]
        for fp in drifted:
            lines += _details(
                f"<code>{fp.name}</code>: {len(fp.drift)} difference(s)",
                [_change_line(masked(c, show_values)) for c in fp.drift],
            )
    text = "\n".join(lines) + "\n"
    if len(text) > COMMENT_LIMIT:
        note = "\n\n_Plan truncated to fit a pull-request comment; run `reconciler plan` for all of it._\n"
        text = text[: COMMENT_LIMIT - len(note) - 200]
        text = text[: text.rfind("\n")] + "\n```\n</details>" + note if "```" in text else text + note
    return text


def render_plan(plan: Plan, fmt_name: str, show_values: bool = False) -> str:
    if fmt_name == "json":
        return render_json(plan, show_values)
    if fmt_name == "markdown":
        return render_markdown(plan, show_values)
    return render_text(plan, show_values)


DRIFT_MARK = {"in_sync": " ", "drifted": "~", "deleted": "-", "unfinished": "!", "rolling_out": "»"}
NOTE_ONLY = ("unfinished", "rolling_out")  # shown by their note, not by differences


def _drift_line(c: Change, show_values: bool) -> str:
    if c.kind == "function":
        return "function deleted outside reconciler"
    if c.kind == "version":
        return f"version {c.new} published outside reconciler"
    return _change_line(masked(c, show_values))


def _drift_counts(report: DriftReport) -> str:
    s = report.to_dict()["summary"]
    unfinished = f"{s.get('unfinished', 0)} unfinished, " if s.get("unfinished") else ""
    unfinished += f"{s.get('rolling_out', 0)} rolling out, " if s.get("rolling_out") else ""
    in_sync = s["checked"] - s["drifted"] - s["deleted"] - s.get("unfinished", 0) - s.get("rolling_out", 0)
    return f"{s['drifted']} drifted, {s['deleted']} deleted, {unfinished}{in_sync} in sync"


def render_drift_text(report: DriftReport, show_values: bool = False) -> str:
    """`drift` and `refresh`: one line per function checked, its differences under it."""
    lines = []
    for f in report.functions:
        lines.append(
            f"{DRIFT_MARK[f.status]} {f.name}  [{f.service} → {f.environment}/{f.infrastructure}, {f.region}] {f.status.replace('_', ' ')}"
        )
        if f.status in NOTE_ONLY:
            lines.append(f"      {f.note}")
            continue
        for c in f.changes:
            lines.append(f"      {_drift_line(c, show_values)}")
    if not report.functions:
        return "No functions recorded in the selected state.\n"
    s = report.to_dict()["summary"]
    lines += ["", f"Drift: {_drift_counts(report)} ({s['checked']} checked)."]
    return "\n".join(lines) + "\n"


def render_drift_markdown(report: DriftReport, show_values: bool = False) -> str:
    """`drift --format markdown`: an issue or pull-request comment, details collapsed."""
    lines = [
        "## reconciler drift",
        "",
        f"**{_drift_counts(report)}**",
        "",
        "| | function | service | target | status |",
        "|---|---|---|---|---|",
    ]
    for f in report.functions:
        lines.append(
            f"| {DRIFT_MARK[f.status].strip() or '·'} | `{f.name}` | {f.service} | {f.environment}/{f.infrastructure} | {f.status} |"
        )
    for f in [f for f in report.functions if f.status == "rolling_out"] + report.drifted:
        if f.status in NOTE_ONLY:
            lines += ["", f"`{f.name}`: {f.note}"]
            continue
        lines += [
            "",
            *_details(
                f"<code>{f.name}</code>: {len(f.changes)} difference(s)",
                [_drift_line(c, show_values) for c in f.changes],
            ),
        ]
    text = "\n".join(lines) + "\n"
    if len(text) > COMMENT_LIMIT:
        text = (
            text[: COMMENT_LIMIT - 200].rsplit("\n", 1)[0]
            + "\n```\n</details>\n\n_Report truncated; run `reconciler drift` for all of it._\n"
        )
    return text


def render_drift_json(report: DriftReport, show_values: bool = False) -> str:
    return json.dumps(report.to_dict(lambda c: masked(c, show_values)), indent=2) + "\n"
