"""Plan rendering on in-memory plans: the same data as text, JSON and Markdown."""

from __future__ import annotations

import json

from reconciler.model import Change, FunctionPlan, Plan
from reconciler.cli.views import COMMENT_LIMIT, render_json, render_markdown, render_text

SECRET = "s3cr3t-value"


def fplan(name: str, action: str = "update", drift: bool = False) -> FunctionPlan:
    fp = FunctionPlan(
        name=name, service="svc", environment="prod", infrastructure="use1", region="us-east-1", action=action
    )
    if action in ("update", "create"):
        fp.changes = [
            Change("config", "MemorySize", 128, 256),
            Change("config", "Environment.Variables.TOKEN", "old-" + SECRET, SECRET),
            Change("code", "CodeSha256", "a" * 44, "b" * 44),
            Change("alias", "live", "3", "4"),
            Change("tag", "Tags.team", None, "payments", "create"),
        ]
        fp.publish, fp.next_version = True, "4"
        fp.code = {"sha256": "b" * 44, "source": {"type": "S3", "uri": "s3://bucket/key.zip"}}
    if drift:
        fp.drift = [
            Change("config", "MemorySize", 128, 1024),
            Change("config", "Environment.Variables.TOKEN", None, "hand-" + SECRET, "create"),
        ]
    return fp


def test_every_format_shows_the_changes_and_masks_values():
    """One plan, three formats: each change old → new, the version, the alias move; secrets masked."""
    plan = Plan(functions=[fplan("api", drift=True), fplan("worker", action="noop")])
    text, js, md = render_text(plan), render_json(plan), render_markdown(plan)
    assert (
        "MemorySize: 128 → 256" in text
        and "version 4 will be published" in text
        and "alias live: version 3 → 4" in text
    )
    assert "from s3://bucket/key.zip" in text
    assert "Changed outside reconciler" in text and "MemorySize: 128 → 1024" in text
    assert "Plan: 0 to create, 1 to update, 1 unchanged; drift: 1." in text
    doc = json.loads(js)
    assert doc["summary"]["update"] == 1 and doc["summary"]["drift"] == 1
    assert {c["path"] for c in doc["functions"][0]["changes"]} >= {"MemorySize", "CodeSha256", "live"}
    assert md.startswith("## reconciler plan: prod/use1")
    assert (
        "**0 to create, 1 to update, 1 unchanged; drift: 1**" in md
        and "<details>" in md
        and "### Changed outside reconciler" in md
    )
    for out in (text, js, md):
        assert SECRET not in out and "(sensitive)" in out
    shown = render_text(plan, show_values=True)
    assert SECRET in shown


def test_markdown_stays_under_the_comment_limit():
    """A plan of thousands of functions is truncated with a note, below GitHub's 65,536 characters."""
    plan = Plan(functions=[fplan(f"function-{i:05d}") for i in range(3000)])
    md = render_markdown(plan)
    assert len(md) <= COMMENT_LIMIT
    assert "truncated" in md
    assert md.count("```") % 2 == 0, "code fences stay balanced"
