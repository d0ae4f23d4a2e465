"""The code to deploy: each function's artifact (an S3 object or an ECR image) resolved to
the SHA-256 Lambda will report for it, where it comes from, and the Code parameters to give
Lambda. Reads S3 and ECR only."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.model import FunctionSpec


def resolve_artifact(aws, spec: FunctionSpec, cache: dict, ecr_repos: dict | None = None) -> dict:
    """The code to deploy: its SHA-256 as Lambda reports it, where it comes from, and the
    Code parameters for Lambda."""
    from reconciler.aws.client import ecr_image, s3_sha256

    art = spec.artifact
    if art["type"] == "S3":
        got = s3_sha256(aws, art, cache)
        params = {"S3Bucket": art["bucket"], "S3Key": art["key"]}
        if got.get("version_id") and got["version_id"] != "null":
            params["S3ObjectVersion"] = got["version_id"]
        return {
            "sha256": got["sha256"],
            "source": {"type": "S3", "uri": got["uri"], "etag": got["etag"], "version_id": got.get("version_id")},
            "params": params,
        }
    got = ecr_image(aws, art, ecr_repos)
    return {
        "sha256": got["sha256"],
        "source": {"type": "ECR", "uri": got["uri"], "digest": got["digest"], "tag": got.get("tag")},
        "params": {"ImageUri": got["image_uri"]},
    }


def artifact_key(art: dict) -> str:
    """What identifies an artifact: its S3 object or ECR image (by digest, tag or tag pattern) and region."""
    if art["type"] == "S3":
        return f"s3://{art['bucket']}/{art['key']}@{art['region']}"
    pin = art.get("digest") or art.get("tag") or f"~{art.get('tag_regex')}"
    return f"ecr:{art.get('registry_id') or ''}/{art['repository']}:{pin}@{art['region']}"


def resolve_all(aws, specs: list[FunctionSpec], cache: dict, log: Callable[[str], None]) -> dict[str, dict]:
    """The code of each function, by artifact_key(): once per distinct artifact, whatever
    number of functions deploy it; an ECR repository once whatever number of tags are read
    from it."""
    code_by_artifact: dict[str, dict] = {}
    ecr_repos: dict = {}
    for s in specs:
        key = artifact_key(s.artifact)
        if key not in code_by_artifact:
            log(f"artifact {s.artifact.get('id')}: resolving {key}")
            code_by_artifact[key] = resolve_artifact(aws, s, cache, ecr_repos)
    return code_by_artifact
