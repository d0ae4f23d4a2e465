"""One function's apply while it runs: what it deploys, the deployment record it keeps in
the state history, and what Lambda answered last (the configuration, the RevisionId that
guards the next change, the tags, the aliases and the version). The executor's steps
(`reconciler.engine.executor`) take it and add to it; the failure path
(`reconciler.engine.failure`) reads it to put the function back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.engine.records import StateWriter, upsert
from reconciler.model import FunctionPlan, FunctionSpec
from reconciler.store import state as st

if TYPE_CHECKING:
    from reconciler.aws.client import Lambda


class Interrupted(BaseException):
    """Raised in a worker between steps when the apply was interrupted (Ctrl-C) or another
    function of a parallel apply failed: the function is rolled back like on a failure."""


@dataclass
class Deployment:
    fp: FunctionPlan
    spec: FunctionSpec
    filled: FunctionSpec  # the spec with its secret references filled in (tags, aliases; memory only)
    config: dict[str, Any]  # the configuration to deploy, secret references filled in (memory only)
    recorded: dict | None  # the function's entry in the state before this apply
    before: dict[str, Any]  # what ran before any change: the rollback snapshot's source
    record: dict[str, Any]  # this deployment's record in the state history
    lam: Lambda
    aws: Any
    writer: StateWriter
    log: Callable[[str], None]
    abort: threading.Event | None = None
    created: bool = False  # this apply created the function
    # what Lambda answered last: its FunctionConfiguration after our latest change (the
    # answer, or the poll that waited for the change to be over), and the RevisionId the
    # next change is guarded by: Lambda refuses a change to a function that moved since
    conf: dict[str, Any] = field(init=False)
    revision: str | None = field(init=False)
    image_uri: str | None = field(init=False)
    tags: dict[str, str] = field(init=False)
    aliases: dict[str, dict] = field(default_factory=dict)  # as Lambda answered when they were set
    version: str | None = None  # the version the aliases point at

    def __post_init__(self) -> None:
        self.conf = dict(self.before.get("configuration") or {})
        self.revision = self.before.get("revision_id")
        self.image_uri = self.before.get("image_uri")
        self.tags = dict(self.before.get("tags") or {})

    @property
    def name(self) -> str:
        return self.spec.name

    def answered(self, out: dict) -> None:
        """Lambda's answer to a change of $LATEST: the configuration it now holds."""
        self.conf = {k: v for k, v in out.items() if k != "ResponseMetadata"}
        self.revision = out.get("RevisionId")

    def check_abort(self) -> None:
        if self.abort is not None and self.abort.is_set():
            raise Interrupted()

    def step(self, what: str, **fields: Any) -> None:
        """Record a step that happened (one journal line), then stop here if the apply was
        interrupted."""

        def change(state: st.State) -> None:
            self.record.update(fields)
            self.record["steps"].append({"at": st.now(), "step": what})
            upsert(state, self.record)

        self.writer.update(change, records=[self.record])
        self.check_abort()
