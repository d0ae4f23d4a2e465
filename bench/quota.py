"""Releases, plans and drift checks under Lambda's real API quotas.

Starts moto_server on loopback with a QuotaProxy in front of it (tests/harness/quotaproxy.py:
token buckets of 15/s for the control plane, 100/s for GetFunction, 15/s for GetPolicy,
one second of burst, Lambda's 429 answer beyond them), seeds a fleet (straight to moto,
not timed) and runs the CLI through the proxy:

  release  `apply` of a code change to every one of --release functions, --runs times
           (alternating v2 / v1), then once more with a second consumer taking half of
           every quota (another job of the same account)
  plan     `plan` of --plan unchanged functions with one alias each
  drift    `drift` of the same functions

Each run's wall time is reported against the floor the quotas set for the requests the
proxy let through (per class (requests - one second of burst) / rate; the slowest class
decides), with the requests and throttles per class and whether the run failed.

    python bench/quota.py                       # 300 / 1,000 / 1,000, 5 runs
    python bench/quota.py --release 60 --plan 100 --runs 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.benchfleet import load_fleet  # noqa: E402
from harness.quotaproxy import QuotaProxy  # noqa: E402


fleet = load_fleet()


def run(env: dict, *args: str) -> tuple[float, int, dict, str]:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "reconciler", *args, "--stats"], env=env, capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - t
    m = re.search(r"^stats: (\{.*\})$", r.stderr, re.M)
    return wall, r.returncode, json.loads(m.group(1)) if m else {}, r.stderr


def through(proxy: QuotaProxy, env: dict, ok: tuple[int, ...], *args: str) -> dict:
    proxy.reset_counts()
    wall, code, stats, err = run({**env, "AWS_ENDPOINT_URL": proxy.endpoint}, *args)
    calls, throttles = proxy.calls(), proxy.throttles()
    floor = proxy.floor(calls)
    failed = code not in ok
    if failed:
        print(f"FAILED (exit {code}): {err[-1500:]}", file=sys.stderr)
    return {
        "wall": wall,
        "floor": floor,
        "ratio": wall / floor if floor else float("nan"),
        "calls": calls,
        "throttles": throttles,
        "failed": failed,
        "waited": {k: v["waited_s"] for k, v in stats.get("quotas", {}).items()},
    }


def fmt_classes(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"


def row(case: str, r: dict) -> list[str]:
    return [
        case,
        f"{r['wall']:.1f}s",
        f"{r['floor']:.1f}s",
        f"{r['ratio']:.2f}x",
        fmt_classes(r["calls"]),
        fmt_classes(r["throttles"]),
        "FAILED" if r["failed"] else "ok",
    ]


def seed(env: dict, common: list[str], n: int) -> None:
    """Apply the workspace straight to moto (not through the proxy, not timed in the table)."""
    t = time.perf_counter()
    _, code, _, err = run(env, "apply", "--auto-approve", *common)
    if code:
        raise SystemExit(f"seeding failed: {err[-2000:]}")
    print(f"seeded {n} functions in {time.perf_counter() - t:.0f}s (straight to moto)", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", type=int, default=300, help="functions changed by each release")
    ap.add_argument("--plan", type=int, default=1000, help="functions planned and checked for drift")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parallelism", type=int, default=10)
    ap.add_argument(
        "--plan-parallelism", type=int, default=None, help="--parallelism of plan and drift (default: --parallelism)"
    )
    ap.add_argument("--skip-release", action="store_true", help="only plan and drift")
    args = ap.parse_args()
    import boto3

    proc, endpoint = fleet.start_moto()
    tmp = Path(tempfile.mkdtemp(prefix="reconciler-quota-bench-"))
    rows: list[list[str]] = []
    try:
        c = lambda s: boto3.client(
            s, region_name=fleet.REGION, endpoint_url=endpoint, aws_access_key_id="b", aws_secret_access_key="b"
        )  # noqa: E731
        c("iam").create_role(RoleName=fleet.ROLE, AssumeRolePolicyDocument="{}")
        s3 = c("s3")
        s3.create_bucket(Bucket=fleet.BUCKET)
        for v in ("v1", "v2"):
            s3.put_object(Bucket=fleet.BUCKET, Key=f"{v}.zip", Body=fleet.make_zip(v), ChecksumAlgorithm="SHA256")
        env = fleet.baseline_env(endpoint)
        ws, state = tmp / "ws", tmp / "state"
        common = ["-w", str(ws), "--state-dir", str(state), "--parallelism", str(args.parallelism)]
        n = 0 if args.skip_release else args.release
        if n:
            fleet.workspace(ws, n)
            seed(env, common, n)

        proxy = QuotaProxy(endpoint).start()
        failures = 0
        for i in range(0 if args.skip_release else args.runs):
            fleet.workspace(ws, n, changed=n if i % 2 == 0 else 0)
            r = through(proxy, env, (0,), "apply", "--auto-approve", *common)
            failures += r["failed"]
            rows.append(row(f"release {n} changed, run {i + 1}", r))
            print(rows[-1], file=sys.stderr)
        proxy.stop()

        if not args.skip_release:
            shared = QuotaProxy(endpoint, second_consumer=0.5).start()
            fleet.workspace(ws, n, changed=n if args.runs % 2 == 0 else 0)
            r = through(shared, env, (0,), "apply", "--auto-approve", *common)
            shared.stop()
            rows.append(row(f"release {n} changed, another job takes half", r))
            print(rows[-1], file=sys.stderr)

        m = args.plan
        fleet.workspace(ws, m, changed=n if args.runs % 2 == 1 and n else 0)
        seed(env, common, m)
        proxy = QuotaProxy(endpoint).start()
        if args.plan_parallelism:
            common[-1] = str(args.plan_parallelism)
        r = through(proxy, env, (0,), "plan", "--detailed-exitcode", *common)
        rows.append(row(f"plan {m} unchanged", r))
        print(rows[-1], file=sys.stderr)
        r = through(proxy, env, (0,), "drift", "--state-dir", str(state), "--parallelism", common[-1])
        rows.append(row(f"drift {m}", r))
        print(rows[-1], file=sys.stderr)
        proxy.stop()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    head = ["case", "wall", "floor", "ratio", "requests let through", "throttled (429)", "result"]
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for x in rows:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(x, widths)) + " |")
    if not args.skip_release:
        print(f"releases failed: {failures} of {args.runs}")


if __name__ == "__main__":
    main()
