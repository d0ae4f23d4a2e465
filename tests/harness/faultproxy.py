"""FaultProxy: a tiny threaded HTTP reverse proxy for fault-injection tests.

Put it between the code under test (boto3, the ``reconciler`` CLI) and
``moto_server``; point ``AWS_ENDPOINT_URL`` / ``endpoint_url`` at
``proxy.endpoint``.  Every request is forwarded unchanged (method, path,
query, headers minus hop-by-hop ones, body; ``Host`` is rewritten to the
target) and the upstream response is returned.  Each connection serves one
request and is closed (``moto_server`` does the same).

    proxy = FaultProxy(moto.endpoint).start()
    env["AWS_ENDPOINT_URL"] = proxy.endpoint

    # 2nd UpdateFunctionCode gets a 500 ServiceException, once
    proxy.add_rule("UpdateFunctionCode", "fail", nth=2)
    # every GetFunction is throttled (429 TooManyRequestsException)
    proxy.add_rule("GetFunction", "throttle", times=None)
    # the change reaches moto, but the client never hears back
    proxy.add_rule("UpdateFunctionConfiguration", "cut")
    # no answer for 5 s, then the connection is closed (not forwarded)
    proxy.add_rule(lambda r: r["operation"] == "PublishVersion", "hang",
                   hang_seconds=5)
    # SIGKILL the CLI right after the 3rd mutating Lambda call was answered
    proxy.after(is_mutating, 3, lambda: (proc.kill(), proc.wait()))

    proxy.log                       # list of dicts, in arrival order
    proxy.mutating_requests()       # the mutating subset (see below)
    proxy.operations()              # just the operation names
    proxy.clear()                   # forget the log (rules stay)
    proxy.stop()

Log entries (also what ``match`` callables receive) are dicts with:
``seq`` (1-based arrival number), ``time``, ``method``, ``path`` (decoded,
no query), ``raw_path`` (as sent, with query), ``query`` (dict of lists),
``headers`` (dict), ``body`` (bytes), ``service`` (from the SigV4
credential scope, e.g. ``lambda``, ``s3``, ``ecr``, ``sts``; or ``None``),
``operation`` (see below), ``function`` (Lambda function name/ARN from the
path, or ``None``), ``mutating`` (bool), and, once handled, ``status``
(upstream or injected status, ``None`` if no response was sent),
``fault`` (``None`` | ``'fail'`` | ``'throttle'`` | ``'hang'`` | ``'cut'``
| ``'dropped'``), ``forwarded`` (did it reach upstream), ``error``.

Operation names:
* Lambda REST paths are mapped to API names (``POST /2015-03-31/functions``
  -> ``CreateFunction``, ``PUT .../code`` -> ``UpdateFunctionCode``,
  ``PUT .../configuration`` -> ``UpdateFunctionConfiguration``,
  ``POST .../versions`` -> ``PublishVersion``, aliases, tags, concurrency,
  policy, URL configs, event-source mappings, ``GET`` -> Get*/List*...).
* JSON protocols: the part after the dot in ``X-Amz-Target``
  (``AmazonEC2ContainerRegistry_V20150921.DescribeImages`` -> ``DescribeImages``).
* Query protocols (IAM, STS, CloudFormation...): ``Action`` from the query
  string or the form-encoded body.
* Simple path-style S3 calls: ``PutObject``, ``GetObject``, ``HeadObject``,
  ``CreateBucket``, ``HeadBucket``, ``ListObjectsV2``... .
* Anything else: ``"METHOD /path"``.

Mutating requests: a request is mutating when it is a Lambda request
(SigV4 service ``lambda``, or an unsigned request on a Lambda REST path)
with method POST/PUT/DELETE/PATCH -- note this includes ``Invoke`` -- OR
its operation is in ``FaultProxy.extra_mutating`` (constructor argument
``extra_mutating``; default: ``DEFAULT_EXTRA_MUTATING``, which is empty).
Reads sent as POST (ECR ``DescribeImages``, STS ``GetCallerIdentity``,
S3/IAM calls...) are therefore never mutating unless listed there.
``mutating_requests()`` lists every mutating *attempt*, including ones that
got an injected fault; pass ``forwarded_only=True`` for only those that
reached moto.

Rules (``add_rule``): ``match`` is an operation name (str), a callable
``(entry) -> bool``, or ``None`` (every request).  Each rule counts the
requests it matches (1-based); it applies to matches number
``nth .. nth+times-1`` (``times=None``: from ``nth`` on, forever).  When
several rules apply to one request, the first added wins.  Actions:
* ``'fail'``: status ``status`` (default 500), ``x-amzn-ErrorType:
  error_type`` (default ``ServiceException``), body ``{"message": "injected
  fault"}`` (or ``message``); not forwarded.  botocore retries 500s (and throttling codes);
  for a failure it does not retry use e.g. ``status=400,
  error_type="InvalidParameterValueException"``.
* ``'throttle'``: 429, ``x-amzn-ErrorType: error_type`` (default
  ``TooManyRequestsException``), body ``{"message":"Rate exceeded",
  "Type":"User"}``; not forwarded.
* ``'hang'``: wait ``hang_seconds`` (default 30; ends early on ``stop()``),
  then close without a response.  Not forwarded unless ``forward=True``.
* ``'cut'``: forward upstream, read the response, then close the
  connection without sending anything: the change happened, the client
  never heard back.
``add_rule`` returns the ``Rule``; ``rule.fired`` counts applications.

Hooks (``after(match, nth, callback)``): ``callback()`` is called exactly
once, in the handler thread, after the ``nth`` matching request was
forwarded and its response fully written and flushed to the client.  From
the moment that request is matched until the callback returns, other new
requests are HELD at the proxy; when released, a held request whose client
has meanwhile disconnected (e.g. the CLI was SIGKILLed by the callback) is
dropped without being forwarded (logged with ``fault='dropped'``).  So a
callback that kills the process *and waits for it* (``p.kill(); p.wait()``)
guarantees the Nth matching call was the last one that reached moto.
``after`` returns a ``Hook``: ``hook.fired`` (bool), ``hook.event``
(``threading.Event``), ``hook.error`` (exception raised by the callback).

``before(match, nth, callback)`` is the other way round: ``callback()`` runs
once, in the handler thread, when the ``nth`` matching request has arrived
and before it is forwarded (or a rule applies to it); the request waits for
it. E.g. a change made to a function behind the client's back right before
its next mutating call reaches the emulator.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Union

__all__ = ["FaultProxy", "Rule", "Hook", "is_mutating", "lambda_operation", "DEFAULT_EXTRA_MUTATING"]

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
}

MUTATING_METHODS = {"POST", "PUT", "DELETE", "PATCH"}

# Non-Lambda operations that count as mutating.  Empty by default: the
# reconciler's side effects that tests count are Lambda calls.  Pass
# ``extra_mutating={...}`` to FaultProxy (e.g. {"PutObject", "PutItem"}).
DEFAULT_EXTRA_MUTATING: frozenset = frozenset()


def is_mutating(entry: dict) -> bool:
    """Match helper: ``proxy.after(is_mutating, 3, cb)``."""
    return bool(entry.get("mutating"))


# ----------------------------------------------------------------------
# Lambda REST path -> operation name
_V = r"/\d{4}-\d{2}-\d{2}"
_F = r"/functions/(?P<fn>[^/]+)"
_LAMBDA_ROUTES = [
    (_V + r"/functions/?$", {"GET": "ListFunctions", "POST": "CreateFunction"}),
    (_V + _F + r"/?$", {"GET": "GetFunction", "DELETE": "DeleteFunction"}),
    (_V + _F + r"/code/?$", {"PUT": "UpdateFunctionCode"}),
    (
        _V + _F + r"/code-signing-config/?$",
        {
            "GET": "GetFunctionCodeSigningConfig",
            "PUT": "PutFunctionCodeSigningConfig",
            "DELETE": "DeleteFunctionCodeSigningConfig",
        },
    ),
    (_V + _F + r"/configuration/?$", {"GET": "GetFunctionConfiguration", "PUT": "UpdateFunctionConfiguration"}),
    (_V + _F + r"/versions/?$", {"GET": "ListVersionsByFunction", "POST": "PublishVersion"}),
    (_V + _F + r"/aliases/?$", {"GET": "ListAliases", "POST": "CreateAlias"}),
    (_V + _F + r"/aliases/[^/]+/?$", {"GET": "GetAlias", "PUT": "UpdateAlias", "DELETE": "DeleteAlias"}),
    (
        _V + _F + r"/concurrency/?$",
        {"GET": "GetFunctionConcurrency", "PUT": "PutFunctionConcurrency", "DELETE": "DeleteFunctionConcurrency"},
    ),
    (
        _V + _F + r"/provisioned-concurrency/?$",
        {
            "GET": "GetProvisionedConcurrencyConfig",
            "PUT": "PutProvisionedConcurrencyConfig",
            "DELETE": "DeleteProvisionedConcurrencyConfig",
        },
    ),
    (_V + _F + r"/policy/?$", {"GET": "GetPolicy", "POST": "AddPermission"}),
    (_V + _F + r"/policy/[^/]+/?$", {"DELETE": "RemovePermission"}),
    (_V + _F + r"/invocations/?$", {"POST": "Invoke"}),
    (_V + _F + r"/invoke-async/?$", {"POST": "InvokeAsync"}),
    (
        _V + _F + r"/event-invoke-config/?$",
        {
            "GET": "GetFunctionEventInvokeConfig",
            "PUT": "PutFunctionEventInvokeConfig",
            "POST": "UpdateFunctionEventInvokeConfig",
            "DELETE": "DeleteFunctionEventInvokeConfig",
        },
    ),
    (_V + _F + r"/event-invoke-config/list/?$", {"GET": "ListFunctionEventInvokeConfigs"}),
    (
        _V + _F + r"/url/?$",
        {
            "GET": "GetFunctionUrlConfig",
            "POST": "CreateFunctionUrlConfig",
            "PUT": "UpdateFunctionUrlConfig",
            "DELETE": "DeleteFunctionUrlConfig",
        },
    ),
    (_V + _F + r"/urls/?$", {"GET": "ListFunctionUrlConfigs"}),
    (_V + _F + r"/recursive-config/?$", {"GET": "GetFunctionRecursionConfig", "PUT": "PutFunctionRecursionConfig"}),
    (
        _V + _F + r"/runtime-management-config/?$",
        {"GET": "GetRuntimeManagementConfig", "PUT": "PutRuntimeManagementConfig"},
    ),
    (_V + r"/tags/(?P<fn>.+)$", {"GET": "ListTags", "POST": "TagResource", "DELETE": "UntagResource"}),
    (_V + r"/event-source-mappings/?$", {"GET": "ListEventSourceMappings", "POST": "CreateEventSourceMapping"}),
    (
        _V + r"/event-source-mappings/[^/]+/?$",
        {"GET": "GetEventSourceMapping", "PUT": "UpdateEventSourceMapping", "DELETE": "DeleteEventSourceMapping"},
    ),
    (_V + r"/layers/?$", {"GET": "ListLayers"}),
    (_V + r"/layers/[^/]+/versions/?$", {"GET": "ListLayerVersions", "POST": "PublishLayerVersion"}),
    (_V + r"/layers/[^/]+/versions/[^/]+/?$", {"GET": "GetLayerVersion", "DELETE": "DeleteLayerVersion"}),
    (_V + r"/account-settings/?$", {"GET": "GetAccountSettings"}),
]
_LAMBDA_ROUTES = [(re.compile(p), ops) for p, ops in _LAMBDA_ROUTES]
_LAMBDA_PATH = re.compile(_V + r"/(functions|tags|event-source-mappings|layers|account-settings)(/|$)")


def lambda_operation(method: str, path: str, query: Optional[dict] = None):
    """Return ``(operation, function)`` for a Lambda REST call, or
    ``(None, None)`` if the path is not a known Lambda route.  ``path`` is
    the decoded path without the query string."""
    method = method.upper()
    query = query or {}
    for rx, ops in _LAMBDA_ROUTES:
        m = rx.match(path)
        if not m:
            continue
        op = ops.get(method)
        if op is None:
            return f"{method} {path}", m.groupdict().get("fn")
        if op == "GetProvisionedConcurrencyConfig" and "List" in query:
            op = "ListProvisionedConcurrencyConfigs"
        return op, m.groupdict().get("fn")
    return None, None


_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")


def _s3_operation(method: str, path: str, query: dict, headers: dict):
    if query:
        # sub-resource calls (?versioning, ?attributes, ?list-type=2...)
        if "list-type" in query and method == "GET":
            return "ListObjectsV2"
        if "attributes" in query and method == "GET":
            return "GetObjectAttributes"
        if "versions" in query and method == "GET":
            return "ListObjectVersions"
        if "versioning" in query:
            return {"GET": "GetBucketVersioning", "PUT": "PutBucketVersioning"}.get(method)
        if not set(query) <= {"versionId"}:
            return None
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "ListBuckets" if method == "GET" else None
    if len(parts) == 1:
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket", "GET": "ListObjects"}.get(method)
    if method == "PUT" and "x-amz-copy-source" in headers:
        return "CopyObject"
    return {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method)


def classify(method: str, raw_path: str, headers: dict, body: bytes, extra_mutating=DEFAULT_EXTRA_MUTATING) -> dict:
    """Parse one request into the log-entry fields (no I/O)."""
    method = method.upper()
    split = urllib.parse.urlsplit(raw_path)
    path = urllib.parse.unquote(split.path)
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    lower = {k.lower(): v for k, v in headers.items()}
    m = _SCOPE.search(lower.get("authorization", ""))
    service = m.group(1) if m else None
    target = lower.get("x-amz-target")

    operation = function = None
    is_lambda = service == "lambda" or (service is None and bool(_LAMBDA_PATH.match(path)))
    if is_lambda:
        operation, function = lambda_operation(method, path, query)
    if operation is None and target:
        operation = target.rsplit(".", 1)[-1]
    if operation is None:
        action = query.get("Action", [None])[0]
        if action is None and body and "x-www-form-urlencoded" in lower.get("content-type", ""):
            try:
                form = urllib.parse.parse_qs(body.decode("utf-8"))
                action = form.get("Action", [None])[0]
            except Exception:
                action = None
        operation = action
    if operation is None and service == "s3":
        operation = _s3_operation(method, path, query, lower)
    if operation is None:
        operation = f"{method} {path}"
    mutating = (is_lambda and method in MUTATING_METHODS) or operation in extra_mutating
    return {
        "method": method,
        "path": path,
        "raw_path": raw_path,
        "query": query,
        "service": service,
        "target": target,
        "operation": operation,
        "function": function,
        "mutating": bool(mutating),
    }


# ----------------------------------------------------------------------
Match = Union[None, str, Callable[[dict], bool]]


def _matches(match: Match, entry: dict) -> bool:
    if match is None:
        return True
    if isinstance(match, str):
        return entry["operation"] == match
    return bool(match(entry))


class Rule:
    ACTIONS = ("fail", "throttle", "hang", "cut")

    def __init__(
        self,
        match: Match,
        action: str,
        nth: int = 1,
        times: Optional[int] = 1,
        status: Optional[int] = None,
        hang_seconds: float = 30.0,
        forward: bool = False,
        error_type: Optional[str] = None,
        message: Optional[str] = None,
    ):
        if action not in self.ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {self.ACTIONS}")
        if nth < 1:
            raise ValueError("nth is 1-based")
        self.match, self.action, self.nth, self.times = match, action, nth, times
        self.status = status
        self.error_type = error_type
        self.hang_seconds = hang_seconds
        self.forward = forward
        # 'fail': the error message in the body (default "injected fault"), e.g. an AWS
        # error that echoes the request
        self.body = json.dumps({"message": message}).encode() if message is not None else None
        self.matched = 0  # requests matched so far
        self.fired = 0  # requests this rule was applied to

    def _count(self, entry) -> bool:
        """Count a matching request; True if the rule applies to it."""
        if not _matches(self.match, entry):
            return False
        self.matched += 1
        k = self.matched
        return k >= self.nth and (self.times is None or k < self.nth + self.times)

    def __repr__(self):
        return (
            f"<Rule {self.action} match={self.match!r} nth={self.nth} "
            f"times={self.times} matched={self.matched} fired={self.fired}>"
        )


class Hook:
    def __init__(self, match: Match, nth: int, callback: Callable[[], object]):
        if nth < 1:
            raise ValueError("nth is 1-based")
        self.match, self.nth, self.callback = match, nth, callback
        self.matched = 0
        self.fired = False
        self.event = threading.Event()
        self.error: Optional[BaseException] = None
        self.entry: Optional[dict] = None

    def _count(self, entry) -> bool:
        if self.fired or not _matches(self.match, entry):
            return False
        self.matched += 1
        return self.matched == self.nth

    def __repr__(self):
        return f"<Hook match={self.match!r} nth={self.nth} fired={self.fired}>"


# ----------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # needed for Expect: 100-continue
    server_version = "FaultProxy"
    proxy: "FaultProxy"  # set on the subclass made per proxy

    def log_message(self, fmt, *args):  # quiet
        if self.proxy.verbose:
            sys.stderr.write("faultproxy: " + (fmt % args) + "\n")

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _client_gone(self) -> bool:
        try:
            r, _, _ = select.select([self.connection], [], [], 0.02)
            if not r:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _send(self, status: int, headers: list, body: bytes, head: bool = False):
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
        self.wfile.flush()

    def _handle(self):
        p = self.proxy
        self.close_connection = True
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items()}
        info = classify(self.command, self.path, headers, body, p.extra_mutating)

        held = p._wait_gate()
        entry = dict(
            info,
            seq=None,
            time=time.time(),
            headers=headers,
            body=body,
            status=None,
            fault=None,
            forwarded=False,
            error=None,
        )
        rule, hooks = p._register(entry)
        for h in p._before(entry):
            self._run_hooks([h], entry, release=False)
        if held and self._client_gone():
            entry["fault"] = "dropped"
            entry["error"] = "client disconnected while held"
            self._release_hooks(hooks)
            return
        try:
            self._serve(entry, rule, body)
        finally:
            self._run_hooks(hooks, entry)

    def _run_hooks(self, hooks, entry, release=True):
        p = self.proxy
        try:
            for h in hooks:
                try:
                    h.callback()
                except BaseException as e:  # noqa: BLE001 - report, don't die
                    h.error = e
                    sys.stderr.write(f"faultproxy: hook {h!r} raised {e!r}\n")
                finally:
                    h.fired = True
                    h.entry = entry
                    h.event.set()
        finally:
            if release:
                p._release(len(hooks))

    def _release_hooks(self, hooks):
        # the request was dropped: the hook did not see its request served,
        # so put the count back.
        with self.proxy._lock:
            for h in hooks:
                h.matched -= 1
        self.proxy._release(len(hooks))

    def _serve(self, entry, rule, body):
        p = self.proxy
        head = entry["method"] == "HEAD"
        if rule is not None:
            rule.fired += 1
            entry["fault"] = rule.action
            if rule.action == "fail":
                status = rule.status or 500
                entry["status"] = status
                self._send(
                    status,
                    [
                        ("Content-Type", "application/json"),
                        ("x-amzn-ErrorType", rule.error_type or "ServiceException"),
                        ("x-amzn-RequestId", "faultproxy-%d" % entry["seq"]),
                        ("Content-Length", str(len(rule.body or p.FAIL_BODY))),
                    ],
                    rule.body or p.FAIL_BODY,
                    head,
                )
                return
            if rule.action == "throttle":
                status = rule.status or 429
                entry["status"] = status
                self._send(
                    status,
                    [
                        ("Content-Type", "application/json"),
                        ("x-amzn-ErrorType", rule.error_type or "TooManyRequestsException"),
                        ("x-amzn-RequestId", "faultproxy-%d" % entry["seq"]),
                        ("Content-Length", str(len(p.THROTTLE_BODY))),
                    ],
                    p.THROTTLE_BODY,
                    head,
                )
                return
            if rule.action == "hang":
                if rule.forward:
                    self._forward(entry, body)
                p._stopping.wait(rule.hang_seconds)
                return  # close without a response
        status, rheaders, rbody = self._forward(entry, body)
        if status is None:
            err = json.dumps({"message": f"faultproxy upstream error: {entry['error']}"}).encode()
            entry["status"] = 502
            self._send(502, [("Content-Type", "application/json"), ("Content-Length", str(len(err)))], err, head)
            return
        if rule is not None and rule.action == "cut":
            return  # the change happened; the client hears nothing
        out = []
        for k, v in rheaders:
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in ("server", "date"):
                continue
            if lk == "content-length" and not head:
                continue
            out.append((k, v))
        if not head:
            out.append(("Content-Length", str(len(rbody))))
        entry["status"] = status
        self._send(status, out, rbody, head)

    def _forward(self, entry, body):
        p = self.proxy
        fwd = {}
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in ("host", "expect", "content-length"):
                continue
            fwd[k] = v
        fwd["Host"] = p.target_netloc
        if body or self.command in ("POST", "PUT", "PATCH"):
            fwd["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(p.target_host, p.target_port, timeout=p.upstream_timeout)
        try:
            conn.request(self.command, self.path, body=body or None, headers=fwd)
            resp = conn.getresponse()
            rbody = resp.read()
            entry["forwarded"] = True
            return resp.status, resp.getheaders(), rbody
        except Exception as e:  # noqa: BLE001
            entry["error"] = repr(e)
            return None, [], b""
        finally:
            conn.close()

    def _dispatch(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


class FaultProxy:
    FAIL_BODY = json.dumps({"message": "injected fault"}).encode()
    THROTTLE_BODY = json.dumps({"message": "Rate exceeded", "Type": "User"}).encode()

    def __init__(
        self,
        target: str,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_mutating=DEFAULT_EXTRA_MUTATING,
        upstream_timeout: float = 60.0,
        verbose: bool = False,
    ):
        u = urllib.parse.urlsplit(target)
        if u.scheme != "http":
            raise ValueError("FaultProxy forwards to http:// targets only")
        self.target = target.rstrip("/")
        self.target_host = u.hostname
        self.target_port = u.port or 80
        self.target_netloc = u.netloc
        self.host, self.port = host, port
        self.extra_mutating = frozenset(extra_mutating)
        self.upstream_timeout = upstream_timeout
        self.verbose = verbose
        self.log: list[dict] = []
        self.rules: list[Rule] = []
        self.hooks: list[Hook] = []
        self.before_hooks: list[Hook] = []
        self._lock = threading.Lock()
        self._gate = threading.Condition()
        self._holds = 0
        self._seq = 0
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.endpoint: Optional[str] = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "FaultProxy":
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._stopping.clear()
        self._server = _Server((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._gate:
            self._holds = 0
            self._gate.notify_all()
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- configuration ---------------------------------------------------
    def add_rule(
        self,
        match: Match,
        action: str = "fail",
        nth: int = 1,
        times: Optional[int] = 1,
        status: Optional[int] = None,
        hang_seconds: float = 30.0,
        forward: bool = False,
        error_type: Optional[str] = None,
        message: Optional[str] = None,
    ) -> Rule:
        rule = Rule(match, action, nth, times, status, hang_seconds, forward, error_type, message)
        with self._lock:
            self.rules.append(rule)
        return rule

    def after(self, match: Match, nth: int, callback: Callable[[], object]) -> Hook:
        hook = Hook(match, nth, callback)
        with self._lock:
            self.hooks.append(hook)
        return hook

    def before(self, match: Match, nth: int, callback: Callable[[], object]) -> Hook:
        hook = Hook(match, nth, callback)
        with self._lock:
            self.before_hooks.append(hook)
        return hook

    def _before(self, entry: dict) -> list:
        with self._lock:
            return [h for h in self.before_hooks if h._count(entry)]

    def clear(self, rules: bool = False) -> None:
        """Forget the log; with ``rules=True`` also drop rules and hooks."""
        with self._lock:
            self.log.clear()
            if rules:
                self.rules.clear()
                self.hooks.clear()
                self.before_hooks.clear()

    def clear_rules(self) -> None:
        with self._lock:
            self.rules.clear()
            self.hooks.clear()
            self.before_hooks.clear()

    # -- queries ---------------------------------------------------------
    def entries(self) -> list[dict]:
        with self._lock:
            return list(self.log)

    def operations(self, service: Optional[str] = None) -> list[str]:
        return [e["operation"] for e in self.entries() if service is None or e["service"] == service]

    def mutating_requests(self, forwarded_only: bool = False) -> list[dict]:
        return [e for e in self.entries() if e["mutating"] and (e["forwarded"] or not forwarded_only)]

    def count(self, operation: str) -> int:
        return sum(1 for e in self.entries() if e["operation"] == operation)

    # -- internals -------------------------------------------------------
    def _wait_gate(self) -> bool:
        with self._gate:
            if self._holds <= 0:
                return False
            while self._holds > 0 and not self._stopping.is_set():
                self._gate.wait(0.1)
            return True

    def _release(self, n: int) -> None:
        if n:
            with self._gate:
                self._holds = max(0, self._holds - n)
                self._gate.notify_all()

    def _register(self, entry: dict):
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self.log.append(entry)
            chosen = None
            for r in self.rules:
                if r._count(entry) and chosen is None:
                    chosen = r
            fire = [h for h in self.hooks if h._count(entry)]
        if fire:
            with self._gate:
                self._holds += len(fire)
        return chosen, fire

    def __repr__(self):
        return f"<FaultProxy {self.endpoint} -> {self.target}>"
