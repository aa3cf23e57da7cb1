"""AWS clients opened once per process and closed on shutdown."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from shared.settings import FleetSettings

if TYPE_CHECKING:
    from types_aiobotocore_cloudwatch import CloudWatchClient
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_events import EventBridgeClient
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_secretsmanager import SecretsManagerClient
    from types_aiobotocore_sns import SNSClient
    from types_aiobotocore_sqs import SQSClient

ALL_SERVICES = ("sqs", "s3", "dynamodb", "sns", "cloudwatch", "events", "kinesis", "secretsmanager")
ONCE_SERVICES = ("dynamodb", "sns")


def client_config(pool_size: int, read_timeout: float = 60.0, total_attempts: int = 5, **extra: Any) -> AioConfig:
    """`total_attempts` counts the first call too (botocore's `max_attempts` would count retries only)."""
    return AioConfig(
        max_pool_connections=pool_size,
        read_timeout=read_timeout,
        connect_timeout=5,
        retries={"mode": "standard", "total_max_attempts": total_attempts},
        **extra,
    )


def emulator_credentials(settings: FleetSettings) -> dict[str, str]:
    """Emulators accept any key; real AWS uses the normal credential chain."""
    if settings.endpoint_url and not os.environ.get("AWS_ACCESS_KEY_ID"):
        return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return {}


class AwsClients:
    """Long-lived aiobotocore clients, one per service, sharing the process's lifetime.

    `async with AwsClients(settings, pool_size=40) as aws: await aws.sqs.receive_message(...)`
    """

    def __init__(
        self,
        settings: FleetSettings,
        *,
        pool_size: int = 20,
        read_timeout: float = 60.0,
        services: tuple[str, ...] = ALL_SERVICES,
    ) -> None:
        self.settings = settings
        self._pool_size, self._read_timeout = pool_size, read_timeout
        self._services = services
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        session = get_session()
        creds = emulator_credentials(self.settings)
        try:
            wanted = [(s, s, self._config_for(s)) for s in self._services]
            for service in ONCE_SERVICES:
                if service in self._services:
                    # For calls that run their own retry policy: each attempt is one request, and a call
                    # whose reply was lost is not sent again behind the caller's back.
                    once = client_config(self._pool_size, self._read_timeout, total_attempts=1)
                    wanted.append((f"{service}-once", service, once))
            for key, service, config in wanted:
                self._clients[key] = await self._stack.enter_async_context(
                    session.create_client(  # type: ignore[call-overload]
                        service,
                        region_name=self.settings.region,
                        endpoint_url=self.settings.endpoint_url,
                        config=config,
                        **creds,
                    )
                )
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        self._clients.clear()

    def _config_for(self, service: str) -> AioConfig:
        if service == "s3":
            # SigV4 presigned URLs: botocore's S3 default (SigV2) is refused by newer buckets.
            return client_config(self._pool_size, self._read_timeout, signature_version="s3v4")
        return client_config(self._pool_size, self._read_timeout)

    def _get(self, service: str) -> Any:
        try:
            return self._clients[service]
        except KeyError:
            raise RuntimeError(f"AWS client {service!r} is not open (opened: {sorted(self._clients)})") from None

    @property
    def sqs(self) -> SQSClient:
        return self._get("sqs")  # type: ignore[no-any-return]

    @property
    def s3(self) -> S3Client:
        return self._get("s3")  # type: ignore[no-any-return]

    @property
    def dynamodb(self) -> DynamoDBClient:
        return self._get("dynamodb")  # type: ignore[no-any-return]

    @property
    def dynamodb_once(self) -> DynamoDBClient:
        """DynamoDB without botocore's retries: for callers whose retry policy is part of the contract."""
        return self._get("dynamodb-once")  # type: ignore[no-any-return]

    @property
    def sns(self) -> SNSClient:
        return self._get("sns")  # type: ignore[no-any-return]

    @property
    def sns_once(self) -> SNSClient:
        """SNS without botocore's retries: a Publish whose reply was lost is not published again."""
        return self._get("sns-once")  # type: ignore[no-any-return]

    @property
    def cloudwatch(self) -> CloudWatchClient:
        return self._get("cloudwatch")  # type: ignore[no-any-return]

    @property
    def events(self) -> EventBridgeClient:
        return self._get("events")  # type: ignore[no-any-return]

    @property
    def kinesis(self) -> KinesisClient:
        return self._get("kinesis")  # type: ignore[no-any-return]

    @property
    def secretsmanager(self) -> SecretsManagerClient:
        return self._get("secretsmanager")  # type: ignore[no-any-return]


async def aws_identity(settings: FleetSettings) -> tuple[str, str]:
    """The account and principal these settings act as (STS GetCallerIdentity): (account id, ARN)."""
    async with get_session().create_client(  # type: ignore[call-overload]
        "sts",
        region_name=settings.region,
        config=client_config(2, 10.0, total_attempts=2),
        **emulator_credentials(settings),
    ) as sts:
        identity = await sts.get_caller_identity()
    return str(identity["Account"]), str(identity["Arn"])
