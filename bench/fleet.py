"""Fleet benchmark: reconciler plan/apply against hand-written boto3 baselines.

Starts moto_server on 127.0.0.1, seeds N functions (each with an alias) by applying a
generated workspace, then runs A B A B in the same run:

- `reconciler plan` (state current, nothing to do) vs a threaded boto3 script that reads
  the same information (list_functions + list_aliases);
- `reconciler apply` of the workspace where 100 functions have a code change vs a
  threaded boto3 update_function_code / wait / publish_version / update_alias loop over
  100 functions of its own (another region, seeded with boto3, so that neither sees the
  other's versions). The apply reads every function of the workspace to find what
  changed (at N = 1000: 900 unchanged ones too); the loop is told which to deploy.

Prints a table: median wall time, ratio to the baseline, Lambda API calls per function
(from `--stats`), and peak RSS.

    python bench/fleet.py                 # N = 100 and 1000
    python bench/fleet.py --sizes 100     # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REGION = "us-east-1"
BUCKET = "bench-artifacts"
BASELINE_BUCKET = "bench-baseline-artifacts"
ROLE = "bench-role"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MOTO_LAMBDA_STUB_ECR": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def make_zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("handler.py", (2020, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


def workspace(root: Path, n: int, changed: int = 0) -> None:
    """n services in one environment; the first `changed` deploy the v2 artifact."""
    h = root / ".harness"
    h.mkdir(parents=True, exist_ok=True)
    (h / "env.yaml").write_text("environment:\n  name: bench\n  identifier: bench\n  type: PreProduction\n")
    (h / "infra.yaml").write_text(
        "infrastructureDefinition:\n  name: bench\n  identifier: bench\n  environmentRef: bench\n"
        f"  type: AwsLambda\n  spec:\n    connectorRef: aws\n    region: {REGION}\n"
    )
    (root / "alias.json").write_text(json.dumps({"name": "live"}))
    (root / "fn.json").write_text(
        json.dumps(
            {
                "functionName": "<+service.identifier>",
                "runtime": "python3.12",
                "handler": "handler.handler",
                "role": f"arn:aws:iam::123456789012:role/{ROLE}",
                "memorySize": 128,
            }
        )
    )
    for i in range(n):
        key = "v2.zip" if i < changed else "v1.zip"
        (h / f"svc{i:04d}.yaml").write_text(f"""service:
  name: fn{i:04d}
  identifier: fn{i:04d}
  serviceDefinition:
    type: AwsLambda
    spec:
      manifests:
        - manifest: {{identifier: def, type: AwsLambdaFunctionDefinition, spec: {{store: {{type: Harness, spec: {{files: [/fn.json]}}}}}}}}
        - manifest: {{identifier: alias, type: AwsLambdaFunctionAliasDefinition, spec: {{store: {{type: Harness, spec: {{files: [/alias.json]}}}}}}}}
      artifacts:
        primary:
          primaryArtifactRef: s3
          sources:
            - identifier: s3
              type: AmazonS3
              spec: {{connectorRef: aws, region: {REGION}, bucketName: {BUCKET}, filePath: {key}}}
""")


def cli(env: dict, *args: str) -> tuple[float, dict, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "reconciler", *args, "--stats"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 2):
        raise SystemExit(f"reconciler {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    stats = {}
    m = re.search(r"^stats: (\{.*\})$", r.stderr, re.M)
    if m:
        stats = json.loads(m.group(1))
    return wall, stats, r


REPO = Path(__file__).resolve().parent.parent


def baseline_env(endpoint: str) -> dict:
    pp = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + (os.pathsep + pp if pp else ""),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "NO_COLOR": "1",
    }


BASELINE_READ = r"""
import boto3, sys
from concurrent.futures import ThreadPoolExecutor
lam = boto3.client("lambda")
fns = [f for p in lam.get_paginator("list_functions").paginate() for f in p["Functions"]]
def aliases(f):
    return [a for p in lam.get_paginator("list_aliases").paginate(FunctionName=f["FunctionName"]) for a in p["Aliases"]]
with ThreadPoolExecutor(10) as ex:
    out = list(ex.map(aliases, fns))
print(len(fns), sum(map(len, out)))
"""

BASELINE_REGION = "us-west-2"  # its own functions, so that the two never touch each other's

BASELINE_APPLY = r"""
import boto3, sys
from concurrent.futures import ThreadPoolExecutor
lam = boto3.client("lambda", region_name="%s")
names, key = sys.argv[1].split(","), sys.argv[2]
def deploy(name):
    lam.update_function_code(FunctionName=name, S3Bucket="%s", S3Key=key)
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    v = lam.publish_version(FunctionName=name)["Version"]
    lam.update_alias(FunctionName=name, Name="live", FunctionVersion=v)
with ThreadPoolExecutor(10) as ex:
    list(ex.map(deploy, names))
""" % (BASELINE_REGION, BASELINE_BUCKET)


def py(env: dict, code: str, *args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def run_size(n: int, rounds: int) -> list[list[str]]:
    import boto3

    proc, endpoint = start_moto()
    rows = []
    try:
        env = baseline_env(endpoint)
        c = lambda s: boto3.client(
            s, region_name=REGION, endpoint_url=endpoint, aws_access_key_id="b", aws_secret_access_key="b"
        )  # noqa: E731
        c("iam").create_role(RoleName=ROLE, AssumeRolePolicyDocument="{}")
        s3 = c("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="v1.zip", Body=make_zip("v1"), ChecksumAlgorithm="SHA256")
        s3.put_object(Bucket=BUCKET, Key="v2.zip", Body=make_zip("v2"), ChecksumAlgorithm="SHA256")
        s3.put_object(Bucket=BUCKET, Key="v3.zip", Body=make_zip("v3"), ChecksumAlgorithm="SHA256")
        # the apply baseline's own 100 functions, in another region, seeded with boto3
        m = min(100, n)
        west = boto3.client(
            "s3", region_name=BASELINE_REGION, endpoint_url=endpoint, aws_access_key_id="b", aws_secret_access_key="b"
        )
        west.create_bucket(Bucket=BASELINE_BUCKET, CreateBucketConfiguration={"LocationConstraint": BASELINE_REGION})
        for v in ("v1", "v2", "v3"):
            west.put_object(Bucket=BASELINE_BUCKET, Key=f"{v}.zip", Body=make_zip(v))
        wl = boto3.client(
            "lambda",
            region_name=BASELINE_REGION,
            endpoint_url=endpoint,
            aws_access_key_id="b",
            aws_secret_access_key="b",
        )

        def seed_baseline(i: int) -> None:
            name = f"base{i:04d}"
            wl.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Handler="handler.handler",
                Role=f"arn:aws:iam::123456789012:role/{ROLE}",
                Code={"S3Bucket": BASELINE_BUCKET, "S3Key": "v1.zip"},
            )
            wl.create_alias(
                FunctionName=name, Name="live", FunctionVersion=wl.publish_version(FunctionName=name)["Version"]
            )

        with ThreadPoolExecutor(10) as ex:
            list(ex.map(seed_baseline, range(m)))
        tmp = Path(tempfile.mkdtemp(prefix="reconciler-bench-"))
        ws, state = tmp / "ws", tmp / "state"
        workspace(ws, n)
        common = ["-w", str(ws), "--state-dir", str(state)]
        seed, _, _ = cli(env, "apply", "--auto-approve", *common)
        print(f"N={n}: seeded by apply in {seed:.1f}s", file=sys.stderr)

        plan_t, base_t, plan_stats = [], [], {}
        for _ in range(rounds):  # A B A B
            w, plan_stats, r = cli(env, "plan", "--detailed-exitcode", *common)
            assert r.returncode == 0, "the seeded fleet should plan no changes"
            plan_t.append(w)
            base_t.append(py(env, BASELINE_READ))
        calls = sum(v for k, v in plan_stats.get("calls", {}).items() if k.startswith("lambda."))
        rows.append(
            [
                f"plan N={n}",
                f"{statistics.median(plan_t):.2f}s",
                f"{statistics.median(base_t):.2f}s",
                f"{statistics.median(plan_t) / statistics.median(base_t):.2f}x",
                f"{calls / n:.2f}",
                f"{plan_stats.get('peak_rss_mb', 0):.0f} MB",
            ]
        )

        names = ",".join(f"base{i:04d}" for i in range(m))
        apply_t, base_apply_t, apply_stats = [], [], {}
        for r_ in range(rounds):
            key = "v2.zip" if r_ % 2 == 0 else "v1.zip"
            workspace(ws, n, changed=m if key == "v2.zip" else 0)
            w, apply_stats, _ = cli(env, "apply", "--auto-approve", *common)
            apply_t.append(w)
            base_apply_t.append(py(env, BASELINE_APPLY, names, "v3.zip" if r_ % 2 == 0 else "v2.zip"))
        calls = sum(v for k, v in apply_stats.get("calls", {}).items() if k.startswith("lambda."))
        rows.append(
            [
                f"apply {m} changed of N={n}",
                f"{statistics.median(apply_t):.2f}s",
                f"{statistics.median(base_apply_t):.2f}s",
                f"{statistics.median(apply_t) / statistics.median(base_apply_t):.2f}x",
                f"{calls / m:.2f}",
                f"{apply_stats.get('peak_rss_mb', 0):.0f} MB",
            ]
        )
    finally:
        proc.kill()
        proc.wait()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        rows.extend(run_size(n, args.rounds))
    head = ["case", "reconciler", "boto3 baseline", "ratio", "Lambda calls/function", "peak RSS"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, moto_server on 127.0.0.1"
    )
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
