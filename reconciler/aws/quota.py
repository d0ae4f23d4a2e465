"""Pacing Lambda calls within Lambda's API quotas, shared by every client and thread.

Lambda limits each account and region to 15 requests per second for all control-plane
calls together (ListFunctions, ListAliases, GetAlias, GetFunctionConfiguration, updates,
PublishVersion, aliases, tags, ...), 100 per second for GetFunction and 15 per second for
GetPolicy; beyond them it answers HTTP 429 TooManyRequestsException. These quotas cannot
be raised, and other jobs of the account spend the same budget.

Every Lambda request this process sends goes through the Limiter of its quota class for
its (endpoint, region, credentials) -- one Limiter per class, shared by every client and
thread (a module-level registry) -- before it is sent (botocore's `before-send` event),
retries included. On AWS's own endpoints (`*.amazonaws.com`, `.com.cn`, `*.api.aws`) every request takes a token
from the start, at the documented rate. On any other endpoint (AWS_ENDPOINT_URL: an
emulator, a proxy) a Limiter lets requests through unpaced until the endpoint first
throttles one of its class, so that an endpoint without quotas is never slowed down; from
then on every request takes a token there too. The rate starts at the documented one, with a quarter of a second of burst
(Lambda's bucket holds one second: the rest is slack for requests that reach it closer
together than they were sent). Each further 429 lowers the rate with CUBIC (botocore's
`CubicCalculator`: x0.7, at most once a second, against the rate really sent as botocore's
`RateClocker` measures it), and answers that are not throttled probe back up, never above
the documented rate.
A throttled call is retried (`needs-retry`) until THROTTLE_TIMEOUT seconds after its first
throttle, however many attempts that takes; other transient errors keep botocore's
standard retry mode (8 retries).

Why not botocore's `adaptive` retry mode alone: its `ClientRateLimiter` is per client (one
apply uses several clients, each unaware of the others' calls), after its first throttle
it restarts from 0.7x the rate it measured (near zero early in a run), it knows no quota classes (GetFunction's 100/s would be paced with the
15/s of the rest), and its `TokenBucket` has no priority. The standard mode's retries are
bounded by a count (8 retries) and by a per-client retry quota (about 100 throttled retries), so a
fleet release under the quota gives up. What is written here is only what is missing: the
shared registry, the classes, the starting rate, the priority for rollbacks (`urgent()`:
a waiting rollback call gets the next token before any new work) and the time bound.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from botocore.retries.adaptive import RateClocker
from botocore.retries.bucket import Clock
from botocore.retries.throttling import CubicCalculator

# requests per second, per account and region (Lambda quotas; they cannot be raised)
QUOTAS = {"control": 15.0, "get-function": 100.0, "get-policy": 15.0}
CLASS_NAMES = {"control": "control plane", "get-function": "GetFunction", "get-policy": "GetPolicy"}
# data-plane calls: not in these quotas
UNPACED = frozenset({"Invoke", "InvokeAsync", "InvokeWithResponseStream"})
# how long one call keeps retrying throttles (seconds since its first throttle)
THROTTLE_TIMEOUT_DEFAULT = 900.0
THROTTLE_TIMEOUT_ENV = "RECONCILER_THROTTLE_TIMEOUT"
MIN_RATE = 1.0
# at most one slow-down per this many seconds (Lambda's bucket holds one second): the
# throttles that follow a slow-down mostly answer requests sent before it
CUT_INTERVAL = 1.0
# the burst a Limiter allows, in seconds of its rate: a quarter of Lambda's one second, so
# that Lambda's bucket keeps three quarters of a second of slack for requests that reach it
# closer together than they were sent (threads, connections, the network); sending at the
# full rate with no slack, such jitter alone would be throttled
BURST_SECONDS = 0.25


def throttle_timeout(environ: dict | None = None) -> float:
    """RECONCILER_THROTTLE_TIMEOUT (seconds), else the default; an unusable value is ignored."""
    raw = (os.environ if environ is None else environ).get(THROTTLE_TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return THROTTLE_TIMEOUT_DEFAULT
    return value if value >= 0 else THROTTLE_TIMEOUT_DEFAULT


def quota_class(service: str, operation: str) -> str | None:
    """The quota a Lambda call spends: 'get-function', 'get-policy', 'control', or None
    (another service, or a data-plane call)."""
    if service != "lambda" or operation in UNPACED:
        return None
    if operation == "GetFunction":
        return "get-function"
    if operation == "GetPolicy":
        return "get-policy"
    return "control"


def floor_seconds(calls: int, rate: float) -> float:
    """The least time `calls` requests take through a bucket of `rate`/s with one second
    of burst (full at the start)."""
    return max(0.0, (calls - rate) / rate)


_local = threading.local()


@contextmanager
def urgent() -> Iterator[None]:
    """Calls made in this block (this thread) get capacity ahead of other work: rollbacks."""
    before = getattr(_local, "urgent", False)
    _local.urgent = True
    try:
        yield
    finally:
        _local.urgent = before


def is_urgent() -> bool:
    return getattr(_local, "urgent", False)


class Limiter:
    """A token bucket of one quota class: `rate` tokens a second, at most BURST_SECONDS of
    them kept (at least one), starting full. acquire() blocks until a token is free; urgent
    callers are served before any other waiting caller."""

    def __init__(self, quota: float, clock: Clock | None = None, armed: bool = False) -> None:
        self.quota = float(quota)
        self.rate = float(quota)
        self.armed = armed  # pacing: from the start on AWS, else from the first throttle on
        self._clock = clock or Clock()
        self._tokens = self._capacity()
        self._at = self._clock.current_time()
        self._cond = threading.Condition()
        self._urgent_waiting = 0
        self._cubic: CubicCalculator | None = None
        self._rate_clocker = RateClocker(self._clock)
        self._last_cut = float("-inf")

    def _capacity(self) -> float:
        # at least one token can be kept, whatever the rate (else below 4/s none would be)
        return max(1.0, self.rate * BURST_SECONDS)

    def _refill(self, now: float) -> None:
        self._tokens = min(self._capacity(), self._tokens + (now - self._at) * self.rate)
        self._at = now

    def acquire(self, urgent_: bool = False) -> tuple[float, float]:
        """Take one token; returns (seconds waited, send time)."""
        start = self._clock.current_time()
        if not self.armed:
            self._rate_clocker.record()
            return 0.0, start
        with self._cond:
            if urgent_:
                self._urgent_waiting += 1
            try:
                while True:
                    now = self._clock.current_time()
                    self._refill(now)
                    if self._tokens >= 1 and (urgent_ or self._urgent_waiting == 0):
                        self._tokens -= 1
                        break
                    wait = (1 - self._tokens) / self.rate if self._tokens < 1 else 0.01
                    self._cond.wait(max(wait, 0.001))
            finally:
                if urgent_:
                    self._urgent_waiting -= 1
                    self._cond.notify_all()
        self._rate_clocker.record()
        return now - start, now

    def throttled(self, sent_at: float) -> None:
        """Lambda refused a request sent at `sent_at`: slow down, at most once a second, and
        not for a request sent before the last slow-down (sent at the old rate: no news)."""
        with self._cond:
            now = self._clock.current_time()
            if not self.armed:
                # the first throttle: pace from now on at the documented rate, from an
                # empty bucket (Lambda's is empty too)
                self.armed = True
                self._tokens, self._at, self._last_cut = 0.0, now, now
                self._cond.notify_all()
                return
            if sent_at < self._last_cut or now - self._last_cut < CUT_INTERVAL:
                return
            measured = self._rate_clocker.measured_rate
            sending = min(measured, self.rate) if measured > 0 else self.rate
            if self._cubic is None:
                self._cubic = CubicCalculator(starting_max_rate=self.rate, start_time=now)
            self._set_rate(self._cubic.error_received(sending, now), now)
            self._last_cut = now

    def succeeded(self) -> None:
        """An answer that was not a throttle: after a slow-down, probe back up."""
        if self._cubic is None or self.rate >= self.quota:
            return
        with self._cond:
            now = self._clock.current_time()
            self._set_rate(self._cubic.success_received(now), now)

    def _set_rate(self, rate: float, now: float) -> None:
        self._refill(now)
        self.rate = max(MIN_RATE, min(self.quota, rate))
        self._tokens = min(self._tokens, self._capacity())
        self._cond.notify_all()


_registry: dict[tuple, Limiter] = {}
_registry_lock = threading.Lock()


def is_aws_endpoint(endpoint_url: str | None) -> bool:
    """Whether requests go to AWS's own Lambda endpoint (where the documented quotas hold),
    not to an emulator, a proxy or another endpoint given with AWS_ENDPOINT_URL."""
    host = urlsplit(endpoint_url or "").hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws"))


def limiter(key: tuple, cls: str) -> Limiter:
    """The process-wide Limiter of quota class `cls` for `key` (endpoint, region, credentials):
    paced at the documented rate from the first request on AWS's own endpoint, from the
    first throttle elsewhere."""
    k = (*key, cls)
    lim = _registry.get(k)
    if lim is None:
        with _registry_lock:
            lim = _registry.setdefault(k, Limiter(QUOTAS[cls], armed=is_aws_endpoint(key[0] if key else None)))
    return lim


class QuotaStats:
    """Per quota class: requests sent (retries included), throttles received, seconds spent
    waiting for capacity (summed over threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self.waited: dict[str, float] = {}

    def add(self, cls: str, sent: int = 0, throttled: int = 0, waited: float = 0.0) -> None:
        with self._lock:
            self.sent[cls] = self.sent.get(cls, 0) + sent
            self.throttled[cls] = self.throttled.get(cls, 0) + throttled
            self.waited[cls] = self.waited.get(cls, 0.0) + waited

    def to_dict(self) -> dict:
        """{class: {rate, calls, throttled, waited_s, floor_s}} and the overall floor: the
        classes are separate buckets, so the floor is the slowest class's."""
        with self._lock:
            out = {}
            for cls in sorted(self.sent):
                n = self.sent[cls]
                out[cls] = {
                    "rate": QUOTAS[cls],
                    "calls": n,
                    "throttled": self.throttled.get(cls, 0),
                    "waited_s": round(self.waited.get(cls, 0.0), 3),
                    "floor_s": round(floor_seconds(n, QUOTAS[cls]), 3),
                }
            return out


def install(client, stats: QuotaStats, key: tuple, timeout: float | None = None) -> None:
    """Pace a Lambda client's requests with the shared Limiters and retry its throttles
    until `timeout` seconds after a call's first one. Other errors go to botocore's
    standard retry handler, which counts only the attempts that were not throttled."""
    from botocore.retries import standard

    detector = standard.ThrottlingErrorDetector(standard.RetryEventAdapter())
    limit = throttle_timeout() if timeout is None else timeout
    service = client.meta.service_model.service_id.hyphenize()
    sends = threading.local()
    # botocore's standard handler, taken out of the event chain (it would count throttles
    # as attempts and spend its retry quota on them) and called from here for the rest
    events = client.meta.events
    events.unregister(f"needs-retry.{service}", unique_id=f"retry-config-{service}")
    fallback = standard.register_retry_handler(
        client, max_attempts=client.meta.config.retries.get("total_max_attempts")
    )
    events.unregister(f"needs-retry.{service}", unique_id=f"retry-config-{service}")

    def before_send(event_name: str = "", **_kwargs) -> None:
        op = event_name.rsplit(".", 1)[-1]
        cls = quota_class(service, op)
        if cls is None:
            return
        waited, sent_at = limiter(key, cls).acquire(is_urgent())
        sends.last = sent_at
        stats.add(cls, sent=1, waited=waited)

    def needs_retry(operation=None, request_dict=None, attempts=1, **kwargs):
        context = request_dict.setdefault("context", {})
        cls = quota_class(service, operation.name) if operation is not None else None
        throttle = detector.is_throttling_error(
            operation=operation, request_dict=request_dict, attempts=attempts, **kwargs
        )
        if cls is None or not throttle:
            if cls is not None and kwargs.get("response") is not None:
                limiter(key, cls).succeeded()
            return fallback.needs_retry(
                operation=operation,
                request_dict=request_dict,
                attempts=attempts - context.get("reconciler_throttles", 0),
                **kwargs,
            )
        lim = limiter(key, cls)
        stats.add(cls, throttled=1)
        lim.throttled(getattr(sends, "last", 0.0))
        context["reconciler_throttles"] = context.get("reconciler_throttles", 0) + 1
        first = context.setdefault("reconciler_first_throttle", time.monotonic())
        if time.monotonic() - first >= limit:
            return None  # give up: the throttle is the call's answer
        # the retry takes a token like any request; a little jitter spreads the threads
        return random.uniform(0.0, min(0.5, 1.0 / lim.rate))

    events.register(f"before-send.{service}", before_send, unique_id=f"reconciler-pace-{service}")
    events.register(f"needs-retry.{service}", needs_retry, unique_id=f"reconciler-quota-{service}")
