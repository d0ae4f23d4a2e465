"""Rollouts, pure: strategies and schedules, the `rollout:` rules of reconciler.yaml,
Lambda's rules for weighted aliases, and the driver loop on a fake clock."""

from __future__ import annotations

import json

import pytest

from reconciler.engine import rollout as ro
from reconciler.errors import ConfigError
from reconciler.util.yamlsrc import load_yaml_documents


def rules(text: str) -> list[ro.Rule]:
    return ro.read_rules(load_yaml_documents(text, "reconciler.yaml")[0])


def bad(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        rules(text)
    return err.value


# ---------------------------------------------------------------- strategies


def test_every_sam_strategy_has_its_schedule():
    expected = {
        "Canary10Percent5Minutes": [(10, 300), (100, 0)],
        "Canary10Percent10Minutes": [(10, 600), (100, 0)],
        "Canary10Percent15Minutes": [(10, 900), (100, 0)],
        "Canary10Percent30Minutes": [(10, 1800), (100, 0)],
        "Linear10PercentEvery1Minute": [(w, 60) for w in range(10, 100, 10)] + [(100, 0)],
        "Linear10PercentEvery2Minutes": [(w, 120) for w in range(10, 100, 10)] + [(100, 0)],
        "Linear10PercentEvery3Minutes": [(w, 180) for w in range(10, 100, 10)] + [(100, 0)],
        "Linear10PercentEvery10Minutes": [(w, 600) for w in range(10, 100, 10)] + [(100, 0)],
        "AllAtOnce": [(100, 0)],
    }
    assert set(expected) == set(ro.STRATEGIES)
    for name, steps in expected.items():
        got = ro.named(name)
        assert [(s.weight, s.bake) for s in got.steps] == steps, name
        assert ro.named("CodeDeployDefault.Lambda" + name) == got
    assert ro.named("Canary10Percent7Minutes") is None


def test_descriptions():
    assert ro.named("Canary10Percent5Minutes").describe() == "canary 10% for 5m then 100%"
    assert ro.named("Linear10PercentEvery1Minute").describe() == "linear 10% every 1m then 100%"
    assert ro.named("AllAtOnce").describe() == "all at once"
    assert ro.build("canary", 2.5, 90).describe() == "canary 2.5% for 1m30s then 100%"
    assert [ro.fmt_seconds(s) for s in (0, 5, 60, 90, 3600, 3661)] == ["0s", "5s", "1m", "1m30s", "1h", "1h1m1s"]


def test_custom_linear_ends_at_100_without_a_duplicate_step():
    assert [s.weight for s in ro.build("linear", 30, 10).steps] == [30, 60, 90, 100]
    assert [s.weight for s in ro.build("linear", 25, 10).steps] == [25, 50, 75, 100]
    assert [s.weight for s in ro.build("linear", 50, 10).steps] == [50, 100]
    sched = ro.build("linear", 25, 10)
    assert sched.duration == 30 and sched.left_after(0) == 20 and sched.left_after(3) == 0


def test_intervals():
    assert [ro.parse_interval(v) for v in ("30s", "5m", "1h", "1m30s", " 2s ")] == [30, 300, 3600, 90, 2]
    for v in ("5", 5, "5 m", "0s", "", "2d", True, "25h"):
        with pytest.raises(ValueError):
            ro.parse_interval(v)


def test_schedule_is_plain_json_and_round_trips():
    sched = ro.build("canary", 10, 5)
    data = json.loads(json.dumps(sched.to_dict()))
    assert data == {
        "kind": "canary",
        "strategy": "custom",
        "steps": [{"weight": 10.0, "bake": 5}, {"weight": 100.0, "bake": 0}],
    }
    assert ro.Schedule.from_dict(data) == sched


# ---------------------------------------------------------------- rules


CONFIG = """\
backend: {type: local}
rollout:
  - match: {service: billing, environment: [prod, staging]}
    alias: live
    strategy: Canary10Percent5Minutes
    alarms: [billing-5xx]
  - match: {service: "pay*"}
    strategy: {type: linear, percentage: 20, interval: 30s}
    alarms: payments-latency
    errors_alarm: {threshold: 3, period: 2m}
  - strategy: AllAtOnce
"""


def test_rules_first_match_wins():
    got = rules(CONFIG)
    assert len(got) == 3
    first = ro.rule_for(got, "billing", "prod", "eu")
    assert first is got[0] and first.alias == "live" and first.source == "reconciler.yaml:3"
    assert first.describe() == "canary 10% for 5m then 100%, stops on billing-5xx"
    assert ro.rule_for(got, "billing", "dev", "eu") is got[2]  # environment not listed: the catch-all
    pay = ro.rule_for(got, "payments", "dev", "eu")
    assert pay is got[1] and pay.alias is None
    assert [s.weight for s in pay.schedule.steps] == [20, 40, 60, 80, 100]
    assert pay.errors_alarm == {"threshold": 3, "period": 120, "evaluation_periods": 1}
    assert pay.describe() == "linear 20% every 30s then 100%, stops on payments-latency or errors of the new version"
    assert got[2].describe() == "all at once"
    assert ro.rule_for(got[:2], "other", "prod", "eu") is None
    assert ro.Rule.from_dict(json.loads(json.dumps(pay.to_dict()))) == pay


def test_no_rollout_section_means_no_rules():
    assert rules("backend: {type: local}\n") == []
    assert ro.read_rules(None) == []


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("rollout: {strategy: AllAtOnce}\n", 1, "'rollout' must be a list of rules"),
        (
            "rollout:\n  - strategy: Canary10Percent5Minute\n",
            2,
            "unknown rollout strategy 'Canary10Percent5Minute' (did you mean 'Canary10Percent5Minutes'?)",
        ),
        (
            "rollout:\n  - strategy: AllAtOnce\n    alarm: [x]\n",
            3,
            "unknown rollout key 'alarm' (did you mean 'alarms'?)",
        ),
        ("rollout:\n  - alias: live\n", 2, "rollout rule 1 needs a strategy"),
        ("rollout:\n  - strategy: AllAtOnce\n    match: {env: prod}\n", 3, "unknown rollout match key 'env'"),
        (
            "rollout:\n  - strategy: AllAtOnce\n    match: {service: [1]}\n",
            3,
            "rollout match.service must be an identifier",
        ),
        (
            "rollout:\n  - strategy:\n      type: canary\n      percentage: 10\n",
            2,
            "a custom rollout strategy needs interval",
        ),
        (
            "rollout:\n  - strategy:\n      type: blue\n      percentage: 10\n      interval: 5m\n",
            3,
            "strategy type must be canary or linear, not 'blue'",
        ),
        (
            "rollout:\n  - strategy:\n      type: canary\n      percentage: 100\n      interval: 5m\n",
            4,
            "above 0 and below 100, not 100",
        ),
        (
            "rollout:\n  - strategy:\n      type: canary\n      percentage: 10\n      interval: 5 minutes\n",
            5,
            "strategy interval: '5 minutes' is not an interval like 30s, 5m or 1h",
        ),
        (
            "rollout:\n  - strategy:\n      type: linear\n      percentage: 0.5\n      interval: 5s\n",
            4,
            "takes more than 100 steps",
        ),
        (
            "rollout:\n  - strategy: AllAtOnce\n    alarms: {a: b}\n",
            3,
            "rollout alarms must be a list of CloudWatch alarm names",
        ),
        (
            "rollout:\n  - strategy: AllAtOnce\n    errors_alarm: {period: 45s}\n",
            3,
            "errors_alarm.period must be 10s, 20s, 30s or a whole number of minutes",
        ),
        (
            "rollout:\n  - strategy: AllAtOnce\n    errors_alarm: {threshold: 0}\n",
            3,
            "errors_alarm.threshold must be a whole number of 1 or more",
        ),
        (
            "rollout:\n  - strategy: AllAtOnce\n    errors_alarm: yes please\n",
            3,
            "errors_alarm must be true or a mapping",
        ),
        ("rollout:\n  - 7\n", 2, "rollout rule 1 must be a mapping"),
    ],
)
def test_bad_rules_name_file_and_line(text, line, words):
    err = bad(text)
    assert err.file == "reconciler.yaml" and err.line == line, str(err)
    assert words in str(err)


def test_errors_alarm_true_takes_the_defaults():
    got = rules("rollout:\n  - strategy: Canary10Percent5Minutes\n    errors_alarm: true\n")[0]
    assert got.errors_alarm == ro.ERRORS_ALARM_DEFAULTS
    assert got.describe() == "canary 10% for 5m then 100%, stops on errors of the new version"


# ---------------------------------------------------------------- Lambda's rules

ROLE = "arn:aws:iam::123456789012:role/fn"
DLQ = {"TargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq"}


def test_gradual_shift_possible_between_two_published_versions_alike():
    live = {"version": "3", "weights": {}}
    assert (
        ro.gradual_impossible(
            "live", live, {"Role": ROLE, "DeadLetterConfig": DLQ}, {"Role": ROLE, "DeadLetterConfig": DLQ}, True
        )
        is None
    )
    # no dead-letter config on either side, written two ways
    assert ro.gradual_impossible("live", live, {"Role": ROLE}, {"Role": ROLE, "DeadLetterConfig": {}}, True) is None


@pytest.mark.parametrize(
    "current, old, new, publishes, routing, words",
    [
        (None, None, {"Role": ROLE}, True, None, "alias live does not exist yet"),
        ({"version": "3"}, {"Role": ROLE}, {"Role": ROLE}, False, None, "does not move to a published version"),
        (
            {"version": "$LATEST"},
            {"Role": ROLE},
            {"Role": ROLE},
            True,
            None,
            "points to $LATEST, not a published version",
        ),
        ({"version": "3"}, {"Role": ROLE}, {"Role": ROLE + "2"}, True, None, "the execution role changes"),
        (
            {"version": "3"},
            {"Role": ROLE},
            {"Role": ROLE, "DeadLetterConfig": DLQ},
            True,
            None,
            "the dead-letter config changes (none → arn:aws:sqs",
        ),
        ({"version": "3"}, None, {"Role": ROLE}, True, None, "version 3 of the function cannot be read"),
        ({"version": "3"}, {"Role": ROLE}, {"Role": ROLE}, True, {"5": 0.5}, "sets its own routing weights"),
    ],
)
def test_gradual_shift_impossible_says_why(current, old, new, publishes, routing, words):
    assert words in ro.gradual_impossible("live", current, old, new, publishes, routing)


def test_routing_per_weight():
    assert ro.routing("3", "4", 0) == ("3", {})
    assert ro.routing("3", "4", 10) == ("3", {"4": 0.1})
    assert ro.routing("3", "4", 33.3) == ("3", {"4": 0.333})
    assert ro.routing("3", "4", 100) == ("4", {})


# ---------------------------------------------------------------- the driver


class Fake:
    """A clock that moves only when slept, the weights set, the steps recorded, and
    alarms that fire at a chosen time."""

    def __init__(self, alarm_at: float | None = None, alarm: str = "billing-5xx", interrupt_at: float | None = None):
        self.t = 1000.0
        self.weights: list[float] = []
        self.records: list[dict] = []
        self.progress: list[tuple[float, float]] = []
        self.checks: list[float] = []
        self.alarm_at, self.alarm, self.interrupt_at = alarm_at, alarm, interrupt_at

    def sleep(self, s: float) -> None:
        assert s > 0
        self.t += s
        if self.interrupt_at is not None and self.t >= self.interrupt_at:
            raise KeyboardInterrupt

    def check(self) -> str | None:
        self.checks.append(self.t)
        return self.alarm if self.alarm_at is not None and self.t >= self.alarm_at else None

    def driver(self) -> ro.Driver:
        return ro.Driver(
            set_weight=self.weights.append,
            check=self.check,
            record_step=self.records.append,
            progress=lambda w, left: self.progress.append((w, left)),
            sleep=self.sleep,
            clock=lambda: self.t,
        )


def test_a_canary_completes_with_every_step_recorded():
    f = Fake()
    ro.drive(ro.named("Canary10Percent5Minutes"), f.driver(), "live")
    assert f.weights == [10, 100]
    assert f.records == [{"index": 0, "weight": 10, "at": 1000.0}, {"index": 1, "weight": 100, "at": 1300.0}]
    assert f.t == 1300.0
    assert f.progress[0] == (10, 300) and f.progress[-1] == (100, 0)
    # read before each step and every 10 seconds while baking
    assert f.checks[0] == 1000.0 and f.checks[-1] == 1300.0 and len(f.checks) == 31


def test_linear_progress_counts_down_the_whole_rollout():
    f = Fake()
    ro.drive(ro.build("linear", 50, 10), f.driver(), "live")
    assert f.weights == [50, 100]
    assert f.progress[0] == (50, 10) and (50, 0) in f.progress and f.progress[-1] == (100, 0)


def test_an_alarm_mid_bake_stops_the_rollout_naming_it():
    f = Fake(alarm_at=1120.0)
    with pytest.raises(ro.RolloutStopped) as err:
        ro.drive(ro.named("Canary10Percent5Minutes"), f.driver(), "live")
    assert err.value.alarm == "billing-5xx" and err.value.weight == 10 and err.value.step == 0
    assert str(err.value) == "rollout of live stopped at 10%: alarm billing-5xx is in ALARM"
    assert f.weights == [10] and f.t == 1120.0  # stopped at the first read after it fired, never moved on


def test_an_alarm_already_firing_stops_before_any_traffic_moves():
    f = Fake(alarm_at=0)
    with pytest.raises(ro.RolloutStopped) as err:
        ro.drive(ro.named("Linear10PercentEvery1Minute"), f.driver(), "live")
    assert err.value.weight == 0 and f.weights == [] and f.records == []


def test_an_interrupt_becomes_a_stop():
    f = Fake(interrupt_at=1030.0)
    with pytest.raises(ro.RolloutStopped) as err:
        ro.drive(ro.named("Canary10Percent5Minutes"), f.driver(), "live")
    assert err.value.alarm is None and "interrupted at 10% (Ctrl-C or SIGTERM)" in str(err.value)


def test_resume_sets_the_recorded_step_again_and_bakes_what_is_left():
    f = Fake()
    f.t = 1100.0  # the step was recorded at 1000: 200 of its 300 seconds are left
    ro.drive(ro.named("Canary10Percent5Minutes"), f.driver(), "live", resume={"index": 0, "weight": 10, "at": 1000.0})
    assert f.weights == [10, 100]
    assert f.records == [{"index": 1, "weight": 100, "at": 1300.0}]  # the resumed step is not recorded twice
    assert f.progress[0] == (10, 200)


def test_resume_past_the_bake_moves_on_at_once():
    f = Fake()
    f.t = 5000.0
    ro.drive(ro.named("Canary10Percent5Minutes"), f.driver(), "live", resume={"index": 0, "weight": 10, "at": 1000.0})
    assert f.weights == [10, 100] and f.t == 5000.0


def test_resume_checks_the_alarms_first():
    f = Fake(alarm_at=0)
    with pytest.raises(ro.RolloutStopped) as err:
        ro.drive(
            ro.named("Canary10Percent5Minutes"), f.driver(), "live", resume={"index": 0, "weight": 10, "at": 900.0}
        )
    assert err.value.weight == 10 and f.weights == []


def test_all_at_once_is_one_step():
    f = Fake()
    ro.drive(ro.ALL_AT_ONCE, f.driver(), "live")
    assert f.weights == [100] and f.t == 1000.0


# ---------------------------------------------------------------- records, drift, the created alarm


def record_at(weight_index: int | None) -> dict:
    rule = ro.Rule(match={}, schedule=ro.named("Canary10Percent5Minutes"), alias="live", alarms=("billing-5xx",))
    rec = ro.new_record("live", "3", "4", rule.schedule, rule.alarms)
    if weight_index is not None:
        rec["steps"].append({"index": weight_index, "weight": rule.schedule.steps[weight_index].weight, "at": 1.0})
    return rec


def test_the_interrupted_message():
    assert ro.interrupted_message(record_at(0)) == (
        "rollout of live at 10% was interrupted (version 3 → 4, step 1 of 2); `apply` resumes it, "
        "`apply --abort-rollout` returns to version 3"
    )
    assert ro.interrupted_message(record_at(None)).startswith(
        "rollout of live at 0% was interrupted (version 3 → 4, before the first of 2 steps)"
    )
    assert json.loads(json.dumps(record_at(0))) == record_at(0)


def test_drift_explains_only_the_weights_of_the_recorded_rollout():
    rec = record_at(0)
    assert ro.explained(rec, {"version": "3", "weights": {"4": 0.1}})
    assert ro.explained(rec, {"version": "4", "weights": {}})
    assert ro.explained(rec, {"version": "3", "weights": {}})
    assert not ro.explained(rec, {"version": "3", "weights": {"4": 0.5}})  # nobody recorded 50%
    assert not ro.explained(rec, {"version": "3", "weights": {"5": 0.1}})
    assert not ro.explained(None, {"version": "3", "weights": {"4": 0.1}})


def test_the_created_alarm_watches_the_new_version_only():
    req = ro.errors_alarm_request("Billing", "live", "4", {"threshold": 2})
    assert req["AlarmName"] == "reconciler-Billing-live-v4-errors"
    assert {d["Name"]: d["Value"] for d in req["Dimensions"]} == {
        "FunctionName": "Billing",
        "Resource": "Billing:live",
        "ExecutedVersion": "4",
    }
    assert (
        req["Threshold"] == 2.0
        and req["Period"] == 60
        and req["MetricName"] == "Errors"
        and req["Namespace"] == "AWS/Lambda"
    )


def test_traffic_percentage():
    assert ro.traffic_percentage(10) == 10.0 and ro.traffic_percentage("50") == 50.0 and ro.traffic_percentage(0) == 0.0
    for v in (-1, 101, "ten", True, None):
        with pytest.raises(ValueError):
            ro.traffic_percentage(v)


def test_resume_point_follows_the_alias_when_it_is_a_step_ahead():
    rec = record_at(0)
    assert ro.resume_point(rec, {"version": "3", "weights": {"4": 0.1}}) == {"index": 0, "weight": 10.0, "at": 1.0}
    assert ro.resume_point(rec, {"version": "4", "weights": {}}) == {"index": 1, "weight": 100.0, "at": 1.0}
    assert ro.resume_point(rec, {"version": "3", "weights": {}}) == {"index": 0, "weight": 10.0, "at": 1.0}
    assert ro.resume_point(record_at(None), {"version": "3", "weights": {}}) is None
    assert ro.resume_point(record_at(None), {"version": "3", "weights": {"4": 0.1}})["index"] == 0


# ---------------------------------------------------------------- the pipeline step types (checks only)


@pytest.fixture
def canary_ws(tmp_path):
    import shutil
    from pathlib import Path

    ws = tmp_path / "canary"
    shutil.copytree(Path(__file__).resolve().parent.parent / "samples" / "canary", ws)
    return ws


def pipeline_errors(ws) -> list[str]:
    from reconciler.pipeline.checks import check_workspace
    from reconciler.workspace.load import load_workspace

    return [str(e) for e in check_workspace(load_workspace(ws))]


def test_the_canary_pipeline_checks_clean(canary_ws):
    assert pipeline_errors(canary_ws) == []


def test_a_bad_traffic_percentage_names_its_line(canary_ws):
    pipe = canary_ws / ".harness" / "pipeline.yaml"
    pipe.write_text(pipe.read_text().replace("trafficPercentage: 50", "trafficPercentage: 150"))
    line = next(i for i, t in enumerate(pipe.read_text().splitlines(), 1) if "trafficPercentage: 150" in t)
    assert pipeline_errors(canary_ws) == [
        f".harness/pipeline.yaml:{line}: AwsLambdaTrafficShift step 'shift50': trafficPercentage 150 is not a number from 0 to 100"
    ]


def test_a_shift_before_the_deploy_is_an_error(canary_ws):
    pipe = canary_ws / ".harness" / "pipeline.yaml"
    text = pipe.read_text()
    deploy = "              - step: {type: AwsLambdaDeploy, name: Deploy, identifier: deploy, timeout: 10m, spec: {}}\n"
    pipe.write_text(
        text.replace(deploy, "").replace(
            "            rollbackSteps:", deploy.replace("deploy,", "deploy2,") + "            rollbackSteps:"
        )
    )
    assert any(
        "step 'shift10' comes before any AwsLambdaDeploy step of its stage" in e for e in pipeline_errors(canary_ws)
    )


def test_approve_must_name_an_approval_step(canary_ws):
    from reconciler.pipeline.model import RunSettings
    from reconciler.pipeline.runner import Runner

    settings = RunSettings(
        workspace=canary_ws, state_dir=canary_ws / "state", pipeline="canaryDeploy", approve=("aproval",)
    )
    with pytest.raises(ConfigError) as err:
        Runner(settings, lambda: None, lambda m: None).prepare()
    assert (
        "--approve aproval: pipeline 'canaryDeploy' has no HarnessApproval step 'aproval' (its approvals: approval)"
        in str(err.value)
    )


# ---------------------------------------------------------------- the plan's rollout (traffic.plan_rollout, fakes for AWS)


class FakeLambda:
    def __init__(self, role: str = ROLE):
        self.role = role

    def get_function(self, name: str, qualifier: str | None = None) -> dict:
        return {"Configuration": {"Role": self.role, "Version": qualifier}}


class FakeCloudWatch:
    def __init__(self, existing: tuple[str, ...] = ("billing-5xx",)):
        self.existing = existing

    def missing(self, names) -> list[str]:
        return [n for n in names if n not in self.existing]


def planned(rules_text: str, lam=None, cw=None, interrupted=None, alias_live=None, publish=True):
    from reconciler.engine.traffic import plan_rollout
    from reconciler.model import Change, FunctionPlan, FunctionSpec

    spec = FunctionSpec(
        name="billing-prod",
        service="billing",
        environment="prod",
        infrastructure="prod_use1",
        region="us-east-1",
        package_type="Zip",
        config={"Role": ROLE},
        tags={},
        artifact={},
        aliases=[{"Name": "live", "Description": ""}],
    )
    fp = FunctionPlan(
        name=spec.name,
        service="billing",
        environment="prod",
        infrastructure="prod_use1",
        region="us-east-1",
        action="update",
        changes=[Change("alias", "live", "3", "4")],
        publish=publish,
        next_version="4" if publish else None,
    )
    live = {"exists": True, "aliases": {"live": alias_live or {"version": "3", "description": "", "weights": {}}}}
    plan_rollout(
        fp,
        spec,
        live,
        rules(rules_text),
        lam or FakeLambda(),
        lambda region, connector: cw or FakeCloudWatch(),
        interrupted,
    )
    return fp


RULE = "rollout:\n  - match: {service: billing}\n    strategy: Canary10Percent5Minutes\n    alarms: [billing-5xx]\n"


def test_the_plan_shows_the_schedule():
    ro_ = planned(RULE).rollout
    assert ro_["alias"] == "live" and ro_["from"] == "3" and ro_["to"] == "4" and ro_["impossible"] is None
    assert ro_["description"] == "canary 10% for 5m then 100%, stops on billing-5xx"


def test_the_plan_says_why_a_gradual_shift_is_impossible():
    ro_ = planned(RULE, lam=FakeLambda(role=ROLE + "-old")).rollout
    assert ro_["schedule"]["kind"] == "all_at_once"
    assert ro_["description"].startswith("all at once (no gradual shift: the execution role changes")


def test_a_missing_alarm_is_a_plan_error_at_the_rule():
    with pytest.raises(ConfigError) as err:
        planned(RULE, cw=FakeCloudWatch(existing=()))
    assert str(err.value) == "reconciler.yaml:2: rollout alarm 'billing-5xx' does not exist in CloudWatch in us-east-1"


def test_a_rule_naming_an_alias_the_function_lacks_is_an_error():
    with pytest.raises(ConfigError) as err:
        planned(RULE + "    alias: canary\n")
    assert "shifts alias 'canary', which function billing-prod" in str(err.value) and err.value.line == 2


def test_an_interrupted_rollout_is_resumed_where_it_stopped():
    killed = {"id": "k1", "status": "in_progress", "operation": "apply", "rollout": record_at(0)}
    killed["rollout"]["to"] = "4"
    fp = planned(RULE, interrupted=killed, alias_live={"version": "3", "description": "", "weights": {"4": 0.1}})
    assert fp.rollout["resume"] == {"index": 0, "weight": 10.0, "at": 1.0} and fp.rollout["resumes"] == "k1"
    assert fp.rollout["description"].startswith("resuming at 10%: canary 10% for 5m then 100%")


def test_an_alias_behind_its_recorded_version_is_shifted_to_it():
    # nothing to publish: the recorded version 4 exists, the alias is still on 3 (a pipeline stopped half-way)
    ro_ = planned(RULE, publish=False).rollout
    assert ro_["to"] == "4" and ro_["impossible"] is None and ro_["schedule"]["kind"] == "canary"
