"""CloudWatch alarms for rollouts: read their states, create and delete the alarm a
rollout puts on its new version's own Errors. Errors as every AWS call here: one AwsError."""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.aws.client import Aws, call, pages
from reconciler.errors import AwsError

BATCH = 100  # DescribeAlarms takes at most 100 names


class CloudWatch:
    def __init__(self, aws: Aws, region: str, connector: dict | None = None):
        self.region = region
        self.c = aws.client("cloudwatch", region, connector)

    def states(self, names: Iterable[str]) -> dict[str, str]:
        """Alarm name → StateValue (OK, ALARM, INSUFFICIENT_DATA) of the alarms that exist."""
        wanted = list(dict.fromkeys(names))
        out: dict[str, str] = {}
        for i in range(0, len(wanted), BATCH):
            chunk = wanted[i : i + BATCH]
            for page in pages(
                f"reading CloudWatch alarms {', '.join(chunk)}",
                self.c,
                "describe_alarms",
                AlarmNames=chunk,
                AlarmTypes=["MetricAlarm", "CompositeAlarm"],
            ):
                for a in (page.get("MetricAlarms") or []) + (page.get("CompositeAlarms") or []):
                    out[a["AlarmName"]] = a.get("StateValue", "")
        return out

    def missing(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        found = self.states(names) if names else {}
        return [n for n in names if n not in found]

    def first_in_alarm(self, names: Iterable[str]) -> str | None:
        """The first of these alarms in ALARM, or None. An alarm that no longer exists is an
        error: a rollout gated by it cannot be checked."""
        names = list(names)
        if not names:
            return None
        found = self.states(names)
        gone = [n for n in names if n not in found]
        if gone:
            raise AwsError(f"CloudWatch alarm {gone[0]} does not exist in {self.region}")
        return next((n for n in names if found[n] == "ALARM"), None)

    def put_alarm(self, request: dict) -> None:
        call(f"creating CloudWatch alarm {request.get('AlarmName')}", self.c.put_metric_alarm, **request)

    def delete_alarms(self, names: Iterable[str]) -> None:
        names = list(names)
        if names:
            call(f"deleting CloudWatch alarm {', '.join(names)}", self.c.delete_alarms, AlarmNames=names)
