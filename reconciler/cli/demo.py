"""`reconciler demo`: the whole story on an embedded moto emulator, no AWS account.

It starts moto's server on 127.0.0.1 (reconciler.aws.emulator; moto is the `demo` extra), copies the bundled hello-world sample into a
scratch workspace, and runs the real CLI against it, step by step, exactly as a user
would type the commands against AWS.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reconciler.errors import ReconcilerError

# an installed reconciler carries the sample as package data (see setup.py); a source
# checkout (an editable install) has it in samples/
PACKAGED_SAMPLE = Path(__file__).resolve().parent.parent / "demo_workspace"
SAMPLE = (
    PACKAGED_SAMPLE
    if PACKAGED_SAMPLE.is_dir()
    else Path(__file__).resolve().parent.parent.parent / "samples" / "hello-world"
)
REGION = "us-east-2"
BUCKET = "mylambda"
ROLE = "hello-world-lambda-role"


def build_zip(source_dir: Path) -> bytes:
    """A deterministic zip of a directory (fixed timestamps), as a CI build would make."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in source_dir.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(f.relative_to(source_dir)), (2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, f.read_bytes())
    return buf.getvalue()


def run_demo(keep: Path | None) -> int:
    if not SAMPLE.is_dir():
        raise ReconcilerError(f"the demo's sample workspace is missing ({PACKAGED_SAMPLE}); reinstall reconciler")
    from reconciler.aws import emulator

    server, endpoint = emulator.start()
    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    scratch.mkdir(parents=True, exist_ok=True)
    ws = scratch / "hello-world"
    if ws.exists():
        shutil.rmtree(ws)
    shutil.copytree(SAMPLE, ws)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        RECONCILER_STATE_DIR=str(scratch / "state"),
        NO_COLOR="1",
    )
    try:
        return _story(ws, endpoint, env)
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _cli(ws: Path, env: dict, *args: str, expect: tuple[int, ...] = (0,)) -> int:
    print(f"$ reconciler {' '.join(args)}", flush=True)
    rc = subprocess.call([sys.executable, "-m", "reconciler", *args], cwd=ws, env=env)
    if rc not in expect:
        raise ReconcilerError(f"demo step `reconciler {' '.join(args)}` exited {rc}")
    return rc


def _story(ws: Path, endpoint: str, env: dict) -> int:
    from reconciler.aws import emulator

    def client(name: str):
        return emulator.client(name, endpoint, REGION)

    _say(f"An emulated AWS (moto) listens on {endpoint}; the workspace is a copy of samples/hello-world")
    iam, s3, lam = client("iam"), client("s3"), client("lambda")
    iam.create_role(
        RoleName=ROLE,
        AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}',
    )
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="workloadNameValue", Body=build_zip(ws / "src"), ChecksumAlgorithm="SHA256")
    print(f"created role {ROLE}, bucket {BUCKET}, and uploaded the build of src/ to s3://{BUCKET}/workloadNameValue")

    _say("1. Plan: the function does not exist yet")
    _cli(ws, env, "plan", "--detailed-exitcode", expect=(2,))
    _say("2. Apply: create the function and publish version 1")
    _cli(ws, env, "apply", "--auto-approve")
    _cli(ws, env, "plan", "--detailed-exitcode")

    _say("3. A code change: the handler is edited, CI uploads a new build under a new key")
    handler = ws / "src" / "handler.js"
    handler.write_text(handler.read_text().replace("Hello", "Hello again") + "\n// v2\n")
    s3.put_object(Bucket=BUCKET, Key="hello-world-v2.zip", Body=build_zip(ws / "src"), ChecksumAlgorithm="SHA256")
    service = ws / ".harness" / "service.yaml"
    service.write_text(service.read_text().replace("value: workloadNameValue", "value: hello-world-v2.zip"))
    print("the service variable workload_name now names s3://mylambda/hello-world-v2.zip")
    _cli(ws, env, "plan", "--detailed-exitcode", expect=(2,))
    _say("4. Apply the code change: version 2")
    _cli(ws, env, "apply", "--auto-approve")

    _say("5. Someone changes the function by hand in the console")
    lam.update_function_configuration(
        FunctionName="Hello_World", MemorySize=512, Environment={"Variables": {"DEBUG": "1"}}
    )
    print(
        "aws lambda update-function-configuration --function-name Hello_World --memory-size 512 --environment Variables={DEBUG=1}"
    )
    _say("6. The nightly drift check finds it (exit 2), and plan shows it apart and plans to undo it")
    _cli(ws, env, "drift", expect=(2,))
    _cli(ws, env, "plan", "--detailed-exitcode", expect=(2,))

    _say("7. Roll back to the previous deployment (version 1)")
    _cli(ws, env, "rollback", "--auto-approve")
    _cli(ws, env, "history")
    _cli(ws, env, "state", "show", "Hello_World")
    conf = lam.get_function_configuration(FunctionName="Hello_World")
    print(f"\nLambda now runs code {conf['CodeSha256']} with {conf['MemorySize']} MB: the first deployment again.")
    return 0
