"""Kill-at-every-step sweep: SIGKILL `reconciler apply` right after each mutating Lambda
call in turn, then run the next apply, and print what came of it.

Starts its own moto_server and FaultProxy (from tests/harness) on 127.0.0.1. For each
scenario a clean run counts the mutating Lambda calls; then, for k = 1..count, moto is
reset and seeded, the apply is started and killed by the proxy right after the k-th
mutating call was answered (every later request is held until the process is dead), and
then `plan` and `apply --auto-approve` are run without faults. Scenarios (the
two-environments sample, staging, function greeter-staging, alias `live`):

- create:   the first deployment (CreateFunction, PublishVersion, CreateAlias);
- update:   v1 → v2, a new S3 key and MemorySize 128 → 256;
- rollback: the same update with PublishVersion failing (400), so the apply rolls back by
  itself; the kill lands in the update or in the rollback.

Columns: the crash point; what the killed apply had recorded (its last step); whether
`plan` reported the interrupted deployment; the outcome after the next apply; versions
published in all (beyond what existed before the killed apply) and whether a version the
killed apply had published was reused; how long the next apply took.

Then the fault cases (`--cases`), one apply each with faults injected at the proxy, then
`plan` and `apply` without faults:

- double-failure: the update's PublishVersion fails, then its rollback's UpdateFunctionCode;
- double-failure-create: the create's PublishVersion fails, then its rollback's DeleteFunction;
- sigterm-twice: SIGTERM once the update's configuration is updated (it rolls back), and
  again when the rollback has read the function (a CI cancel);
- lost-answer-create / lost-answer-publish: the answer to CreateFunction / PublishVersion
  is cut (the call happened; botocore retries);
- concurrent-create: another service's tool creates the function just before this
  apply's CreateFunction reaches Lambda;
- concurrent-create-same: the same deployment, run from elsewhere, creates it just before.

Columns: the first apply's exit code; whether the function is intact after it (it exists
and alias `live` serves a whole release; for concurrent-create, the other service's
function is untouched); what the next `plan` says (shows the half-done deployment, adopts the function, no
changes, refuses it); the next apply's
outcome; versions published beyond what existed before; versions leaked (published
versions `drift` reports as published outside reconciler after the next apply; must be 0).

    python bench/faults.py               # all scenarios and cases, Markdown tables on stdout
    python bench/faults.py -s update     # one scenario
    python bench/faults.py --cases       # the fault cases only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from harness.faultproxy import FaultProxy, is_mutating  # noqa: E402
from harness.motoserver import MotoServer  # noqa: E402

from reconciler.store import state as st  # noqa: E402
from reconciler.errors import ReconcilerError  # noqa: E402

REGION = "us-east-1"
BUCKET = "reconciler-artifacts"
KEY1 = "greeter/greeter-1.0.0.zip"
KEY2 = "greeter/greeter-2.0.0.zip"
FN = "greeter-staging"
NO_RETRY = {"status": 400, "error_type": "InvalidParameterValueException"}
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_COLOR": "1",
}


def make_zip(text: str) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("handler.py", date_time=(1980, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


def sha256_b64(body: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(body).digest()).decode()


class Bench:
    def __init__(self, work: Path):
        import boto3

        self.moto = MotoServer()
        self.proxy = FaultProxy(self.moto.endpoint).start()
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(ENV, PYTHONPATH=str(ROOT))
        kw = dict(
            region_name=REGION,
            endpoint_url=self.moto.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            aws_session_token="testing",
        )
        self.lam, self.s3, self.iam = boto3.client("lambda", **kw), boto3.client("s3", **kw), boto3.client("iam", **kw)
        self.ws1 = work / "v1"
        shutil.copytree(ROOT / "samples" / "two-environments", self.ws1)
        self.ws2 = work / "v2"
        shutil.copytree(self.ws1, self.ws2)
        svc = self.ws2 / ".harness" / "service.yaml"
        svc.write_text(svc.read_text().replace(KEY1, KEY2))
        self.zip1, self.zip2 = (
            make_zip("def handler(e, c):\n    return 'v1'\n"),
            make_zip("def handler(e, c):\n    return 'v2'\n"),
        )
        self.n = 0

    def close(self) -> None:
        self.proxy.stop()
        self.moto.stop()

    def seed(self) -> None:
        self.moto.reset()
        self.iam.create_role(
            RoleName="greeter-lambda-role",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )
        self.s3.create_bucket(Bucket=BUCKET)
        self.s3.put_object(Bucket=BUCKET, Key=KEY1, Body=self.zip1, ChecksumAlgorithm="SHA256")
        self.s3.put_object(Bucket=BUCKET, Key=KEY2, Body=self.zip2, ChecksumAlgorithm="SHA256")

    def cmd(self, verb: str, ws: Path, state: Path, *extra) -> list[str]:
        return [
            sys.executable,
            "-m",
            "reconciler",
            verb,
            "-w",
            str(ws),
            "--state-dir",
            str(state),
            "-e",
            "staging",
            *map(str, extra),
        ]

    def run(self, verb, ws, state, *extra, proxy=False) -> subprocess.CompletedProcess:
        env = dict(self.env, AWS_ENDPOINT_URL=self.proxy.endpoint if proxy else self.moto.endpoint)
        return subprocess.run(
            self.cmd(verb, ws, state, *extra),
            env=env,
            cwd=ws,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )

    def killed(self, k: int, ws, state, *extra) -> tuple[int, str]:
        holder = {}

        def kill():
            holder["p"].kill()
            holder["p"].wait()

        hook = self.proxy.after(is_mutating, k, kill)
        env = dict(self.env, AWS_ENDPOINT_URL=self.proxy.endpoint)
        holder["p"] = p = subprocess.Popen(
            self.cmd("apply", ws, state, "--auto-approve", *extra),
            env=env,
            cwd=ws,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        _, err = p.communicate(timeout=300)
        if not hook.fired:
            raise SystemExit(f"mutating call {k} never came:\n{err}")
        return p.returncode, err

    def versions(self) -> list[str]:
        try:
            return [
                v["Version"]
                for v in self.lam.list_versions_by_function(FunctionName=FN)["Versions"]
                if v["Version"] != "$LATEST"
            ]
        except self.lam.exceptions.ResourceNotFoundException:
            return []

    def live(self) -> dict:
        try:
            conf = self.lam.get_function_configuration(FunctionName=FN)
        except self.lam.exceptions.ResourceNotFoundException:
            return {}
        aliases = {a["Name"]: a["FunctionVersion"] for a in self.lam.list_aliases(FunctionName=FN)["Aliases"]}
        return {"sha": conf["CodeSha256"], "memory": conf["MemorySize"], "aliases": aliases}


SCENARIOS = {
    # name: (deploy v1 first?, workspace, extra args, faults)
    "create": (False, "ws1", (), []),
    "update": (True, "ws2", ("--var", "memorySize=256"), []),
    "rollback": (True, "ws2", ("--var", "memorySize=256"), [("PublishVersion", "fail", NO_RETRY)]),
}


def sweep(b: Bench, name: str) -> list[dict]:
    v1_first, ws_attr, extra, faults = SCENARIOS[name]
    ws = getattr(b, ws_attr)
    want = {"sha": sha256_b64(b.zip2 if ws_attr == "ws2" else b.zip1), "memory": 256 if extra else 128}

    def setup(state: Path) -> list[str]:
        b.seed()
        if v1_first:
            r = b.run("apply", b.ws1, state, "--auto-approve")
            assert r.returncode == 0, r.stderr
        b.proxy.clear(rules=True)
        for op, action, kw in faults:
            b.proxy.add_rule(op, action, times=None, **kw)
        return b.versions()

    # the clean run, to count the mutating calls (with the scenario's faults)
    b.n += 1
    state = b.work / f"state-{name}-clean"
    setup(state)
    b.run("apply", ws, state, "--auto-approve", *extra, proxy=True)
    ops = [e["operation"] for e in b.proxy.mutating_requests()]
    rows = []
    for k in range(1, len(ops) + 1):
        state = b.work / f"state-{name}-{k}"
        before = setup(state)
        code, _ = b.killed(k, ws, state, *extra)
        b.proxy.clear(rules=True)
        path = state / "staging" / "staging_use1.json"
        valid = "valid"
        try:
            json.loads(path.read_text())
            doc = st.parse_file(path)  # with the steps the killed apply journaled
            if path.with_name(path.name + ".backup").exists():
                json.loads(path.with_name(path.name + ".backup").read_text())
        except (OSError, ValueError, ReconcilerError) as exc:
            valid, doc = f"INVALID ({exc})", {"history": []}
        stuck = [
            h
            for h in doc.get("history", [])
            if h.get("function") == FN and h.get("status") in ("in_progress", "rolling_back")
        ]
        last_step = "-"
        if stuck:
            steps = stuck[-1].get("steps") or []
            last_step = f"{stuck[-1]['status']}" + (f", after '{steps[-1]['step']}'" if steps else "")
        plan = b.run("plan", ws, state, "--detailed-exitcode", *extra)
        noted = "yes" if "was interrupted" in plan.stdout else "no"
        t = time.monotonic()
        nxt = b.run("apply", ws, state, "--auto-approve", *extra)
        took = time.monotonic() - t
        live, versions = b.live(), b.versions()
        new = [v for v in versions if v not in before]
        newest = max(versions, key=int) if versions else None
        after = json.loads(path.read_text())
        last = after["history"][-1]
        reused = next(
            (s["step"].split()[-1] for s in last.get("steps", []) if s["step"].startswith("reused version")), None
        )
        ok = (
            nxt.returncode == 0
            and live.get("sha") == want["sha"]
            and live.get("memory") == want["memory"]
            and live.get("aliases") == {"live": newest}
            and len(new) <= 1
            and last.get("status") == "succeeded"
        )
        outcome = "converged" if ok else f"NOT CONVERGED (exit {nxt.returncode}: {nxt.stderr.strip()[-200:]})"
        if nxt.returncode == 0 and last.get("status") == "rolled_back":
            outcome = "rolled back"
        rows.append(
            {
                "scenario": name,
                "k": k,
                "operation": ops[k - 1],
                "killed": code,
                "state": valid,
                "recorded": last_step,
                "plan_note": noted,
                "outcome": outcome,
                "new_versions": len(new),
                "reused": reused,
                "seconds": took,
            }
        )
        print(f"  {name} k={k} {ops[k - 1]}: {outcome}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- fault cases


def _other_create(b: Bench, tags: dict, body: bytes):
    """A proxy rule match that, when this apply's CreateFunction arrives, first creates the
    function straight in moto (another client), then lets CreateFunction through."""
    done = []

    def match(entry) -> bool:
        if entry["operation"] == "CreateFunction" and not done:
            done.append(True)
            b.lam.create_function(
                FunctionName=FN,
                Runtime="python3.12",
                Handler="handler.handler",
                Code={"ZipFile": body},
                Role="arn:aws:iam::123456789012:role/greeter-lambda-role",
                Tags=tags,
            )
        return False

    return match


def _arm(b: Bench, case: str, holder: dict) -> None:
    p = b.proxy
    if case == "double-failure":
        p.add_rule("PublishVersion", "fail", times=1, **NO_RETRY)
        p.add_rule("UpdateFunctionCode", "fail", nth=2, times=None, **NO_RETRY)
    elif case == "double-failure-create":
        p.add_rule("PublishVersion", "fail", times=1, **NO_RETRY)
        p.add_rule("DeleteFunction", "fail", times=None, **NO_RETRY)
    elif case == "sigterm-twice":
        first = []
        p.after("UpdateFunctionConfiguration", 1, lambda: (holder["p"].send_signal(signal.SIGTERM), first.append(1)))
        p.after(
            lambda e: e["operation"] == "GetFunction" and bool(first),
            1,
            lambda: holder["p"].send_signal(signal.SIGTERM),
        )
    elif case == "lost-answer-create":
        p.add_rule("CreateFunction", "cut", times=1)
    elif case == "lost-answer-publish":
        p.add_rule("PublishVersion", "cut", times=1)
    elif case == "concurrent-create":
        p.add_rule(
            _other_create(b, {"reconciler:service": "billing", "reconciler:environment": "staging"}, b.zip2), "fail"
        )
    elif case == "concurrent-create-same":
        tags = {
            "service": "greeter",
            "environment": "staging",
            "environment-type": "PreProduction",
            "reconciler:service": "greeter",
            "reconciler:environment": "staging",
            "reconciler:infrastructure": "staging_use1",
        }
        p.add_rule(_other_create(b, tags, b.zip1), "fail")


CASES = {
    # name: (deploy v1 first?, workspace, extra args)
    "double-failure": (True, "ws2", ("--var", "memorySize=256")),
    "double-failure-create": (False, "ws1", ()),
    "sigterm-twice": (True, "ws2", ("--var", "memorySize=256")),
    "lost-answer-create": (False, "ws1", ()),
    "lost-answer-publish": (True, "ws2", ("--var", "memorySize=256")),
    "concurrent-create": (False, "ws1", ()),
    "concurrent-create-same": (False, "ws1", ()),
}


def run_case(b: Bench, case: str) -> dict:
    v1_first, ws_attr, extra = CASES[case]
    ws = getattr(b, ws_attr)
    want = {"sha": sha256_b64(b.zip2 if ws_attr == "ws2" else b.zip1), "memory": 256 if extra else 128}
    state = b.work / f"state-case-{case}"
    b.seed()
    if v1_first:
        r = b.run("apply", b.ws1, state, "--auto-approve")
        assert r.returncode == 0, r.stderr
    before = b.versions()
    b.proxy.clear(rules=True)
    holder: dict = {}
    _arm(b, case, holder)
    env = dict(b.env, AWS_ENDPOINT_URL=b.proxy.endpoint)
    holder["p"] = p = subprocess.Popen(
        b.cmd("apply", ws, state, "--auto-approve", *extra),
        env=env,
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    _, err = p.communicate(timeout=300)
    b.proxy.clear(rules=True)
    first = p.returncode
    live = b.live()
    if case == "concurrent-create":
        tags = (
            b.lam.list_tags(Resource=b.lam.get_function_configuration(FunctionName=FN)["FunctionArn"])["Tags"]
            if live
            else {}
        )
        intact = live.get("sha") == sha256_b64(b.zip2) and tags.get("reconciler:service") == "billing"
    else:
        serving = (live.get("aliases") or {}).get("live")
        code = b.lam.get_function_configuration(FunctionName=FN, Qualifier=serving)["CodeSha256"] if serving else None
        intact = bool(live) and (
            code in (sha256_b64(b.zip1), sha256_b64(b.zip2)) or first == 0 or not v1_first and not serving
        )
    plan = b.run("plan", ws, state, "--detailed-exitcode", *extra)
    shown = (
        "shows it unfinished"
        if "finishes it" in plan.stdout or "converges it" in plan.stdout
        else "adopts it"
        if "will be adopted" in plan.stdout
        else "refuses it"
        if plan.returncode == 1
        else "no changes"
        if plan.returncode == 0
        else "changes"
    )
    nxt = b.run("apply", ws, state, "--auto-approve", *extra)
    live, versions = b.live(), b.versions()
    new = [v for v in versions if v not in before]
    newest = max(versions, key=int) if versions else None
    if case == "concurrent-create":
        outcome = (
            "refused, the other service's function left alone"
            if nxt.returncode == 1
            and "managed by service 'billing'" in nxt.stderr
            and live.get("sha") == sha256_b64(b.zip2)
            else f"UNEXPECTED (exit {nxt.returncode}: {nxt.stderr.strip()[-200:]})"
        )
    else:
        ok = (
            nxt.returncode == 0
            and live.get("sha") == want["sha"]
            and live.get("memory") == want["memory"]
            and live.get("aliases") == {"live": newest}
        )
        outcome = "converged" if ok else f"NOT CONVERGED (exit {nxt.returncode}: {nxt.stderr.strip()[-200:]})"
    drift = b.run("drift", ws, state, "--format", "json")
    try:
        report = json.loads(drift.stdout)
        leaked = sum(1 for f in report["functions"] for c in f["changes"] if c["kind"] == "version")
    except ValueError:
        leaked = None
    row = {
        "case": case,
        "first": first,
        "error": (err.strip().splitlines() or [""])[-1][:160],
        "intact": intact,
        "plan": shown,
        "outcome": outcome,
        "new_versions": len(new),
        "leaked": leaked,
        "drift": drift.returncode,
    }
    print(f"  {case}: first apply exit {first}; {outcome}", file=sys.stderr, flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "-s", "--scenario", action="append", choices=list(SCENARIOS), help="only this scenario (repeatable)"
    )
    ap.add_argument("-c", "--case", action="append", choices=list(CASES), help="only this fault case (repeatable)")
    ap.add_argument("--cases", action="store_true", help="the fault cases only (no kill sweep)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reconciler-faults-"))
    b = Bench(work)
    started = time.monotonic()
    cases_only = args.cases or (args.case and not args.scenario)
    try:
        rows = []
        for name in [] if cases_only else args.scenario or list(SCENARIOS):
            rows += sweep(b, name)
        case_rows = [run_case(b, c) for c in (args.case or ([] if args.scenario and not args.cases else list(CASES)))]
    finally:
        b.close()
        shutil.rmtree(work, ignore_errors=True)
    bad_cases = [
        r for r in case_rows if not r["intact"] or r["outcome"].startswith(("NOT", "UNEXPECTED")) or r["leaked"] != 0
    ]
    if case_rows:
        head = [
            "case",
            "first apply",
            "function intact",
            "the next plan",
            "after the next apply",
            "new versions",
            "versions leaked",
            "drift after",
        ]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in case_rows:
            print(
                f"| {r['case']} | exit {r['first']} | {'yes' if r['intact'] else 'NO'} | {r['plan']} | {r['outcome']} | "
                f"{r['new_versions']} | {r['leaked']} | exit {r['drift']} |"
            )
        print(
            f"\n{len(case_rows)} fault cases, {len(case_rows) - len(bad_cases)} intact, converged (or rightly refused), "
            "no version leaked.\n"
        )
    if not rows:
        return 1 if bad_cases else 0
    head = [
        "scenario",
        "k",
        "killed after",
        "state file",
        "in-flight record",
        "plan notes it",
        "after the next apply",
        "new versions in all",
        "reused",
        "next apply",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(
            f"| {r['scenario']} | {r['k']} | {r['operation']} | {r['state']} | {r['recorded']} | {r['plan_note']} | {r['outcome']} | "
            f"{r['new_versions']} | {'version ' + r['reused'] if r['reused'] else '-'} | {r['seconds']:.1f} s |"
        )
    bad = [r for r in rows if r["outcome"].startswith("NOT") or r["state"] != "valid" or r["plan_note"] != "yes"]
    print(
        f"\n{len(rows)} crash points, {len(rows) - len(bad)} converged with at most one new version; "
        f"{time.monotonic() - started:.0f} s."
    )
    return 1 if bad or bad_cases else 0


if __name__ == "__main__":
    sys.exit(main())
