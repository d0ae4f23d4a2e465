"""Shared fixtures for the reconciler test-suite.

End-to-end tests run the real ``moto_server`` in a subprocess (one per test
session, reset before every test that uses ``aws_env``) and the CLI as
``python -m reconciler`` in a subprocess pointed at it.  See
``tests/harness/faultproxy.py`` for fault injection.

A test parametrized with ``on_both_emulators`` (``tests/harness/localstack.py``) runs
on moto and on LocalStack (one server per session, a fresh account per test). Where no
LocalStack is installed its cases skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# ``harness`` is imported as a top-level package from this directory (the
# tests directory has no __init__.py; pytest's default "prepend" import
# mode puts it on sys.path anyway -- this makes it explicit).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from harness.faultproxy import FaultProxy  # noqa: E402
from harness.localstack import LocalStack, localstack_python  # noqa: E402
from harness.motoserver import MotoServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
REGION = "us-east-1"
ACCOUNT = "123456789012"


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test running moto_server and/or the CLI in subprocesses")


# ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-access-key",
    "AWS_SESSION_TOKEN": "testing-session-token",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_COLOR": "1",
}
# removed so nothing from the developer's machine leaks into the tests
AWS_ENV_REMOVE = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "MOTO_ACCOUNT_ID")


@pytest.fixture(scope="session")
def localstack_server():
    """LocalStack for the session, or a skip (a failure under CI) saying why not."""
    if localstack_python() is None:
        why = (
            "LocalStack is not installed: set RECONCILER_TEST_LOCALSTACK_PYTHON to the python of a venv "
            "with localstack-core[runtime] and tests/localstack_plugin (README, Development)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    server = LocalStack.find().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def emulator(request) -> str:
    """'moto' unless a test is parametrized (indirectly) with 'localstack'."""
    return getattr(request, "param", "moto")


@pytest.fixture
def aws_env(emulator, request, monkeypatch):
    """Reset moto (or take a fresh LocalStack account) and return the
    environment for a CLI subprocess (a copy of ``os.environ`` pointed at
    the emulator).  The same values are applied to ``os.environ`` (via
    monkeypatch) for in-test boto3 clients."""
    if emulator == "localstack":
        server = request.getfixturevalue("localstack_server")
        key = server.new_account()
    else:
        server = request.getfixturevalue("moto_server")
        server.reset()
        key = "testing"
    values = dict(AWS_TEST_ENV, AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=key)
    remove = [k for k in os.environ if k in AWS_ENV_REMOVE or k.startswith("AWS_ENDPOINT_URL_")]
    for k in remove:
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    env = dict(os.environ)
    for k in remove:
        env.pop(k, None)
    env.update(values)
    return env


# ----------------------------------------------------------------------
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def make_zip(files: dict) -> bytes:
    """Deterministic zip (sorted names, fixed timestamps and modes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            data = files[name]
            zf.writestr(info, data.encode() if isinstance(data, str) else data)
    return buf.getvalue()


def sha256_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


class AwsHelper:
    """boto3 access to the emulator plus setup helpers."""

    account = ACCOUNT
    region = REGION

    def __init__(self, endpoint: str, access_key: str = "testing", emulator: str = "moto"):
        self.endpoint = endpoint
        self.access_key = access_key
        self.emulator = emulator
        if emulator == "localstack":
            self.account = access_key
        self._clients = {}

    def client(self, service: str, region: str = REGION, **kwargs):
        """A boto3 client for moto (``endpoint_url`` may be overridden,
        e.g. with a FaultProxy endpoint; extra kwargs such as ``config`` go
        to ``boto3.client``).  Clients without kwargs are cached."""
        import boto3

        key = (service, region) if not kwargs else None
        if key and key in self._clients:
            return self._clients[key]
        kwargs.setdefault("endpoint_url", self.endpoint)
        c = boto3.client(
            service,
            region_name=region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key="testing",
            aws_session_token="testing",
            **kwargs,
        )
        if key:
            self._clients[key] = c
        return c

    # -- IAM -------------------------------------------------------------
    def create_role(self, name: str = "lambda-role") -> str:
        iam = self.client("iam")
        try:
            return iam.get_role(RoleName=name)["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            pass
        return iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY),
        )["Role"]["Arn"]

    # -- S3 --------------------------------------------------------------
    make_zip = staticmethod(make_zip)
    sha256_b64 = staticmethod(sha256_b64)

    def ensure_bucket(self, bucket: str, region: str = REGION):
        s3 = self.client("s3", region)
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception:
            if region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})

    def put_zip(self, bucket: str, key: str, body: bytes, checksum: bool = True, region: str = REGION) -> str:
        """Upload ``body``; returns base64(sha256(body)) (== Lambda's
        CodeSha256).  ``checksum=True`` stores an S3 SHA256 checksum
        (readable via HeadObject ChecksumMode=ENABLED); a plain put stores
        only moto's default CRC32."""
        self.ensure_bucket(bucket, region)
        s3 = self.client("s3", region)
        if checksum:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        return sha256_b64(body)

    # -- ECR -------------------------------------------------------------
    def image_uri(self, repo: str, tag: str, region: str = REGION) -> str:
        return f"{self.account}.dkr.ecr.{region}.amazonaws.com/{repo}:{tag}"

    def push_image(self, repo: str, tag: str, seed: str | None = None, region: str = REGION) -> str:
        """Create the repository if missing and put an image manifest under
        ``tag``; returns the imageDigest (``sha256:...``).  The layer
        digests derive from ``seed`` (default ``repo:tag``), and moto
        computes the image digest from them: vary ``seed`` to push a new
        image under an existing tag.  Use flat repo names (no ``/``)."""
        ecr = self.client("ecr", region)
        try:
            ecr.create_repository(repositoryName=repo)
        except ecr.exceptions.RepositoryAlreadyExistsException:
            pass
        seed = seed if seed is not None else f"{repo}:{tag}"
        h = lambda s: "sha256:" + hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 1024,
                "digest": h("config:" + seed),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 2048,
                    "digest": h("layer:" + seed),
                }
            ],
        }
        resp = ecr.put_image(repositoryName=repo, imageTag=tag, imageManifest=json.dumps(manifest))
        return resp["image"]["imageId"]["imageDigest"]

    # -- Lambda ----------------------------------------------------------
    def lambda_config(self, name: str, region: str = REGION) -> dict:
        return self.client("lambda", region).get_function_configuration(FunctionName=name)

    def aliases(self, name: str, region: str = REGION) -> dict:
        out = {}
        pages = self.client("lambda", region).get_paginator("list_aliases").paginate(FunctionName=name)
        for page in pages:
            for a in page["Aliases"]:
                out[a["Name"]] = a["FunctionVersion"]
        return out

    def versions(self, name: str, region: str = REGION) -> list:
        out = []
        pages = self.client("lambda", region).get_paginator("list_versions_by_function").paginate(FunctionName=name)
        for page in pages:
            out += [v["Version"] for v in page["Versions"] if v["Version"] != "$LATEST"]
        return out


@pytest.fixture
def aws(aws_env, emulator):
    return AwsHelper(aws_env["AWS_ENDPOINT_URL"], aws_env["AWS_ACCESS_KEY_ID"], emulator)


# ----------------------------------------------------------------------
class CliRunner:
    """``run_cli(*args, cwd=None, env_extra=None, input=None, timeout=120)``
    runs ``python -m reconciler ARGS`` against moto and returns the
    ``CompletedProcess`` (text mode, stdout/stderr captured).
    ``run_cli.popen(*args, ...)`` starts it without waiting (for kill
    tests); ``run_cli.env`` is the base environment."""

    def __init__(self, env: dict):
        self.env = dict(env)
        pp = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")

    def _env(self, env_extra):
        env = dict(self.env)
        for k, v in (env_extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    def command(self, *args):
        return [sys.executable, "-m", "reconciler", *map(str, args)]

    def __call__(self, *args, cwd=None, env_extra=None, input=None, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args),
            cwd=cwd,
            env=self._env(env_extra),
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args, cwd=None, env_extra=None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("text", True)
        return subprocess.Popen(self.command(*args), cwd=cwd, env=self._env(env_extra), **kwargs)


@pytest.fixture
def run_cli(aws_env):
    return CliRunner(aws_env)


# ----------------------------------------------------------------------
@pytest.fixture
def workspace(tmp_path):
    """``copy_sample(name) -> Path``: copy ``samples/<name>`` (file or
    directory) into ``tmp_path`` and return the copy."""

    def copy_sample(name: str) -> Path:
        src = SAMPLES / name
        if not src.exists():
            raise FileNotFoundError(f"no sample {src}")
        dst = tmp_path / Path(name).name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        return dst

    copy_sample.root = tmp_path
    return copy_sample


@pytest.fixture
def fault_proxy(aws_env):
    proxy = FaultProxy(aws_env["AWS_ENDPOINT_URL"]).start()
    try:
        yield proxy
    finally:
        proxy.stop()
