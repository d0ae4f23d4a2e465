"""QuotaProxy: a FaultProxy that enforces Lambda's API request quotas.

Lambda allows, per account and region, 15 requests per second for all control-plane
calls together, 100 per second for GetFunction and 15 per second for GetPolicy (token
buckets with one second of burst). A request beyond them is answered as Lambda does:
HTTP 429, ``x-amzn-ErrorType: TooManyRequestsException``, body
``{"message": "Rate exceeded", "Type": "User"}`` (botocore raises it as
``TooManyRequestsException``). It is not forwarded.

    proxy = QuotaProxy(moto.endpoint).start()             # the documented quotas
    proxy = QuotaProxy(moto.endpoint, rates={"control": 4, "get-function": 20, "get-policy": 4})
    proxy = QuotaProxy(moto.endpoint, second_consumer=0.5)  # another job takes half
    proxy.calls(), proxy.throttles()                       # per class
    proxy.floor()                                          # seconds the accepted calls need

The classes come from the Lambda REST path and method (FaultProxy's classification):
``GET /2015-03-31/functions/{name}`` is GetFunction, ``GET .../policy`` GetPolicy,
Invoke is not limited, every other Lambda call (functions, aliases, versions, tags,
configuration, concurrency, ...) is control plane. Other services pass unlimited.

``second_consumer=f`` starts a thread per class that takes a token whenever one is free,
up to ``f`` of the class's rate: another job of the same account spending that share.
FaultProxy rules and hooks still work (a rule added later applies only to requests the
quota let through).
"""

from __future__ import annotations

import threading
import time

from harness.faultproxy import FaultProxy

__all__ = ["LAMBDA_QUOTAS", "QuotaProxy", "quota_class"]

LAMBDA_QUOTAS = {"control": 15.0, "get-function": 100.0, "get-policy": 15.0}
_DATA_PLANE = {"Invoke", "InvokeAsync", "InvokeWithResponseStream"}


def quota_class(entry: dict) -> str | None:
    """The quota a logged request spends, or None (not Lambda, or data plane)."""
    if entry.get("service") not in ("lambda", None) or not entry.get("path", "").startswith("/20"):
        return None
    op = entry.get("operation") or ""
    if op in _DATA_PLANE or " " in op:
        return None
    if op == "GetFunction":
        return "get-function"
    if op == "GetPolicy":
        return "get-policy"
    return "control"


class _Bucket:
    """rate tokens a second, at most rate kept (one second of burst), starting full."""

    def __init__(self, rate: float):
        self.rate = float(rate)
        self.tokens = self.rate
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


class QuotaProxy(FaultProxy):
    def __init__(self, target: str, rates: dict | None = None, second_consumer: float = 0.0, **kwargs):
        super().__init__(target, **kwargs)
        self.rates = {**LAMBDA_QUOTAS, **(rates or {})}
        self.buckets = {cls: _Bucket(rate) for cls, rate in self.rates.items()}
        self.second_consumer = float(second_consumer)
        self._counts_lock = threading.Lock()
        self._accepted: dict[str, int] = {}
        self._throttled: dict[str, int] = {}
        self._other: dict[str, int] = {}
        self._consumers: list[threading.Thread] = []
        self.add_rule(self._over_quota, "throttle", times=None)

    def _over_quota(self, entry: dict) -> bool:
        cls = quota_class(entry)
        entry["quota_class"] = cls
        if cls is None:
            return False
        ok = self.buckets[cls].take()
        with self._counts_lock:
            d = self._accepted if ok else self._throttled
            d[cls] = d.get(cls, 0) + 1
        return not ok

    def start(self) -> QuotaProxy:
        super().start()
        if self.second_consumer > 0 and not self._consumers:
            for cls in self.buckets:
                t = threading.Thread(target=self._consume, args=(cls,), name=f"quota-consumer-{cls}", daemon=True)
                t.start()
                self._consumers.append(t)
        return self

    def _consume(self, cls: str) -> None:
        bucket = self.buckets[cls]
        interval = 1.0 / (bucket.rate * self.second_consumer)
        nxt = time.monotonic()
        while not self._stopping.is_set():
            if bucket.take():
                with self._counts_lock:
                    self._other[cls] = self._other.get(cls, 0) + 1
                nxt += interval
                self._stopping.wait(max(0.0, nxt - time.monotonic()))
            else:
                self._stopping.wait(0.002)

    def stop(self) -> None:
        super().stop()
        for t in self._consumers:
            t.join(timeout=2)
        self._consumers = []

    # -- figures ---------------------------------------------------------
    def calls(self) -> dict:
        """Requests that got through, by quota class."""
        with self._counts_lock:
            return dict(self._accepted)

    def throttles(self) -> dict:
        """Requests answered 429, by quota class."""
        with self._counts_lock:
            return dict(self._throttled)

    def reset_counts(self) -> None:
        with self._counts_lock:
            self._accepted.clear()
            self._throttled.clear()
            self._other.clear()

    def floor(self, calls: dict | None = None, share: float | None = None) -> float:
        """The least time the accepted calls take under these quotas (each class a bucket
        with one second of burst; the classes run side by side, so the slowest decides).
        With a second consumer the rate left is (1 - share) of each quota."""
        calls = self.calls() if calls is None else calls
        share = self.second_consumer if share is None else share
        out = 0.0
        for cls, n in calls.items():
            rate = self.rates[cls] * (1 - share)
            out = max(out, max(0.0, (n - rate) / rate))
        return out
