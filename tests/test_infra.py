"""infra/: the CDK app synthesized once (offline: no account, no Docker), asserted on, and linted.

Every registered worker must come out with its Fargate service, its own task role holding exactly its
generated policy, backlog-per-task scaling (iterator age for a stream consumer), and its alarms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.config import DeployConfig, ServiceConfig, from_context
from infra.model import services
from infra.policy import grants
from infra.sizing import LATENCY_TARGET_SECONDS, backlog_target, floor_target, measured
from shared.declaration import WorkerSpec, uses
from shared.registry import Registry, discover
from shared.resources import REDRIVE_MAX_RECEIVE_COUNT, Bus, Queue, Rule, Secret, Stream
from shared.settings import load_settings

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

# A worker of every other shape the fleet will have (a stream consumer with a queue too, publishing to
# a bus whose rule feeds its queue, reading a secret), so each of those paths is synthesized and linted
# before the workers that need them land. Its stage is never imported.
SAMPLES = Stream("samples", "fleet-samples")
SAMPLE_QUEUE = Queue("samples", "fleet-sample-events")
ALERTS = Bus("sample-alerts", "fleet-sample-alerts")
SAMPLE = WorkerSpec(
    name="sample",
    summary="a test's worker: stream + queue, bus, rule, secret",
    stage="tests.never:Imported",
    queue=SAMPLE_QUEUE,
    stream=SAMPLES,
    uses=(
        uses(SAMPLES, "kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards"),
        uses(ALERTS, "events:PutEvents"),
        uses(
            Rule(
                "sample-rule",
                "fleet-sample-rule",
                pattern={"source": ["fleet.sample"]},
                target=SAMPLE_QUEUE,
                bus=ALERTS,
            )
        ),
        uses(Secret("sample-secret", "fleet/sample", placeholder={"token": ""}), "secretsmanager:GetSecretValue"),
    ),
)
REGISTRY = Registry.of([*discover(plugins="").workers.values(), SAMPLE])
WORKERS = REGISTRY.names()
# Overrides for one worker, to see context reach its service and only its service.
CONTEXT = {"fleet:echo:spot": "true", "fleet:echo:maxTasks": "3", "fleet:echo:stopTimeout": "90"}


@dataclass
class Synthesized:
    template: dict[str, Any]
    path: Path

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}

    def resource(self, logical_id: str) -> dict[str, Any]:
        return self.template["Resources"][logical_id]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    """The fleet's template, synthesized once per session (importing the CDK takes ~11 s cold)."""
    from aws_cdk import App

    from infra.app import STACK, build

    outdir = tmp_path_factory.mktemp("cdk.out")
    app = App(outdir=str(outdir), context=CONTEXT)
    build(app, REGISTRY, load_settings())
    assembly = app.synth()
    template = assembly.get_stack_by_name(STACK).template
    yield Synthesized(template, outdir / f"{STACK}.template.json")


def ref_id(value: Any) -> str:
    """The logical id behind a Ref or Fn::GetAtt."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return str(value["Fn::GetAtt"][0])
    raise AssertionError(f"not a reference: {value!r}")


def service_of(synth: Synthesized, worker: str) -> tuple[str, dict[str, Any]]:
    found = [
        (k, v) for k, v in synth.of_type("AWS::ECS::Service").items() if v["Properties"].get("ServiceName") == worker
    ]
    assert len(found) == 1, f"no ECS service for worker {worker!r}"
    return found[0]


def task_of(synth: Synthesized, service: dict[str, Any]) -> dict[str, Any]:
    return synth.resource(ref_id(service["Properties"]["TaskDefinition"]))["Properties"]


def role_statements(synth: Synthesized, role_id: str) -> list[dict[str, Any]]:
    out = []
    for policy in synth.of_type("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            out += policy["Properties"]["PolicyDocument"]["Statement"]
    return out


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return set(value if isinstance(value, list) else [value])


# --- every worker's service --------------------------------------------------------------------------


@pytest.mark.parametrize("worker", WORKERS)
def test_every_worker_runs_as_its_own_fargate_service_from_the_one_image(synthesized: Synthesized, worker: str) -> None:
    _, service = service_of(synthesized, worker)
    props = service["Properties"]
    # Then the deployment rolls back on its own when new tasks keep failing
    assert props["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    # And the one container runs this worker, health-checked for it, with time to drain on SIGTERM
    (container,) = task_of(synthesized, service)["ContainerDefinitions"]
    assert container["Command"] == ["worker", worker]
    assert container["HealthCheck"]["Command"] == ["CMD", "fleet", "health", worker]
    drain = REGISTRY.tuning(load_settings(), worker).drain_timeout
    assert drain < container["StopTimeout"] <= 120
    assert container["ReadonlyRootFilesystem"] is True
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    images = {
        json.dumps(c["Image"], sort_keys=True)
        for s in synthesized.of_type("AWS::ECS::TaskDefinition").values()
        for c in s["Properties"]["ContainerDefinitions"]
    }
    assert len(images) == 1  # every worker, one image


@pytest.mark.parametrize("worker", WORKERS)
def test_every_worker_has_its_own_task_role_granted_exactly_its_declaration(
    synthesized: Synthesized, worker: str
) -> None:
    _, service = service_of(synthesized, worker)
    role_id = ref_id(task_of(synthesized, service)["TaskRoleArn"])
    statements = {s["Sid"]: s for s in role_statements(synthesized, role_id)}
    # Then the role holds one statement per generated grant, with exactly its actions
    expected = {g.sid: g for g in grants(REGISTRY.get(worker))}
    assert set(statements) == {*expected, "TaskScaleInProtection"}
    for sid, grant in expected.items():
        assert actions(statements[sid]) == set(grant.actions), sid
        # And only an action that takes no ARN is granted on "*"
        assert (statements[sid]["Resource"] == "*") == (grant.resource is None), sid
    # And no other worker shares the role
    roles = [ref_id(task_of(synthesized, s)["TaskRoleArn"]) for _, s in (service_of(synthesized, w) for w in WORKERS)]
    assert roles.count(role_id) == 1


def test_no_task_role_statement_has_a_wildcard_action(synthesized: Synthesized) -> None:
    task_roles = {
        ref_id(d["Properties"]["TaskRoleArn"]) for d in synthesized.of_type("AWS::ECS::TaskDefinition").values()
    }
    assert len(task_roles) == len(WORKERS)
    for role_id in task_roles:
        for statement in role_statements(synthesized, role_id):
            assert not [a for a in actions(statement) if "*" in a], statement


@pytest.mark.parametrize("worker", WORKERS)
def test_every_worker_scales_on_its_backlog_per_task_within_its_task_limits(
    synthesized: Synthesized, worker: str
) -> None:
    service_id, _ = service_of(synthesized, worker)
    spec = REGISTRY.get(worker)
    targets = [
        (k, t)
        for k, t in synthesized.of_type("AWS::ApplicationAutoScaling::ScalableTarget").items()
        if service_id in json.dumps(t["Properties"]["ResourceId"])
    ]
    assert len(targets) == 1, f"no scalable target for {worker}"
    target_id, target = targets[0]
    limits = (target["Properties"]["MinCapacity"], target["Properties"]["MaxCapacity"])
    assert limits == ((1, 3) if worker == "echo" else (1, 10))  # `fleet:echo:maxTasks=3` reached echo only
    policies = [
        p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for p in synthesized.of_type("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if p["Properties"]["ScalingTargetId"] == {"Ref": target_id}
    ]
    assert len(policies) == (spec.queue is not None) + (spec.stream is not None)
    for policy in policies:
        metrics = {m["Id"]: m for m in policy["CustomizedMetricSpecification"]["Metrics"]}
        if "backlog_per_task" in metrics:
            # visible messages of its own queue / running tasks of its own service
            assert metrics["backlog_per_task"]["Expression"] == "visible / tasks"
            visible = metrics["visible"]["MetricStat"]["Metric"]
            assert visible["MetricName"] == "ApproximateNumberOfMessagesVisible"
            assert ref_id(visible["Dimensions"][0]["Value"]).startswith("Queue")
            (queue,) = [
                k for k in synthesized.of_type("AWS::SQS::Queue") if k == ref_id(visible["Dimensions"][0]["Value"])
            ]
            assert synthesized.resource(queue)["Properties"]["QueueName"] == load_settings().name_of(spec.queue)  # type: ignore[arg-type]
            tasks = metrics["tasks"]["MetricStat"]["Metric"]
            assert tasks["MetricName"] == "RunningTaskCount"
            assert {"Name": "ServiceName", "Value": {"Fn::GetAtt": [service_id, "Name"]}} in tasks["Dimensions"]
            (service,) = [s for s in services(REGISTRY, load_settings()) if s.name == worker]
            assert policy["TargetValue"] == backlog_target(service)
        else:
            age = metrics["iterator_age"]["MetricStat"]["Metric"]
            assert age["MetricName"] == "GetRecords.IteratorAgeMilliseconds"


@pytest.mark.parametrize("worker", WORKERS)
def test_every_worker_alarms_on_dead_letters_and_old_messages_to_the_topic(
    synthesized: Synthesized, worker: str
) -> None:
    settings = load_settings()
    spec = REGISTRY.get(worker)
    alarms = synthesized.of_type("AWS::CloudWatch::Alarm").values()
    names = {json.dumps(a["Properties"].get("AlarmName")): a["Properties"] for a in alarms}
    expected = []
    if spec.queue:
        expected = [f"{settings.name_of(spec.queue)}-dlq-not-empty", f"{settings.name_of(spec.queue)}-oldest-message"]
    if spec.stream:
        expected.append(f"{settings.name_of(spec.stream)}-iterator-age")
    assert expected
    (topic_id,) = [
        k
        for k, t in synthesized.of_type("AWS::SNS::Topic").items()
        if t["Properties"]["TopicName"] == "fleet-notifications"
    ]
    for name in expected:
        alarm = names.get(json.dumps(name))
        assert alarm is not None, f"no alarm {name}"
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]


def test_the_dashboard_shows_backlog_throughput_errors_and_duration_of_every_worker(synthesized: Synthesized) -> None:
    (dashboard,) = synthesized.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for worker in WORKERS:
        for panel in ("backlog", "throughput", "errors", "duration (ms)"):
            assert f"{worker}: {panel}" in body
    for metric in ("MessagesProcessed", "MessagesFailed", "MessagesDeadLettered", "HandlerDuration"):
        assert metric in body  # the runtime's EMF metrics (shared/middleware.py)


def test_context_reaches_only_the_worker_it_names(synthesized: Synthesized) -> None:
    def provider(worker: str) -> str:
        _, service = service_of(synthesized, worker)
        (strategy,) = service["Properties"]["CapacityProviderStrategy"]
        return str(strategy["CapacityProvider"])

    def stop_timeout(worker: str) -> int:
        _, service = service_of(synthesized, worker)
        return int(task_of(synthesized, service)["ContainerDefinitions"][0]["StopTimeout"])

    assert provider("echo") == "FARGATE_SPOT" and stop_timeout("echo") == 90
    assert {provider(w) for w in WORKERS if w != "echo"} == {"FARGATE"}
    assert {stop_timeout(w) for w in WORKERS if w != "echo"} == {35}


# --- the resources, as bootstrap creates them --------------------------------------------------------


def test_every_queue_has_a_dlq_with_redrive(synthesized: Synthesized) -> None:
    queues = synthesized.of_type("AWS::SQS::Queue")
    planned = [r for r in load_plan() if r["kind"] == "queue"]
    by_name = {q["Properties"]["QueueName"]: (k, q) for k, q in queues.items()}
    assert len(queues) == 2 * len(planned)
    for entry in planned:
        _, queue = by_name[entry["name"]]
        dlq_id, dlq = by_name[entry["dlq"]]
        redrive = queue["Properties"]["RedrivePolicy"]
        assert redrive == {
            "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
            "maxReceiveCount": REDRIVE_MAX_RECEIVE_COUNT,
        }
        assert queue["Properties"]["VisibilityTimeout"] == entry["visibility_timeout"]
        assert dlq["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
        assert queue["Properties"]["SqsManagedSseEnabled"] is True


def test_buckets_block_public_access_encrypt_require_tls_and_abort_incomplete_uploads(synthesized: Synthesized) -> None:
    buckets = synthesized.of_type("AWS::S3::Bucket")
    assert {b["Properties"]["BucketName"] for b in buckets.values()} == {
        r["name"] for r in load_plan() if r["kind"] == "bucket"
    }
    policies = {ref_id(p["Properties"]["Bucket"]): p for p in synthesized.of_type("AWS::S3::BucketPolicy").values()}
    for bucket_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        rules = props["LifecycleConfiguration"]["Rules"]
        assert any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 7 for r in rules)
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        statements = policies[bucket_id]["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
        )


def test_landing_uploads_notify_the_ingest_queue_as_bootstrap_wires_them(synthesized: Synthesized) -> None:
    for entry in (r for r in load_plan() if r["kind"] == "bucket" and r["notify"]):
        (bucket,) = [
            b for b in synthesized.of_type("AWS::S3::Bucket").values() if b["Properties"]["BucketName"] == entry["name"]
        ]
        configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
        for notify in entry["notify"]:
            (queue_id,) = [
                k
                for k, q in synthesized.of_type("AWS::SQS::Queue").items()
                if q["Properties"]["QueueName"] == notify["queue"]
            ]
            assert {
                "Event": notify["events"][0],
                "Queue": {"Fn::GetAtt": [queue_id, "Arn"]},
                "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": notify["prefix"]}]}},
            } in configs


def test_the_stream_bus_rule_and_secret_are_built_as_declared(synthesized: Synthesized) -> None:
    # (the fleet's own workers add streams, buses, rules and secrets of their own: pick the sample's)
    (stream,) = [
        s for s in synthesized.of_type("AWS::Kinesis::Stream").values() if s["Properties"]["Name"] == "fleet-samples"
    ]
    assert stream["Properties"]["ShardCount"] == 2
    (bus_id,) = [
        k
        for k, b in synthesized.of_type("AWS::Events::EventBus").items()
        if b["Properties"]["Name"] == "fleet-sample-alerts"
    ]
    (rule,) = [
        r for r in synthesized.of_type("AWS::Events::Rule").values() if r["Properties"]["Name"] == "fleet-sample-rule"
    ]
    assert rule["Properties"]["EventPattern"] == {"source": ["fleet.sample"]}
    assert rule["Properties"]["EventBusName"] == {"Ref": bus_id}
    (queue_id,) = [
        k
        for k, q in synthesized.of_type("AWS::SQS::Queue").items()
        if q["Properties"]["QueueName"] == "fleet-sample-events"
    ]
    assert rule["Properties"]["Targets"] == [{"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}, "Id": "queue"}]
    (secret,) = [
        x
        for x in synthesized.of_type("AWS::SecretsManager::Secret").values()
        if x["Properties"]["Name"] == "fleet/sample"
    ]
    assert secret["Properties"]["Name"] == "fleet/sample"
    assert json.loads(secret["Properties"]["SecretString"]) == {"token": ""}  # the shape, no value


def test_tables_are_on_demand_with_point_in_time_recovery(synthesized: Synthesized) -> None:
    tables = synthesized.of_type("AWS::DynamoDB::Table")
    assert {t["Properties"]["TableName"] for t in tables.values()} == {
        r["name"] for r in load_plan() if r["kind"] == "table"
    }
    for table in tables.values():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    (leases,) = [t for t in tables.values() if t["Properties"]["TableName"] == "fleet-leases"]
    assert leases["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}


def test_logs_are_kept_for_the_configured_retention(synthesized: Synthesized) -> None:
    groups = synthesized.of_type("AWS::Logs::LogGroup")
    assert {g["Properties"]["LogGroupName"] for g in groups.values()} >= {f"/fleet/{w}" for w in WORKERS}
    assert {g["Properties"]["RetentionInDays"] for g in groups.values()} == {30}


def test_the_image_asset_holds_the_dockerfile_and_all_it_copies(synthesized: Synthesized) -> None:
    # Given the image asset CDK staged (the build context `cdk deploy` hands to docker build)
    assets = json.loads(synthesized.path.with_name(f"{synthesized.path.stem.split('.')[0]}.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    context = synthesized.path.parent / image["source"]["directory"]
    # Then the Dockerfile is in it, and so is every file it copies
    dockerfile = context / image["source"]["dockerFile"]
    assert image["source"]["dockerFile"] == "docker/Dockerfile" and dockerfile.is_file()
    copied = [
        word
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for word in line.split()[1:-1]
        if not word.startswith("--")
    ]
    assert copied and all((context / c).exists() for c in copied), [c for c in copied if not (context / c).exists()]
    # And nothing else of the repository (no .venv, no tests)
    assert not (context / ".venv").exists() and not (context / "tests").exists()


def test_cfn_lint_passes_on_the_template(synthesized: Synthesized) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(synthesized.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def load_plan() -> list[dict[str, Any]]:
    from shared.bootstrap import plan

    return plan(REGISTRY, load_settings())


# --- deployment settings (no synth) ------------------------------------------------------------------


def test_context_values_from_the_command_line_are_typed_and_checked() -> None:
    context = {
        "fleet:maxTasks": "20",
        "fleet:spot": "true",
        "fleet:ingest:maxTasks": "50",
        "fleet:logRetentionDays": "7",
    }
    config = from_context(context.get, WORKERS)
    ingest, echo = (next(s for s in services(REGISTRY, load_settings()) if s.name == n) for n in ("ingest", "echo"))
    assert (config.of(ingest).max_tasks, config.of(echo).max_tasks) == (50, 20)
    assert config.of(echo).spot is True and config.log_retention_days == 7
    for bad, message in [
        ({"fleet:minTasks": "0"}, "minTasks must be between 1"),
        ({"fleet:echo:stopTimeout": "300"}, "stopTimeout must be 2-120"),
        ({"fleet:cpu": "256", "fleet:memory": "4096"}, "not a Fargate size"),
    ]:
        with pytest.raises(ValueError, match=message):
            from_context(bad.get, WORKERS).of(echo)


def test_the_backlog_target_is_what_one_task_clears_within_the_latency_target() -> None:
    rates = measured()
    assert rates, "infra/sizing.json: run `python bench/sizing.py --write`"
    for service in services(REGISTRY, load_settings()):
        # Measured: per-task throughput x the latency target; else a floor every worker meets
        rate = rates.get(service.name)
        expected = rate * LATENCY_TARGET_SECONDS if rate else floor_target(service)
        assert backlog_target(service) == max(1, round(expected))
    # And a context value overrides it
    first = services(REGISTRY, load_settings())[0]
    assert DeployConfig(defaults=ServiceConfig(backlog_target=7)).of(first).backlog_target == 7
