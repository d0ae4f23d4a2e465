"""reconciler.aws.quota: the shared Lambda rate limiter, its classes, priority, adaptation and
the time-bounded throttle retries (on a real botocore client whose requests are answered
by a before-send hook: 429 as Lambda sends it, then success)."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from reconciler.aws import quota
from reconciler.aws.quota import Limiter, QuotaStats, floor_seconds, install, quota_class, throttle_timeout, urgent


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def current_time(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_classes_follow_lambdas_documented_quotas():
    assert quota_class("lambda", "GetFunction") == "get-function"
    assert quota_class("lambda", "GetPolicy") == "get-policy"
    for op in (
        "ListFunctions",
        "ListAliases",
        "GetAlias",
        "GetFunctionConfiguration",
        "UpdateFunctionCode",
        "PublishVersion",
        "UpdateAlias",
        "ListVersionsByFunction",
        "TagResource",
        "ListTags",
    ):
        assert quota_class("lambda", op) == "control", op
    assert quota_class("lambda", "Invoke") is None
    assert quota_class("s3", "HeadObject") is None
    assert quota.QUOTAS == {"control": 15.0, "get-function": 100.0, "get-policy": 15.0}


def test_floor_is_calls_beyond_one_second_of_burst_at_the_rate():
    assert floor_seconds(15, 15) == 0
    assert floor_seconds(1020, 15) == pytest.approx(67.0)
    assert floor_seconds(1000, 100) == pytest.approx(9.0)
    s = QuotaStats()
    s.add("control", sent=30, throttled=2, waited=1.5)
    s.add("get-function", sent=50)
    d = s.to_dict()
    assert d["control"] == {"rate": 15.0, "calls": 30, "throttled": 2, "waited_s": 1.5, "floor_s": 1.0}
    assert d["get-function"]["floor_s"] == 0


def test_limiter_is_unpaced_until_the_first_throttle_then_starts_at_the_documented_rate():
    lim = Limiter(20)
    t = time.monotonic()
    for _ in range(200):
        assert lim.acquire()[0] == 0
    assert time.monotonic() - t < 0.5  # an endpoint that never throttles is not slowed down
    lim.throttled(time.time())
    assert lim.armed and lim.rate == 20  # not cut: the documented rate, from an empty bucket
    t = time.monotonic()
    for _ in range(10):
        lim.acquire()
    assert 0.4 < time.monotonic() - t < 0.8


def test_limiter_paces_at_its_rate_after_a_quarter_second_of_burst():
    lim = Limiter(20, armed=True)
    t = time.monotonic()
    for _ in range(25):
        lim.acquire()
    took = time.monotonic() - t
    assert 0.9 < took < 1.4, took  # 5 at once, then 20 at 20/s


def test_an_urgent_caller_gets_the_next_token_before_waiting_work():
    lim = Limiter(5, armed=True)
    lim.acquire()  # the burst (one token) is spent
    order: list[str] = []
    lock = threading.Lock()

    def take(tag: str, is_urgent: bool) -> None:
        lim.acquire(is_urgent)
        with lock:
            order.append(tag)

    normal = [threading.Thread(target=take, args=(f"n{i}", False)) for i in range(3)]
    for th in normal:
        th.start()
    time.sleep(0.05)  # the normal callers wait first
    rb = threading.Thread(target=take, args=("rollback", True))
    rb.start()
    for th in [*normal, rb]:
        th.join(5)
    assert order[0] == "rollback", order


def test_throttles_slow_down_once_per_round_and_success_probes_back_to_the_quota_never_above():
    clock = FakeClock()
    lim = Limiter(15, clock=clock, armed=True)
    sent = clock.current_time()
    clock.sleep(0.1)
    lim.throttled(sent)
    assert lim.rate == pytest.approx(15 * 0.7)
    lim.throttled(sent)  # sent before the slow-down: no new information
    assert lim.rate == pytest.approx(15 * 0.7)
    clock.sleep(0.1)
    lim.throttled(clock.current_time())  # within a second of the last slow-down
    assert lim.rate == pytest.approx(15 * 0.7)
    clock.sleep(1)
    lim.throttled(clock.current_time())
    assert lim.rate < 15 * 0.7
    low = lim.rate
    clock.sleep(1)
    lim.succeeded()
    assert low < lim.rate <= 15
    clock.sleep(60)
    lim.succeeded()
    assert lim.rate == 15
    for _ in range(50):
        clock.sleep(1)
        lim.throttled(clock.current_time())
    assert lim.rate == quota.MIN_RATE


def test_throttle_timeout_from_the_environment():
    assert throttle_timeout({}) == quota.THROTTLE_TIMEOUT_DEFAULT
    assert throttle_timeout({"RECONCILER_THROTTLE_TIMEOUT": "30"}) == 30
    assert throttle_timeout({"RECONCILER_THROTTLE_TIMEOUT": "soon"}) == quota.THROTTLE_TIMEOUT_DEFAULT


THROTTLE = (
    429,
    {"x-amzn-ErrorType": "TooManyRequestsException", "Content-Type": "application/json"},
    b'{"Type":"User","message":"Rate exceeded"}',
)
OK = (200, {"Content-Type": "application/json"}, b'{"Aliases": []}')


def _client(answers: list, timeout: float, key: tuple):
    c = boto3.client(
        "lambda",
        region_name="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        endpoint_url="http://127.0.0.1:9",
        config=__import__("reconciler.aws.client", fromlist=["RETRY"]).RETRY,
    )
    stats = QuotaStats()
    # a fast bucket of its own that these tests' throttles do not slow down (that is
    # tested above): they are about the retries
    lim = Limiter(1000)
    lim.throttled = lambda sent_at: None
    quota._registry[(*key, "control")] = lim
    install(c, stats, key, timeout=timeout)
    sent = []

    def answer(request, **_):
        status, headers, body = answers.pop(0) if answers else OK
        sent.append(status)
        return AWSResponse(request.url, status, headers, type("Raw", (), {"stream": lambda self, **k: iter([body])})())

    c.meta.events.register("before-send.lambda", answer)
    return c, stats, sent


def test_a_throttled_call_is_retried_beyond_botocores_attempt_count_and_counted():
    c, stats, sent = _client([THROTTLE] * 12, timeout=60, key=("unit-many",))
    assert c.list_aliases(FunctionName="f")["Aliases"] == []
    assert sent == [429] * 12 + [200]  # the standard mode's 8 retries would have given up
    d = stats.to_dict()["control"]
    assert d["calls"] == 13 and d["throttled"] == 12


def test_throttle_retries_stop_at_the_time_bound():
    c, stats, sent = _client([THROTTLE] * 1000, timeout=0.5, key=("unit-bound",))
    t = time.monotonic()
    with pytest.raises(c.exceptions.TooManyRequestsException):
        c.list_aliases(FunctionName="f")
    assert time.monotonic() - t < 10
    assert len(sent) >= 2


def test_other_errors_keep_the_standard_retries_and_throttles_do_not_use_up_their_attempts():
    err = (500, {"x-amzn-ErrorType": "ServiceException", "Content-Type": "application/json"}, b'{"message":"boom"}')
    # 9 throttles + 3 errors: 12 retries, more than the standard mode's 8 would allow in all
    c, stats, sent = _client([THROTTLE] * 9 + [err] * 3, timeout=60, key=("unit-mixed",))
    assert c.list_aliases(FunctionName="f")["Aliases"] == []
    assert sent == [429] * 9 + [500] * 3 + [200]
    assert stats.to_dict()["control"]["throttled"] == 9


def test_urgent_is_per_thread_and_nests():
    assert not quota.is_urgent()
    with urgent():
        assert quota.is_urgent()
        seen = []
        th = threading.Thread(target=lambda: seen.append(quota.is_urgent()))
        th.start()
        th.join()
        assert seen == [False]
        with urgent():
            assert quota.is_urgent()
        assert quota.is_urgent()
    assert not quota.is_urgent()


def test_limiters_pace_from_the_start_on_aws_and_from_the_first_throttle_elsewhere():
    """On AWS's own endpoint the documented quotas hold from the first request; an emulator
    or proxy given with AWS_ENDPOINT_URL is paced only once it throttles."""
    assert quota.is_aws_endpoint("https://lambda.us-east-1.amazonaws.com")
    assert quota.is_aws_endpoint("https://lambda.cn-north-1.amazonaws.com.cn")
    assert quota.is_aws_endpoint("https://lambda.us-east-1.api.aws")  # dual-stack
    assert not quota.is_aws_endpoint("http://127.0.0.1:4566")
    assert not quota.is_aws_endpoint("https://lambda.example.com")
    assert not quota.is_aws_endpoint("https://amazonaws.com.evil.example")
    assert not quota.is_aws_endpoint(None)
    aws_key = ("https://lambda.eu-west-1.amazonaws.com", "eu-west-1", "arn:aws:iam::1:role/test-start-armed")
    local_key = ("http://127.0.0.1:1", "eu-west-1", "arn:aws:iam::1:role/test-start-armed")
    try:
        assert quota.limiter(aws_key, "control").armed
        assert quota.limiter(aws_key, "get-function").armed
        assert not quota.limiter(local_key, "control").armed
    finally:
        for key in (aws_key, local_key):
            for cls in ("control", "get-function"):
                quota._registry.pop((*key, cls), None)
