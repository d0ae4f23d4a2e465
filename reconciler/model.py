"""Plain data: what is desired, what is live, and the plan between them.

Everything here is a dataclass of JSON-able values with to_dict/from_dict, so a plan
can be saved to a file, rendered in several formats and executed later.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PLAN_FORMAT_VERSION = 1

# Harness's identifier pattern; it also keeps state paths (<env>/<infra>.json) inside the state directory
IDENTIFIER = re.compile(r"[a-zA-Z_][0-9a-zA-Z_$]{0,127}")
IDENTIFIER_RULE = "a letter or _, then up to 127 letters, digits, _ or $"


def _from_dict(cls, data: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, order=True)
class Target:
    service: str
    environment: str
    infrastructure: str
    # a looping stage's iteration (`deploy_1`): the same triple deployed once per iteration
    iteration: str = ""
    # the pipeline stage that deploys it (reconciler.load.StageContext), None without pipelines
    context: Any = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.service} → {self.environment}/{self.infrastructure}" + (
            f" ({self.iteration})" if self.iteration else ""
        )


@dataclass
class FunctionSpec:
    """One function as the workspace wants it, fully rendered (no expressions left)."""

    name: str
    service: str
    environment: str
    infrastructure: str
    region: str
    package_type: str  # Zip | Image
    config: dict  # updatable CreateFunction fields, PascalCase, as AWS takes them
    tags: dict
    artifact: dict  # {"type": "S3", bucket, key, region, connector} | {"type": "ECR", ...}
    aliases: list[dict] = field(default_factory=list)  # CreateAlias shape without FunctionName/FunctionVersion
    architectures: list[str] | None = None
    create_only: dict = field(default_factory=dict)  # CreateFunction-only fields (CodeSigningConfigArn, ...)
    connector: dict | None = None  # {"identifier", "role_arn", "external_id"} or None for the default chain
    account: str | None = None  # from a FunctionName ARN, checked against the caller
    source: str = ""  # file:line of the function definition
    allow_simultaneous: bool = False  # infrastructureDefinition.allowSimultaneousDeployments

    @property
    def target(self) -> Target:
        return Target(self.service, self.environment, self.infrastructure)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FunctionSpec:
        return _from_dict(cls, data)


@dataclass
class Change:
    """One difference. kind: config | code | tag | alias | function."""

    kind: str
    path: str
    old: Any = None
    new: Any = None
    action: str = "update"  # create | update | delete

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Change:
        return _from_dict(cls, data)


@dataclass
class FunctionPlan:
    """What will happen to one function."""

    name: str
    service: str
    environment: str
    infrastructure: str
    region: str
    action: str  # create | update | noop | delete | orphan
    changes: list[Change] = field(default_factory=list)
    drift: list[Change] = field(default_factory=list)  # changed outside reconciler since the last apply
    publish: bool = False
    next_version: str | None = None
    code: dict = field(default_factory=dict)  # {"sha256", "source", "image_uri"?, "s3"?}
    desired: dict | None = None  # FunctionSpec.to_dict()
    live_fingerprint: str = ""  # what was live when planned; a saved plan is refused if it moved
    state_file: str = ""
    notes: list[str] = field(default_factory=list)
    # environment variable → seal (reconciler.secrets) of the secret value planned: an apply
    # that reads the store again refuses the plan if a secret changed since
    secret_seals: dict = field(default_factory=dict)
    # the same for each place outside the environment that uses a secret (a configuration
    # field, `Tags.KEY`, `Aliases.NAME.Description`) → seal of its whole value
    secret_fields: dict = field(default_factory=dict)
    # how an alias moves to the new version under a rollout rule (reconciler.engine.traffic):
    # {"alias", "from", "to", "schedule", "alarms", "errors_alarm", "description", "impossible",
    # "resume", ...}; None: every alias moves at once
    rollout: dict | None = None
    # the secrets' values read while planning, {(region, id): value} (in memory only, never saved)
    secrets: dict | None = field(default=None, repr=False, compare=False)
    # the live snapshot the plan was made from (in memory only, never saved): an apply that
    # held the state's lock since that read uses it as its rollback data instead of reading again
    live: dict | None = field(default=None, repr=False, compare=False)

    @property
    def has_changes(self) -> bool:
        return self.action in ("create", "update", "delete")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("live", "secrets")}
        d["changes"] = [c.to_dict() for c in self.changes]
        d["drift"] = [c.to_dict() for c in self.drift]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> FunctionPlan:
        fp = _from_dict(cls, data)
        fp.changes = [Change.from_dict(c) for c in data.get("changes", [])]
        fp.drift = [Change.from_dict(c) for c in data.get("drift", [])]
        return fp


@dataclass
class Plan:
    functions: list[FunctionPlan]
    # state file → {"lineage", "serial"} as read when planning; apply refuses a plan if these moved
    state_refs: dict[str, dict] = field(default_factory=dict)
    workspace: str = ""
    created_at: str = ""
    prune: bool = False
    format_version: int = PLAN_FORMAT_VERSION
    # state files whose lock this process has held since the plan read what is live (in
    # memory only): their functions' `live` snapshots are current
    locked: set[str] = field(default_factory=set, repr=False, compare=False)
    # plan --pipeline: the stages whose provisioner steps only `run` runs ({pipeline, stage,
    # service, environment, infrastructure, function, region, steps, rollback_steps,
    # waiting_for, known_from_stacks}); `apply` refuses a saved plan that has any
    provisioners: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "delete": 0, "noop": 0, "orphan": 0}
        for f in self.functions:
            out[f.action] = out.get(f.action, 0) + 1
        out["drift"] = sum(1 for f in self.functions if f.drift)
        return out

    @property
    def has_changes(self) -> bool:
        return any(f.has_changes for f in self.functions)

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "created_at": self.created_at,
            "workspace": self.workspace,
            "prune": self.prune,
            "state_refs": self.state_refs,
            "summary": self.counts(),
            "functions": [f.to_dict() for f in self.functions],
            **({"provisioners": self.provisioners} if self.provisioners else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            functions=[FunctionPlan.from_dict(f) for f in data.get("functions", [])],
            state_refs=data.get("state_refs", {}),
            workspace=data.get("workspace", ""),
            created_at=data.get("created_at", ""),
            prune=bool(data.get("prune", False)),
            format_version=int(data.get("format_version", 0)),
            provisioners=list(data.get("provisioners") or []),
        )


# Ownership: the tags every function reconciler deploys carries.
OWNER_SERVICE = "reconciler:service"
OWNER_ENVIRONMENT = "reconciler:environment"
OWNER_INFRASTRUCTURE = "reconciler:infrastructure"
OWNER_TAGS = (OWNER_SERVICE, OWNER_ENVIRONMENT, OWNER_INFRASTRUCTURE)


def owner_conflict(
    spec_service: str, spec_environment: str, live_tags: dict, spec_infrastructure: str | None = None
) -> str | None:
    """Why a live function may not be taken over by this service (and infrastructure), or None."""
    owner = (live_tags or {}).get(OWNER_SERVICE)
    env = (live_tags or {}).get(OWNER_ENVIRONMENT)
    infra = (live_tags or {}).get(OWNER_INFRASTRUCTURE)
    if owner and owner != spec_service:
        return f"it is managed by service '{owner}'" + (f" in environment '{env}'" if env else "")
    if env and env != spec_environment:
        return f"it is managed for environment '{env}'"
    if infra and spec_infrastructure and infra != spec_infrastructure:
        return f"it is managed by infrastructure '{infra}' of environment '{env or spec_environment}'"
    return None


def owned_by(owner_tags: dict, live_tags: dict) -> bool:
    """Whether a live function carries the ownership tags among `owner_tags` (a function's
    desired tags), every one with the same value."""
    mine = {k: v for k, v in (owner_tags or {}).items() if k in OWNER_TAGS}
    return bool(mine) and all((live_tags or {}).get(k) == v for k, v in mine.items())


# Deployment records of the state's history.
IN_FLIGHT = ("in_progress", "rolling_back")


def unfinished(record: dict) -> bool:
    """A deployment that left Lambda half-changed and that no later deployment has finished
    or undone: in flight (its process was killed), or an apply whose rollback failed
    ("rollback_failed", until a later apply or rollback sets its `converged_by`)."""
    status = record.get("status")
    return status in IN_FLIGHT or (status == "rollback_failed" and not record.get("converged_by"))
