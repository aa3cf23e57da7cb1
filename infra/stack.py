"""The fleet on AWS, written from the registry: every declared resource, and one Fargate service per
registered worker from the one image, each with its own task role (infra/policy.py), backlog-per-task
target tracking, alarms and a dashboard row. No worker is named here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aws_cdk import Aws, Duration, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import DeployConfig, ServiceConfig
from infra.model import Service, services
from infra.policy import statements
from shared.bootstrap import plan
from shared.registry import Registry
from shared.resources import (
    DLQ_RETENTION_SECONDS,
    QUEUE_RETENTION_SECONDS,
    Bucket,
    Bus,
    DeadLetters,
    Queue,
    Resource,
    Rule,
    Secret,
    Stream,
    Table,
    Topic,
)
from shared.settings import FleetSettings

ROOT = Path(__file__).resolve().parents[1]
ABORT_INCOMPLETE_UPLOADS_AFTER = Duration.days(7)
SCALE_OUT_COOLDOWN = Duration.seconds(60)
SCALE_IN_COOLDOWN = Duration.seconds(300)  # slow to let go of tasks: a backlog often comes back


RETENTION_DAYS = [
    (1, logs.RetentionDays.ONE_DAY),
    (3, logs.RetentionDays.THREE_DAYS),
    (5, logs.RetentionDays.FIVE_DAYS),
    (7, logs.RetentionDays.ONE_WEEK),
    (14, logs.RetentionDays.TWO_WEEKS),
    (30, logs.RetentionDays.ONE_MONTH),
    (60, logs.RetentionDays.TWO_MONTHS),
    (90, logs.RetentionDays.THREE_MONTHS),
    (180, logs.RetentionDays.SIX_MONTHS),
    (365, logs.RetentionDays.ONE_YEAR),
    (731, logs.RetentionDays.TWO_YEARS),
    (1827, logs.RetentionDays.FIVE_YEARS),
]


def camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", text) if p)


class FleetStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        registry: Registry,
        settings: FleetSettings,
        config: DeployConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.registry, self.settings, self.config = registry, settings, config
        self.planned = {(e["kind"], e["key"]): e for e in plan(registry, settings)}
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        self.tables: dict[str, dynamodb.Table] = {}
        self.buckets: dict[str, s3.Bucket] = {}
        self.streams: dict[str, kinesis.Stream] = {}
        self.topics: dict[str, sns.Topic] = {}
        self.buses: dict[str, events.EventBus] = {}
        self.rules: dict[str, events.CfnRule] = {}
        self.secrets: dict[str, secretsmanager.Secret] = {}

        # Queues first: buckets and rules deliver to them.
        resources = sorted(registry.resources(), key=lambda r: 0 if isinstance(r, Queue) else 1)
        for resource in resources:
            self._resource(resource)
        self.alarm_topic = self._alarm_topic()

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=config.nat_gateways,
            gateway_endpoints={
                # S3 and DynamoDB traffic stays off the NAT gateway (and its per-GB charge).
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDB": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
            },
        )
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            cluster_name=settings.name("fleet"),
            # RunningTaskCount, the divisor of backlog per task, is a Container Insights metric.
            container_insights_v2=ecs.ContainerInsights.ENABLED,
            enable_fargate_capacity_providers=True,
        )
        self.image = (
            ecs.ContainerImage.from_registry(config.image)
            if config.image
            else ecs.ContainerImage.from_asset(str(ROOT), file="docker/Dockerfile")
        )
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=settings.name("fleet"))
        self.services: dict[str, ecs.FargateService] = {}
        for service in services(registry, settings):
            self._service(service, config.of(service))

    # --- resources, as `fleet bootstrap` creates them --------------------------------------------

    def _resource(self, resource: Resource) -> None:
        entry = self.planned[(resource.kind, resource.key)]
        ident = camel(resource.key)
        match resource:
            case Queue():
                dlq = sqs.Queue(
                    self,
                    f"Dlq{ident}",
                    queue_name=entry["dlq"],
                    retention_period=Duration.seconds(DLQ_RETENTION_SECONDS),
                    encryption=sqs.QueueEncryption.SQS_MANAGED,
                    enforce_ssl=True,
                )
                self.dlqs[resource.key] = dlq
                self.queues[resource.key] = sqs.Queue(
                    self,
                    f"Queue{ident}",
                    queue_name=entry["name"],
                    visibility_timeout=Duration.seconds(entry["visibility_timeout"]),
                    retention_period=Duration.seconds(QUEUE_RETENTION_SECONDS),
                    dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=entry["max_receive_count"]),
                    encryption=sqs.QueueEncryption.SQS_MANAGED,
                    enforce_ssl=True,
                )
            case Table():
                table = dynamodb.Table(
                    self,
                    f"Table{ident}",
                    table_name=entry["name"],
                    partition_key=_key(resource.hash_key),
                    sort_key=_key(resource.range_key),
                    billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                    point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                        point_in_time_recovery_enabled=True
                    ),
                    time_to_live_attribute=resource.ttl_attribute,
                    encryption=dynamodb.TableEncryption.AWS_MANAGED,
                    removal_policy=RemovalPolicy.RETAIN,
                )
                for index in resource.indexes:
                    table.add_global_secondary_index(
                        index_name=index.name,
                        partition_key=_key(index.hash_key),
                        sort_key=_key(index.range_key),
                        projection_type=dynamodb.ProjectionType.ALL,
                    )
                self.tables[resource.key] = table
            case Bucket():
                self.buckets[resource.key] = self._bucket(resource, entry)
            case Stream():
                self.streams[resource.key] = kinesis.Stream(
                    self,
                    f"Stream{ident}",
                    stream_name=entry["name"],
                    shard_count=resource.shards,
                    encryption=kinesis.StreamEncryption.MANAGED,
                )
            case Topic():
                self.topics[resource.key] = sns.Topic(self, f"Topic{ident}", topic_name=entry["name"], enforce_ssl=True)
            case Bus():
                self.buses[resource.key] = events.EventBus(self, f"Bus{ident}", event_bus_name=entry["name"])
            case Rule():
                self.rules[resource.key] = self._rule(resource, entry)
            case Secret():
                # The shape only (field names, empty values): operators put the real values after deploy.
                self.secrets[resource.key] = secretsmanager.Secret(
                    self,
                    f"Secret{ident}",
                    secret_name=entry["name"],
                    secret_string_value=SecretValue.unsafe_plain_text(json.dumps(dict(resource.placeholder))),
                    removal_policy=RemovalPolicy.RETAIN,
                )
            case _:
                raise TypeError(f"infra cannot create {resource!r}")

    def _bucket(self, resource: Bucket, entry: dict[str, Any]) -> s3.Bucket:
        ident = camel(resource.key)
        bucket = s3.Bucket(
            self,
            f"Bucket{ident}",
            bucket_name=entry["name"],
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="abort-incomplete-multipart-uploads",
                    abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS_AFTER,
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        if resource.notify:
            # Plain CloudFormation notifications (no CDK custom-resource Lambda); the queue policy must
            # exist first, since S3 tests delivery when the configuration is put.
            bucket_arn = f"arn:{Aws.PARTITION}:s3:::{entry['name']}"
            configurations = []
            for notify in resource.notify:
                queue = self.queues[notify.queue.key]
                grant = queue.add_to_resource_policy(
                    iam.PolicyStatement(
                        sid=f"S3Notifications{ident}",
                        principals=[iam.ServicePrincipal("s3.amazonaws.com")],
                        actions=["sqs:SendMessage"],
                        resources=[queue.queue_arn],
                        conditions={
                            "ArnEquals": {"aws:SourceArn": bucket_arn},
                            "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                        },
                    )
                )
                if grant.policy_dependable is not None:
                    bucket.node.add_dependency(grant.policy_dependable)
                configurations += [
                    {
                        "Event": event,
                        "Queue": queue.queue_arn,
                        "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": notify.prefix}]}},
                    }
                    for event in notify.events
                ]
            cfn = bucket.node.default_child
            assert isinstance(cfn, s3.CfnBucket)
            cfn.add_property_override("NotificationConfiguration.QueueConfigurations", configurations)
        return bucket

    def _rule(self, resource: Rule, entry: dict[str, Any]) -> events.CfnRule:
        if resource.target is None:
            raise ValueError(f"rule {resource.key!r} has no target queue")
        queue = self.queues[resource.target.key]
        bus = self.buses[resource.bus.key].event_bus_name if resource.bus else "default"
        rule = events.CfnRule(
            self,
            f"Rule{camel(resource.key)}",
            name=entry["name"],
            event_bus_name=bus,
            event_pattern=dict(resource.pattern),
            state="ENABLED",
            targets=[events.CfnRule.TargetProperty(id="queue", arn=queue.queue_arn)],
        )
        queue.add_to_resource_policy(
            iam.PolicyStatement(
                sid=f"Rule{camel(resource.key)}",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["sqs:SendMessage"],
                resources=[queue.queue_arn],
                conditions={"ArnEquals": {"aws:SourceArn": rule.attr_arn}},
            )
        )
        return rule

    def _alarm_topic(self) -> sns.Topic:
        """Alarms go to the declared topic named by `alarmTopic` (the fleet's notifications topic), or to
        a topic of their own when no such topic is declared."""
        topic = self.topics.get(self.config.alarm_topic)
        if topic is not None:
            return topic
        return sns.Topic(self, "AlarmTopic", topic_name=self.settings.name("fleet-alarms"), enforce_ssl=True)

    def arn_of(self, resource: Resource, scope: str) -> list[str]:
        """The ARNs a task role statement covers, from the constructs themselves."""
        match resource:
            case DeadLetters():
                return [self.dlqs[resource.key].queue_arn]
            case Queue():
                return [self.queues[resource.key].queue_arn]
            case Table():
                arn = self.tables[resource.key].table_arn
                return [arn, f"{arn}/index/*"] if scope == "indexes" else [arn]
            case Bucket():
                bucket = self.buckets[resource.key]
                return [bucket.arn_for_objects("*")] if scope == "objects" else [bucket.bucket_arn]
            case Stream():
                return [self.streams[resource.key].stream_arn]
            case Topic():
                return [self.topics[resource.key].topic_arn]
            case Bus():
                return [self.buses[resource.key].event_bus_arn]
            case Rule():
                return [self.rules[resource.key].attr_arn]
            case Secret():
                return [self.secrets[resource.key].secret_arn]
        raise TypeError(f"no ARN for {resource!r}")

    # --- one Fargate service per worker -----------------------------------------------------------

    def _service(self, service: Service, config: ServiceConfig) -> None:
        ident = camel(service.name)
        role = iam.Role(
            self,
            f"TaskRole{ident}",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description=f"fleet worker {service.name}: only what its declaration names",
        )
        for statement in statements(service.spec, self.arn_of, metrics_namespace=self.settings.metrics_namespace):
            role.add_to_policy(iam.PolicyStatement.from_json(statement))
        # Scale-in protection (shared/protection.py): the ECS agent calls ECS with the task role.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="TaskScaleInProtection",
                actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
                resources=[f"arn:{Aws.PARTITION}:ecs:{Aws.REGION}:{Aws.ACCOUNT_ID}:task/{self.cluster.cluster_name}/*"],
            )
        )
        log_group = logs.LogGroup(
            self,
            f"Logs{ident}",
            log_group_name=f"/fleet/{self.settings.name(service.name)}",
            retention=self._retention(),
            removal_policy=RemovalPolicy.DESTROY,
        )
        task = ecs.FargateTaskDefinition(
            self,
            f"Task{ident}",
            cpu=config.cpu,
            memory_limit_mib=config.memory,
            task_role=role,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64,
            ),
        )
        task.add_volume(name="tmp")  # the root filesystem is read-only; heartbeats and ffmpeg use /tmp
        container = task.add_container(
            "worker",
            image=self.image,
            command=service.command,
            environment={
                "FLEET_REGION": Aws.REGION,
                "FLEET_PREFIX": self.settings.prefix,
                "FLEET_ENVIRONMENT": self.settings.environment,
                "FLEET_LOG_FORMAT": "json",
                "FLEET_METRICS_MODE": "emf",  # metrics ride on the logs: no PutMetricData call
                "FLEET_METRICS_NAMESPACE": self.settings.metrics_namespace,
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix=service.name, log_group=log_group),
            health_check=ecs.HealthCheck(
                command=["CMD", *service.health_command],
                interval=Duration.seconds(15),
                timeout=Duration.seconds(5),
                retries=3,
                start_period=Duration.seconds(30),
            ),
            stop_timeout=Duration.seconds(config.stop_timeout or service.stop_timeout),
            readonly_root_filesystem=True,
        )
        container.add_mount_points(ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False))
        provider = "FARGATE_SPOT" if config.spot else "FARGATE"
        fargate = ecs.FargateService(
            self,
            f"Service{ident}",
            cluster=self.cluster,
            task_definition=task,
            service_name=self.settings.name(service.name),
            desired_count=config.min_tasks,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            capacity_provider_strategies=[ecs.CapacityProviderStrategy(capacity_provider=provider, weight=1)],
            min_healthy_percent=100,
            max_healthy_percent=200,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )
        self.services[service.name] = fargate
        self._scaling(service, config, fargate)
        self._alarms(service)
        self._dashboard_row(service)

    def _retention(self) -> logs.RetentionDays:
        """The shortest retention CloudWatch Logs offers that keeps `logRetentionDays`."""
        days = self.config.log_retention_days
        return next((r for d, r in RETENTION_DAYS if d >= days), logs.RetentionDays.TEN_YEARS)

    def _scaling(self, service: Service, config: ServiceConfig, fargate: ecs.FargateService) -> None:
        ident = camel(service.name)
        target = appscaling.ScalableTarget(
            self,
            f"Scaling{ident}",
            service_namespace=appscaling.ServiceNamespace.ECS,
            resource_id=f"service/{self.cluster.cluster_name}/{fargate.service_name}",
            scalable_dimension="ecs:service:DesiredCount",
            min_capacity=config.min_tasks,
            max_capacity=config.max_tasks,
            # Application Auto Scaling's own service-linked role for ECS (as `auto_scale_task_count` uses):
            # no extra role per service.
            role=iam.Role.from_role_arn(
                self,
                f"ScalingRole{ident}",
                f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/aws-service-role/"
                "ecs.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_ECSService",
            ),
        )
        policy = appscaling.CfnScalingPolicy.TargetTrackingScalingPolicyConfigurationProperty
        if service.queue:
            # Backlog per task: visible messages / running tasks (metric math; AWS's documented form).
            queue = self.queues[service.spec.queue.key]  # type: ignore[union-attr]
            metrics = [
                _metric("visible", "AWS/SQS", "ApproximateNumberOfMessagesVisible", "Sum", QueueName=queue.queue_name),
                _metric(
                    "tasks",
                    "ECS/ContainerInsights",
                    "RunningTaskCount",
                    "Average",
                    ClusterName=self.cluster.cluster_name,
                    ServiceName=fargate.service_name,
                ),
                appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                    id="backlog_per_task", expression="visible / tasks", label="Backlog per task", return_data=True
                ),
            ]
            appscaling.CfnScalingPolicy(
                self,
                f"BacklogPerTask{ident}",
                policy_name=f"{self.settings.name(service.name)}-backlog-per-task",
                policy_type="TargetTrackingScaling",
                scaling_target_id=target.scalable_target_id,
                target_tracking_scaling_policy_configuration=policy(
                    target_value=float(config.backlog_target or 1),
                    customized_metric_specification=appscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                        metrics=metrics
                    ),
                    scale_out_cooldown=SCALE_OUT_COOLDOWN.to_seconds(),
                    scale_in_cooldown=SCALE_IN_COOLDOWN.to_seconds(),
                ),
            )
        if service.stream:
            # A stream consumer keeps up or falls behind: its records' age says which.
            stream = self.streams[service.spec.stream.key]  # type: ignore[union-attr]
            appscaling.CfnScalingPolicy(
                self,
                f"IteratorAge{ident}",
                policy_name=f"{self.settings.name(service.name)}-iterator-age",
                policy_type="TargetTrackingScaling",
                scaling_target_id=target.scalable_target_id,
                target_tracking_scaling_policy_configuration=policy(
                    target_value=float(config.iterator_age_target),
                    customized_metric_specification=appscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                        metrics=[
                            _metric(
                                "iterator_age",
                                "AWS/Kinesis",
                                "GetRecords.IteratorAgeMilliseconds",
                                "Maximum",
                                return_data=True,
                                StreamName=stream.stream_name,
                            )
                        ]
                    ),
                    scale_out_cooldown=SCALE_OUT_COOLDOWN.to_seconds(),
                    scale_in_cooldown=SCALE_IN_COOLDOWN.to_seconds(),
                ),
            )

    def _alarms(self, service: Service) -> None:
        ident = camel(service.name)
        action = cw_actions.SnsAction(self.alarm_topic)
        found: list[cw.Alarm] = []
        if service.spec.queue:
            queue, dlq = self.queues[service.spec.queue.key], self.dlqs[service.spec.queue.key]
            found.append(
                cw.Alarm(
                    self,
                    f"DlqDepth{ident}",
                    alarm_name=f"{service.dlq}-not-empty",
                    alarm_description=f"{service.name}: messages dead-lettered (fleet dlq {service.name})",
                    metric=dlq.metric_approximate_number_of_messages_visible(
                        period=Duration.minutes(1), statistic="Maximum"
                    ),
                    threshold=0,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                )
            )
            found.append(
                cw.Alarm(
                    self,
                    f"OldestMessage{ident}",
                    alarm_name=f"{service.queue}-oldest-message",
                    alarm_description=f"{service.name}: a message has waited over {self.config.oldest_message_alarm}s",
                    metric=queue.metric_approximate_age_of_oldest_message(
                        period=Duration.minutes(1), statistic="Maximum"
                    ),
                    threshold=self.config.oldest_message_alarm,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=3,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                )
            )
        if service.spec.stream:
            stream = self.streams[service.spec.stream.key]
            found.append(
                cw.Alarm(
                    self,
                    f"IteratorAge{ident}Alarm",
                    alarm_name=f"{service.stream}-iterator-age",
                    alarm_description=f"{service.name}: stream records wait over {self.config.oldest_message_alarm}s",
                    metric=stream.metric_get_records_iterator_age_milliseconds(
                        period=Duration.minutes(1), statistic="Maximum"
                    ),
                    threshold=self.config.oldest_message_alarm * 1000,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    evaluation_periods=3,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                )
            )
        for alarm in found:
            alarm.add_alarm_action(action)

    def _dashboard_row(self, service: Service) -> None:
        """Backlog, throughput, errors and duration of one worker, from the runtime's EMF metrics."""
        namespace, dims = self.settings.metrics_namespace, {"Worker": service.name}

        def emf(name: str, statistic: str = "Sum", label: str | None = None) -> cw.Metric:
            return cw.Metric(
                namespace=namespace,
                metric_name=name,
                dimensions_map=dims,
                statistic=statistic,
                period=Duration.minutes(1),
                label=label or name,
            )

        backlog: list[cw.IMetric] = []
        if service.spec.queue:
            queue, dlq = self.queues[service.spec.queue.key], self.dlqs[service.spec.queue.key]
            backlog = [
                queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), label="visible"),
                queue.metric_approximate_number_of_messages_not_visible(period=Duration.minutes(1), label="in flight"),
                dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), label="dead letters"),
            ]
        if service.spec.stream:
            stream = self.streams[service.spec.stream.key]
            backlog.append(
                stream.metric_get_records_iterator_age_milliseconds(period=Duration.minutes(1), label="iterator age")
            )
        width = 6
        self.dashboard.add_widgets(
            cw.TextWidget(markdown=f"### {service.name}\n{service.spec.summary}", width=24, height=1),
            cw.GraphWidget(title=f"{service.name}: backlog", left=backlog or [emf("QueueLag", "Maximum")], width=width),
            cw.GraphWidget(
                title=f"{service.name}: throughput",
                left=[emf("MessagesProcessed", label="processed / min")],
                right=[
                    cw.Metric(
                        namespace="ECS/ContainerInsights",
                        metric_name="RunningTaskCount",
                        dimensions_map={
                            "ClusterName": self.cluster.cluster_name,
                            "ServiceName": self.services[service.name].service_name,
                        },
                        statistic="Average",
                        period=Duration.minutes(1),
                        label="running tasks",
                    )
                ],
                width=width,
            ),
            cw.GraphWidget(
                title=f"{service.name}: errors",
                left=[emf("MessagesFailed", label="failed"), emf("MessagesDeadLettered", label="dead-lettered")],
                width=width,
            ),
            cw.GraphWidget(
                title=f"{service.name}: duration (ms)",
                left=[
                    emf("HandlerDuration", "p50", "p50"),
                    emf("HandlerDuration", "p90", "p90"),
                    emf("HandlerDuration", "Maximum", "max"),
                ],
                width=width,
            ),
        )


def _key(name: str | None) -> dynamodb.Attribute | None:
    """A key attribute: every key fleet declares is a string."""
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING) if name else None


def _metric(
    ident: str, namespace: str, name: str, stat: str, *, return_data: bool = False, **dimensions: str
) -> appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
    prop = appscaling.CfnScalingPolicy
    return prop.TargetTrackingMetricDataQueryProperty(
        id=ident,
        return_data=return_data,
        metric_stat=prop.TargetTrackingMetricStatProperty(
            stat=stat,
            metric=prop.TargetTrackingMetricProperty(
                namespace=namespace,
                metric_name=name,
                dimensions=[prop.TargetTrackingMetricDimensionProperty(name=k, value=v) for k, v in dimensions.items()],
            ),
        ),
    )
