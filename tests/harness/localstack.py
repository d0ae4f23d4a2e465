"""Run LocalStack's open-source core as a second Lambda emulator for end-to-end tests.

LocalStack models what moto does not: a created function is `Pending` before it is
`Active`, an update is `InProgress` before `Successful`, every change gives a new
`RevisionId` and a stale one is refused (`PreconditionFailedException`), a change while
an update is in progress is refused (`ResourceConflictException`).

It runs in host mode (no Docker) from its own virtual environment (Python >= 3.13 for
localstack-core 2026.3.0), found at ``RECONCILER_TEST_LOCALSTACK_PYTHON`` or at
``.localstack-venv/bin/python`` in the repository. With the ``prepare-only`` runtime
executor of ``tests/localstack_plugin`` (installed into that environment) functions
become Active without Docker; Invoke cannot work. Tests are isolated by account: a
12-digit access key id is the account LocalStack uses (``new_account()``).

    server = LocalStack.find()          # None when no LocalStack is installed
    server.start(); server.endpoint; server.new_account(); server.stop()
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.motoserver import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_ENV = "RECONCILER_TEST_LOCALSTACK_PYTHON"
CONVENTIONAL = REPO_ROOT / ".localstack-venv" / "bin" / "python"
SERVICES = "lambda,s3,iam,sts,cloudwatch,logs,secretsmanager,ssm"
_accounts = itertools.count(100_000_000_000 + int(time.time()) % 10_000_000 * 1000)


def localstack_python() -> str | None:
    """The python of a virtual environment with LocalStack and the executor plugin."""
    given = os.environ.get(PYTHON_ENV)
    if given:
        return given
    return str(CONVENTIONAL) if CONVENTIONAL.exists() else None


class LocalStack:
    def __init__(self, python: str, host: str = "127.0.0.1", startup_timeout: float = 60.0):
        self.python = python
        self.host = host
        self.port = free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._dir: str | None = None
        self._log = None

    @classmethod
    def find(cls) -> LocalStack | None:
        python = localstack_python()
        return cls(python) if python else None

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_", "PYTHON"))}
        env.update(
            {
                "GATEWAY_LISTEN": f"{self.host}:{self.port}",
                "SERVICES": SERVICES,
                "OVERRIDE_IN_DOCKER": "0",  # in a container LocalStack would otherwise wipe its default folder
                "LAMBDA_RUNTIME_EXECUTOR": "prepare-only",
                "DNS_ADDRESS": "0",
                "SKIP_SSL_CERT_DOWNLOAD": "1",
                "DISABLE_EVENTS": "1",
                "FILESYSTEM_ROOT": os.path.join(self._dir, "fs"),
                "LOCALSTACK_VOLUME_DIR": os.path.join(self._dir, "volume"),
                "TMPDIR": self._dir,
            }
        )
        return env

    def start(self) -> LocalStack:
        if self.proc is not None:
            return self
        self._dir = tempfile.mkdtemp(prefix="localstack-")
        self._log = open(os.path.join(self._dir, "localstack.log"), "wb")
        self.proc = subprocess.Popen(
            [self.python, "-m", "localstack.runtime.main"],
            env=self._env(),
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LocalStack exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/_localstack/init/ready", timeout=2) as r:
                    if b'"completed": true' in r.read():
                        return self
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        out = self.output()
        self.stop()
        raise RuntimeError(f"LocalStack did not start on {self.endpoint} within {self.startup_timeout}s:\n{out}")

    def new_account(self) -> str:
        """A fresh 12-digit account (as access key id): nothing of earlier tests is in it."""
        return f"{next(_accounts) % 10**12:012d}"

    def output(self) -> str:
        if not self._dir:
            return ""
        try:
            return Path(self._dir, "localstack.log").read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, grace=3)  # its state is thrown away: no need for a long shutdown
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def on_both_emulators(test):
    """Run a test on moto and on LocalStack (`emulator` fixture, indirect)."""
    import pytest

    return pytest.mark.parametrize("emulator", ["moto", "localstack"], indirect=True)(test)
