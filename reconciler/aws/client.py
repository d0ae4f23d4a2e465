"""The only module that talks to AWS: clients, typed calls, waiters and retries.

Missing things come back as None, not exceptions; every other AWS error becomes an
AwsError naming what was being attempted. Retries of 5xx and connection errors are
botocore's standard retry mode; Lambda calls are paced within Lambda's quotas and their
throttles retried for a bounded time by reconciler.quota (on botocore's event hooks).
Waits for Lambda use the acceptors of botocore's Lambda waiters in a poll that returns the
answer that ended it; an update in progress (ResourceConflictException) is waited out the
same way (Lambda._change).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from reconciler.aws.quota import QuotaStats, install
from reconciler.errors import AwsError
from reconciler.util.secrets import scrub

RETRY = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=70)
# "not found" is what AWS's error code says, never the HTTP status alone: a 404 from a proxy or
# a wrong endpoint carries no such code, and taking it for "missing" would report a function
# deleted that is still there
NOT_FOUND = (
    "ResourceNotFoundException",
    "NoSuchKey",
    "NotFound",
    "NoSuchBucket",
    "RepositoryNotFoundException",
    "ImageNotFoundException",
)
# S3 answers a HEAD of a missing object with a bare 404 (a HEAD response has no body to carry a
# code), which botocore reports as the code "404": for HeadObject that is S3's own answer
S3_HEAD_NOT_FOUND = (*NOT_FOUND, "404")
# AwsError.code of an update whose end showed someone else's change (not an AWS code)
CHANGED_WHILE_UPDATING = "ChangedWhileUpdating"
MUTATING_PREFIXES = ("Create", "Update", "Delete", "Publish", "Put", "Tag", "Untag")


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _status_field(cfg) -> str:
    """The Configuration field a Lambda waiter looks at (State or LastUpdateStatus)."""
    return cfg.acceptors[0].argument.rsplit(".", 1)[-1]


def _status(conf: dict) -> str:
    return ", ".join(f"{k} {conf[k]}" for k in ("State", "LastUpdateStatus") if conf.get(k)) or "without a status"


def _failure(conf: dict, field: str) -> str:
    """Lambda's own account of a failed create (`field` State) or update (LastUpdateStatus)."""
    if field == "LastUpdateStatus":
        code, reason = conf.get("LastUpdateStatusReasonCode"), conf.get("LastUpdateStatusReason")
        head = "Lambda reports the update Failed"
    else:
        code, reason = conf.get("StateReasonCode"), conf.get("StateReason")
        head = "Lambda reports the function Failed"
    return head + "".join(f": {x}" for x in (code, reason) if x)


class Aws:
    """Clients per (service, region, role), shared by threads; counts calls by operation."""

    def __init__(self) -> None:
        self._session = boto3.session.Session()
        self._clients: dict[tuple, Any] = {}
        # creating a client takes tens of milliseconds and is not thread-safe on one session:
        # creations are serialised (reentrant: an assumed role creates an STS client first),
        # while threads using clients that exist never wait
        self._create_lock = threading.RLock()
        self._count_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.quota = QuotaStats()

    def client(self, service: str, region: str, connector: dict | None = None):
        role = connector.get("role_arn") if connector else None
        key = (service, region, role)
        c = self._clients.get(key)
        if c is not None:
            return c
        with self._create_lock:
            c = self._clients.get(key)
            if c is None:
                session = self._assumed(connector, region) if connector and role else self._session
                c = session.client(service, region_name=region, config=RETRY)
                c.meta.events.register("before-call", self._count)
                if service == "lambda":
                    # one set of limiters per (endpoint, region, credentials), shared process-wide
                    install(c, self.quota, (c.meta.endpoint_url, region, role))
                self._clients[key] = c
            return c

    def _count(self, model, **_: Any) -> None:
        with self._count_lock:
            self.calls[f"{model.service_model.service_name}.{model.name}"] += 1

    def _assumed(self, connector: dict, region: str):
        sts = self.client("sts", region)
        kwargs = {"RoleArn": connector["role_arn"], "RoleSessionName": "reconciler"}
        if connector.get("external_id"):
            kwargs["ExternalId"] = _external_id(self, connector, region)
        try:
            creds = sts.assume_role(**kwargs)["Credentials"]
        except (ClientError, BotoCoreError) as exc:
            raise AwsError(
                f"cannot assume role {connector['role_arn']} of connector '{connector.get('identifier')}': {exc}"
            ) from None
        return boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def read_secret(self, region: str, connector: dict | None, store: str, name: str) -> str | None:
        """A secret's string value from the store (read_secret)."""
        return read_secret(self, region, connector, store, name)

    def default_region(self) -> str | None:
        """The region of the runner's own configuration (AWS_REGION, AWS_DEFAULT_REGION, the profile)."""
        return self._session.region_name

    def credentials(self, region: str, connector: dict | None = None) -> dict[str, str]:
        """The credentials calls for `connector` use (its assumed role, else the default chain),
        as AWS_* environment variables; empty when there are none."""
        role = connector.get("role_arn") if connector else None
        with self._create_lock:
            session = self._assumed(connector, region) if connector and role else self._session
        got = session.get_credentials()
        if got is None:
            return {}
        frozen = got.get_frozen_credentials()
        env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
        return env

    def mutating_calls(self) -> int:
        return sum(n for op, n in self.calls.items() if op.split(".", 1)[1].startswith(MUTATING_PREFIXES))


def _external_id(aws: Aws, connector: dict, region: str) -> str:
    """A connector's external ID; a secret reference is read from the store now with the
    runner's own credentials (the connector's cannot read it before its role is assumed)."""
    from reconciler.aws.secrets import read_values
    from reconciler.util.secrets import fill, references

    value = connector["external_id"]
    ids = references(value)
    if not ids:
        return value
    where = f"crossAccountAccess.externalId of connector '{connector.get('identifier')}'"
    return fill(value, region, read_values(aws, {(region, sid, None): [where] for sid in ids}))


def call(what: str, fn, *args, not_found_none: bool | tuple[str, ...] = False, **kwargs):
    """Run one AWS call; missing → None when asked (by AWS's error code: NOT_FOUND, or the
    codes given as `not_found_none`), anything else → one clear AwsError."""
    try:
        return fn(*args, **kwargs)
    except ClientError as exc:
        if not_found_none and _code(exc) in (not_found_none if isinstance(not_found_none, tuple) else NOT_FOUND):
            return None
        msg = exc.response.get("Error", {}).get("Message") or str(exc)
        # AWS's text may echo the request (Lambda's environment size error lists the
        # variables): every known secret and environment value is scrubbed from it
        err = AwsError(scrub(f"{what}: {_code(exc)}: {msg}", errors=True))
        err.code = _code(exc)
        # retries botocore made before this answer: an earlier attempt may have taken effect
        err.attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        raise err from None
    except WaiterError as exc:
        raise AwsError(scrub(f"{what}: {exc}", errors=True)) from None
    except BotoCoreError as exc:
        raise AwsError(scrub(f"{what}: {exc}", errors=True)) from None


def pages(what: str, client, operation: str, **kwargs):
    """The pages of a paginated call, one at a time (the caller may stop early), errors
    mapped as by call()."""
    it = iter(client.get_paginator(operation).paginate(**kwargs))
    while True:
        page = call(what, next, it, None)
        if page is None:
            return
        yield page


# ---------------------------------------------------------------- Lambda reads


class Lambda:
    def __init__(self, aws: Aws, region: str, connector: dict | None = None):
        self.aws = aws
        self.region = region
        self.c = aws.client("lambda", region, connector)

    def get_function(self, name: str, qualifier: str | None = None) -> dict | None:
        kwargs = {"FunctionName": name}
        if qualifier:
            kwargs["Qualifier"] = qualifier
        return call(f"reading function {name}", self.c.get_function, not_found_none=True, **kwargs)

    def get_configuration(self, name: str) -> dict | None:
        return call(
            f"reading the configuration of {name}",
            self.c.get_function_configuration,
            not_found_none=True,
            FunctionName=name,
        )

    def list_aliases(self, name: str, missing_ok: bool = False) -> dict[str, dict] | None:
        """The aliases of a function by name; None for a function that does not exist (with
        missing_ok, else an AwsError)."""
        out = {}
        # direct calls, following NextMarker (a paginator costs more CPU than the call itself)
        kwargs = {"FunctionName": name}
        while True:
            page = call(f"listing aliases of {name}", self.c.list_aliases, not_found_none=missing_ok, **kwargs)
            if page is None:
                return None
            for a in page.get("Aliases", []):
                out[a["Name"]] = a
            if not page.get("NextMarker"):
                return out
            kwargs["Marker"] = page["NextMarker"]

    def function_pages(self, all_versions: bool = False):
        """ListFunctions, page by page ($LATEST only, or every version with all_versions)."""
        kwargs = {"FunctionVersion": "ALL"} if all_versions else {}
        return pages(f"listing the functions of {self.region}", self.c, "list_functions", **kwargs)

    def list_tags(self, arn: str) -> dict:
        return (call(f"reading the tags of {arn}", self.c.list_tags, Resource=arn) or {}).get("Tags") or {}

    def list_versions(self, name: str) -> list[dict]:
        pages = call(
            f"listing versions of {name}",
            lambda: list(self.c.get_paginator("list_versions_by_function").paginate(FunctionName=name)),
        )
        return [v for p in pages for v in p.get("Versions", []) if v.get("Version") != "$LATEST"]

    # ------------------------------------------------------------ writes

    # Lambda's own waiters (botocore's waiters-2.json) decide what a poll answer means; the
    # poll is written here because a botocore waiter returns nothing, and the apply goes on
    # with the RevisionId of the very answer that ended the wait. Every poll is a GetFunction
    # (its own, larger quota); published_version_active's acceptors (State on
    # GetFunctionConfiguration) are function_active_v2's on GetFunction with the version as
    # qualifier.
    POLL_FIRST = 0.25  # seconds before the second poll; doubled each time up to the waiter's delay

    def _poll(
        self,
        what: str,
        name: str,
        waiters: tuple[str, ...],
        qualifier: str | None = None,
        absent_ok: tuple[str, ...] = (),
        limit: float | None = None,
    ) -> dict:
        """GetFunction until the answer satisfies every waiter in `waiters` (all of their
        success acceptors on the same answer); returns that answer's Configuration. A
        failure acceptor (State or LastUpdateStatus `Failed`) raises with Lambda's reason;
        answers no acceptor matches are polled again, as botocore does, for at most the
        waiter's delay * maxAttempts (or `limit` s, if less). `absent_ok`: waiters whose status field may be absent
        (a function that was never updated has no LastUpdateStatus)."""
        configs = [self.c.get_waiter(w).config for w in waiters]
        limit = min(max(c.delay * c.max_attempts for c in configs), limit if limit is not None else float("inf"))
        delay_max = max(c.delay for c in configs)
        kwargs: dict[str, Any] = {"FunctionName": name, **({"Qualifier": qualifier} if qualifier else {})}
        deadline = time.monotonic() + limit
        delay = self.POLL_FIRST
        while True:
            got = call(what, self.c.get_function, **kwargs)
            conf = got.get("Configuration") or {}
            done = True
            for w, cfg in zip(waiters, configs, strict=False):
                state = next((a.state for a in cfg.acceptors if a.matcher_func(got)), None)
                if state == "failure":
                    raise AwsError(scrub(f"{what}: {_failure(conf, _status_field(cfg))}", errors=True))
                if state != "success" and not (w in absent_ok and _status_field(cfg) not in conf):
                    done = False
            if done:
                return conf
            if time.monotonic() + delay > deadline:
                raise AwsError(f"{what}: still {_status(conf)} after {limit:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, delay_max)

    def wait_updated(self, name: str) -> dict:
        """Until LastUpdateStatus is Successful (function_updated_v2); the Configuration."""
        return self._poll(f"waiting for {name} to finish updating", name, ("function_updated_v2",))

    def wait_active(self, name: str, qualifier: str | None = None) -> dict:
        """Until State is Active (function_active_v2, of a version with `qualifier`)."""
        what = (
            f"waiting for version {qualifier} of {name} to become active"
            if qualifier
            else f"waiting for {name} to become active"
        )
        return self._poll(what, name, ("function_active_v2",), qualifier)

    def wait_idle(self, name: str, what: str, limit: float) -> dict:
        """Until the function is Active and no update is in progress (at most `limit` s)."""
        return self._poll(
            f"{what}: waiting for the update in progress",
            name,
            ("function_active_v2", "function_updated_v2"),
            absent_ok=("function_updated_v2",),
            limit=limit,
        )

    CONFLICT_WAIT = 300.0  # seconds a change waits out updates in progress before it fails

    def _change(self, what: str, name: str, fn, **kwargs) -> dict:
        """A change to an existing function. Lambda refuses it with ResourceConflictException
        while an update of the function is in progress (or it is still Pending): that is
        waited out (polling until the function is idle, then sending the same request with
        the same RevisionId) for at most CONFLICT_WAIT seconds."""
        deadline = time.monotonic() + self.CONFLICT_WAIT
        while True:
            try:
                return call(what, fn, **kwargs)
            except AwsError as exc:
                if exc.code != "ResourceConflictException" or time.monotonic() > deadline:
                    raise
            self.wait_idle(name, what, deadline - time.monotonic())
            time.sleep(self.POLL_FIRST)  # idle at once but still refused: never a tight loop

    def create_function(self, params: dict) -> dict:
        """CreateFunction, then (while Lambda answers Pending) wait until Active: the
        Configuration of the Active function (its RevisionId differs from the create's)."""
        out = call(f"creating function {params['FunctionName']}", self.c.create_function, **params)
        if out.get("State", "Active") != "Active":
            return self.wait_active(params["FunctionName"])
        return out

    def update_code(
        self, name: str, code: dict, architectures: list[str] | None, revision_id: str | None = None
    ) -> dict:
        """UpdateFunctionCode, refused by Lambda if the function is no longer at `revision_id`;
        returns the Configuration once the update is over (the answer, or the poll that
        waited for it)."""
        kwargs = {"FunctionName": name, **code}
        if architectures:
            kwargs["Architectures"] = architectures
        if revision_id:
            kwargs["RevisionId"] = revision_id
        out = self._change(f"updating the code of {name}", name, self.c.update_function_code, **kwargs)
        return self._settled(name, out)

    def update_configuration(self, name: str, config: dict, revision_id: str | None = None) -> dict:
        kwargs = {"FunctionName": name, **config}
        if revision_id:
            kwargs["RevisionId"] = revision_id
        out = self._change(
            f"updating the configuration of {name}", name, self.c.update_function_configuration, **kwargs
        )
        return self._settled(name, out)

    # what an update's answer already holds and the end of its wait must still hold: a
    # difference is a change made by someone else between the update finishing and the poll
    # that saw it finish (Lambda refuses changes while the update is in progress)
    SETTLED_FIELDS = (
        "CodeSha256",
        "Description",
        "Timeout",
        "MemorySize",
        "Handler",
        "Runtime",
        "Role",
        "KMSKeyArn",
        "Environment",
    )

    def _settled(self, name: str, out: dict) -> dict:
        out = {k: v for k, v in out.items() if k != "ResponseMetadata"}
        if out.get("LastUpdateStatus", "Successful") == "Successful":
            return out
        polled = self.wait_updated(name)
        moved = [k for k in self.SETTLED_FIELDS if k in out and polled.get(k) != out[k]]
        if moved:
            err = AwsError(
                f"waiting for {name} to finish updating: {', '.join(moved)} changed meanwhile "
                f"(RevisionId {out.get('RevisionId')} → {polled.get('RevisionId')})"
            )
            err.code = CHANGED_WHILE_UPDATING
            raise err
        return polled

    def publish_version(
        self, name: str, code_sha256: str | None, revision_id: str | None, description: str = ""
    ) -> dict:
        """PublishVersion guarded by the code and the RevisionId of $LATEST; the new
        version's Configuration once it is Active."""
        kwargs: dict[str, Any] = {"FunctionName": name, "Description": description}
        if code_sha256:
            kwargs["CodeSha256"] = code_sha256
        if revision_id:
            kwargs["RevisionId"] = revision_id
        out = self._change(f"publishing a version of {name}", name, self.c.publish_version, **kwargs)
        if out.get("State", "Active") != "Active":
            return self.wait_active(name, out["Version"])
        return out

    def put_alias(self, name: str, alias: dict, version: str, exists: bool, revision_id: str | None = None) -> dict:
        """UpdateAlias guarded by the alias's own RevisionId, or CreateAlias (which has none:
        an alias created meanwhile makes it fail)."""
        kwargs = {
            "FunctionName": name,
            "Name": alias["Name"],
            "FunctionVersion": version,
            "Description": alias.get("Description", ""),
            "RoutingConfig": alias.get("RoutingConfig") or {"AdditionalVersionWeights": {}},
        }
        if exists:
            if revision_id:
                kwargs["RevisionId"] = revision_id
            return self._change(
                f"moving alias {alias['Name']} of {name} to version {version}", name, self.c.update_alias, **kwargs
            )
        kwargs.pop("RoutingConfig") if not alias.get("RoutingConfig") else None
        return call(f"creating alias {alias['Name']} of {name}", self.c.create_alias, **kwargs)

    def delete_alias(self, name: str, alias: str) -> None:
        self._change(f"deleting alias {alias} of {name}", name, self.c.delete_alias, FunctionName=name, Name=alias)

    def tag(self, arn: str, tags: dict) -> None:
        """TagResource (the API has no RevisionId; Lambda gives the function a new one)."""
        if tags:
            self._change(f"tagging {arn}", arn, self.c.tag_resource, Resource=arn, Tags=tags)

    def untag(self, arn: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self._change(f"untagging {arn}", arn, self.c.untag_resource, Resource=arn, TagKeys=keys)

    def delete_function(self, name: str) -> None:
        call(f"deleting function {name}", self.c.delete_function, not_found_none=True, FunctionName=name)


def lambda_tag_pages(aws: Aws, region: str, connector: dict | None = None):
    """The tags of every function of a region through the Resource Groups Tagging API,
    page by page: [{ResourceARN, Tags: [{Key, Value}]}]."""
    c = aws.client("resourcegroupstaggingapi", region, connector)
    return pages(
        f"reading the tags of the functions of {region}", c, "get_resources", ResourceTypeFilters=["lambda:function"]
    )


# ---------------------------------------------------------------- artifacts


def s3_sha256(aws: Aws, art: dict, cache: dict) -> dict:
    """The SHA-256 (base64, as Lambda's CodeSha256) of an S3 zip: its S3 checksum when it
    has a full-object one, else the object streamed and hashed once, cached by ETag/VersionId."""
    s3 = aws.client("s3", art["region"], art.get("connector"))
    where = f"s3://{art['bucket']}/{art['key']}"
    head = call(
        f"reading artifact {where}",
        s3.head_object,
        not_found_none=S3_HEAD_NOT_FOUND,
        Bucket=art["bucket"],
        Key=art["key"],
        ChecksumMode="ENABLED",
    )
    if head is None:
        raise AwsError(f"artifact {where} does not exist (artifact source '{art.get('id')}')")
    etag = head.get("ETag", "").strip('"')
    version = head.get("VersionId")
    out = {"sha256": None, "etag": etag, "version_id": version, "uri": where}
    checksum = head.get("ChecksumSHA256")
    if checksum and "-" not in checksum and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
        out["sha256"] = checksum
        out["how"] = "s3-checksum"
        return out
    key = f"{where}#{version or etag}"
    if key in cache:
        out["sha256"] = cache[key]
        out["how"] = "cached"
        return out
    kwargs = {"Bucket": art["bucket"], "Key": art["key"]}
    if version:
        kwargs["VersionId"] = version
    body = call(f"reading artifact {where}", s3.get_object, **kwargs)["Body"]
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    out["sha256"] = base64.b64encode(h.digest()).decode()
    out["how"] = "hashed"
    cache[key] = out["sha256"]
    return out


def ecr_image(aws: Aws, art: dict, repos_cache: dict | None = None) -> dict:
    """The digest and by-digest URI of an ECR image from its tag, tagRegex or digest.
    `repos_cache` keeps each repository's URI, so a repository is read once per run."""
    ecr = aws.client("ecr", art["region"], art.get("connector"))
    repo = art["repository"]
    reg = {"registryId": art["registry_id"]} if art.get("registry_id") else {}
    repo_key = (art["region"], (art.get("connector") or {}).get("role_arn"), art.get("registry_id"), repo)
    uri = (repos_cache or {}).get(repo_key)
    if uri is None:
        repos = call(
            f"reading ECR repository {repo}",
            ecr.describe_repositories,
            not_found_none=True,
            repositoryNames=[repo],
            **reg,
        )
        if not repos or not repos.get("repositories"):
            raise AwsError(
                f"ECR repository '{repo}' does not exist in {art['region']} (artifact source '{art.get('id')}')"
            )
        uri = repos["repositories"][0]["repositoryUri"]
        if repos_cache is not None:
            repos_cache[repo_key] = uri
    if art.get("digest"):
        ids = [{"imageDigest": art["digest"]}]
        pinned = art["digest"]
    elif art.get("tag"):
        ids = [{"imageTag": art["tag"]}]
        pinned = f"tag {art['tag']}"
    else:
        ids = None
        pinned = f"tagRegex {art['tag_regex']}"
    if ids:
        got = call(
            f"reading ECR image {repo} {pinned}",
            ecr.describe_images,
            not_found_none=True,
            repositoryName=repo,
            imageIds=ids,
            **reg,
        )
        details = (got or {}).get("imageDetails") or []
        if not details:
            raise AwsError(f"ECR image {repo} {pinned} does not exist (artifact source '{art.get('id')}')")
        image = details[0]
        tag = art.get("tag")
    else:
        import re

        rx = re.compile(art["tag_regex"])
        pages = call(
            f"listing ECR images of {repo}",
            lambda: list(ecr.get_paginator("describe_images").paginate(repositoryName=repo, **reg)),
        )
        best = None
        tag = None
        for p in pages:
            for d in p.get("imageDetails", []):
                for t in d.get("imageTags", []) or []:
                    if rx.fullmatch(t) and (best is None or d.get("imagePushedAt") > best.get("imagePushedAt")):
                        best, tag = d, t
        if best is None:
            raise AwsError(f"no image in ECR repository {repo} has a tag matching {art['tag_regex']!r}")
        image = best
    digest = image["imageDigest"]
    return {
        "sha256": digest.split(":", 1)[1],
        "digest": digest,
        "image_uri": f"{uri}@{digest}",
        "tag": tag,
        "uri": f"{uri}:{tag}" if tag else f"{uri}@{digest}",
    }


def read_secret(aws: Aws, region: str, connector: dict | None, store: str, name: str) -> str | None:
    """A secret's string value: Secrets Manager GetSecretValue, or SSM GetParameter with
    decryption (a SecureString). Errors are AwsError with AWS's code (never the value)."""
    if store == "ssm":
        got = call(
            f"reading SSM parameter {name}",
            aws.client("ssm", region, connector).get_parameter,
            Name=name,
            WithDecryption=True,
        )
        return (got.get("Parameter") or {}).get("Value")
    got = call(
        f"reading secret {name}", aws.client("secretsmanager", region, connector).get_secret_value, SecretId=name
    )
    return got.get("SecretString")


def caller_account(aws: Aws, region: str, connector: dict | None) -> str:
    sts = aws.client("sts", region, connector)
    return call("reading the caller identity", sts.get_caller_identity)["Account"]


def download(url: str) -> bytes:
    """Fetch a presigned URL (a published version's code package)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=120) as r:  # a presigned AWS URL
            return r.read()
    except OSError as exc:
        raise AwsError(f"downloading code package: {exc}") from None


# ---------------------------------------------------------------- CloudFormation (pipeline provisioner steps)


class CloudFormation:
    """The stack calls of the CloudFormation provisioner steps; waits are botocore's waiters."""

    def __init__(self, aws: Aws, region: str, connector: dict | None = None):
        self.region = region
        self.c = aws.client("cloudformation", region, connector)

    def describe(self, stack: str) -> dict | None:
        """The stack, or None when there is none of that name (CloudFormation says so with a ValidationError)."""
        try:
            got = self.c.describe_stacks(StackName=stack)
        except ClientError as exc:
            if _code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            return call(f"reading CloudFormation stack {stack} ({self.region})", _raise, exc)
        except BotoCoreError as exc:
            raise AwsError(f"reading CloudFormation stack {stack} ({self.region}): {exc}") from None
        stacks = got.get("Stacks") or []
        return stacks[0] if stacks else None

    def template(self, stack: str) -> str:
        body = call(
            f"reading the template of CloudFormation stack {stack}",
            self.c.get_template,
            StackName=stack,
            TemplateStage="Original",
        ).get("TemplateBody")
        if isinstance(body, str):
            return body
        import json

        return json.dumps(body)  # boto3 gives a JSON template back parsed

    def create(self, params: dict) -> str:
        return call(
            f"creating CloudFormation stack {params['StackName']} ({self.region})", self.c.create_stack, **params
        )["StackId"]

    def update(self, params: dict) -> bool:
        """UpdateStack; False when CloudFormation says there is nothing to update."""
        try:
            self.c.update_stack(**params)
            return True
        except ClientError as exc:
            if _code(exc) == "ValidationError" and "No updates are to be performed" in str(exc):
                return False
            return call(f"updating CloudFormation stack {params['StackName']} ({self.region})", _raise, exc)

    def delete(self, stack: str) -> None:
        call(f"deleting CloudFormation stack {stack} ({self.region})", self.c.delete_stack, StackName=stack)

    def wait(self, waiter: str, stack: str, timeout: float) -> None:
        """stack_create_complete, stack_update_complete or stack_delete_complete, polling every 2 s up to `timeout`."""
        attempts = max(1, int(timeout // 2))
        call(
            f"waiting for CloudFormation stack {stack} ({waiter.replace('_', ' ')})",
            self.c.get_waiter(waiter).wait,
            StackName=stack,
            WaiterConfig={"Delay": 2, "MaxAttempts": attempts},
        )


def _raise(exc: Exception):
    raise exc
