"""Run the real ``moto_server`` as a subprocess for end-to-end tests.

Usage::

    server = MotoServer()          # starts and waits until it answers
    server.endpoint                # "http://127.0.0.1:PORT"
    server.reset()                 # POST /moto-api/reset (wipe all state)
    server.stop()

Only the standard library is used.  The server's environment sets
``MOTO_LAMBDA_STUB_ECR=false`` (so image functions get the ECR digest as
``CodeSha256``) and removes ``MOTO_ACCOUNT_ID`` (account 123456789012).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM a still-running server, SIGKILL it if it has not exited after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class MotoServer:
    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 15.0,
        extra_env: dict | None = None,
        start: bool = True,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._log = None
        if start:
            self.start()

    # ------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("MOTO_ACCOUNT_ID", None)
        # the server must never talk to a configured endpoint / real AWS
        env.pop("AWS_ENDPOINT_URL", None)
        env["MOTO_LAMBDA_STUB_ECR"] = "false"
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        env.update(self.extra_env)
        return env

    def start(self) -> "MotoServer":
        if self.proc is not None:
            return self
        # server output goes to a temp file (a pipe could fill up and block)
        self._log = tempfile.TemporaryFile(prefix="moto_server-")
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, env=self._env(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2) as r:
                    r.read()
                    if r.status < 500:
                        return self
            except urllib.error.HTTPError as e:  # it answered: it is up
                if e.code < 500:
                    return self
                last_err = e
            except Exception as e:  # not listening yet
                last_err = e
            time.sleep(0.1)
        out = self.output()
        self.stop()
        raise RuntimeError(
            f"moto_server did not answer on {self.endpoint} within {self.startup_timeout}s ({last_err!r}):\n{out}"
        )

    def output(self) -> str:
        """Everything the server printed so far (for debugging)."""
        if self._log is None:
            return ""
        try:
            pos = self._log.tell()
            self._log.seek(0)
            data = self._log.read()
            self._log.seek(pos)
            return data.decode("utf-8", "replace")
        except Exception:
            return ""

    def reset(self) -> None:
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)
        if self._log is not None:
            try:
                self._log.close()
            except Exception:
                pass
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<MotoServer {self.endpoint} running={self.is_running()}>"
