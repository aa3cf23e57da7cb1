"""Write docker-compose.yml from the registered workers: `make compose` (`python -m infra.compose`).

Services: `aws` (LocalStack on :4566; docker/compose.moto.yml swaps in the moto server for users
without a LocalStack token), a one-shot `bootstrap`, then one service per worker, each health-checked
for its own worker. A test fails when the committed file differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from infra.model import services
from shared.clients import ALL_SERVICES
from shared.registry import Registry, discover
from shared.settings import FleetSettings

ENDPOINT = "http://aws:4566"
IMAGE = "fleet:local"
BUILD = {"context": ".", "dockerfile": "docker/Dockerfile"}
HEADER = """\
# Generated from the registered workers by `make compose` (python -m infra.compose): do not edit.
#
#   docker compose up --build        the fleet on LocalStack (export LOCALSTACK_AUTH_TOKEN first)
#   docker compose -f docker-compose.yml -f docker/compose.moto.yml up --build
#                                    the same on the moto server: no token needed
#
# `aws` is the local AWS endpoint (http://aws:4566 inside, localhost:4566 outside); `bootstrap`
# creates every declared resource once it is healthy; each worker starts after that.
"""


def _environment() -> dict[str, str]:
    return {
        "FLEET_ENDPOINT_URL": ENDPOINT,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "${AWS_DEFAULT_REGION:-us-east-1}",
        "FLEET_LOG_LEVEL": "${FLEET_LOG_LEVEL:-INFO}",
        "FLEET_LOG_FORMAT": "${FLEET_LOG_FORMAT:-text}",
    }


def document(registry: Registry) -> dict[str, Any]:
    """The compose file as data, from the declarations alone: the caller's FLEET_* environment does
    not leak into the committed file (set FLEET_PREFIX and friends in an override file instead)."""
    settings = FleetSettings.model_construct()  # defaults only: no environment read
    out: dict[str, Any] = {
        "name": "fleet",
        "services": {
            "aws": {
                "image": "${LOCALSTACK_IMAGE:-localstack/localstack:latest}",
                "ports": ["127.0.0.1:4566:4566"],
                "environment": {
                    # Empty when unset, so `config` and `build` work without it; LocalStack itself
                    # refuses to start without one (use docker/compose.moto.yml then).
                    "LOCALSTACK_AUTH_TOKEN": "${LOCALSTACK_AUTH_TOKEN:-}",
                    "SERVICES": ",".join([*ALL_SERVICES, "logs", "sts", "iam"]),
                },
                "healthcheck": {
                    "test": ["CMD", "curl", "-sf", "http://localhost:4566/_localstack/health"],
                    "interval": "5s",
                    "timeout": "3s",
                    "retries": 30,
                    "start_period": "10s",
                },
            },
            "bootstrap": {
                "build": BUILD,
                "image": IMAGE,
                "command": ["bootstrap"],
                "environment": _environment(),
                "depends_on": {"aws": {"condition": "service_healthy"}},
                "restart": "no",
                "healthcheck": {"disable": True},  # a one-shot: no worker to check
            },
        },
    }
    for service in services(registry, settings):
        out["services"][service.name] = {
            "build": BUILD,
            "image": IMAGE,
            "command": service.command,
            "environment": _environment(),
            "depends_on": {"bootstrap": {"condition": "service_completed_successfully"}},
            "healthcheck": {
                "test": ["CMD", *service.health_command],
                "interval": "15s",
                "timeout": "5s",
                "retries": 3,
                "start_period": "20s",
            },
            "stop_grace_period": f"{service.stop_timeout}s",
            "restart": "unless-stopped",
        }
    return out


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors, and short lists of words (commands) on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(item, str | int) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)


def render(registry: Registry) -> str:
    return HEADER + yaml.dump(document(registry), Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.compose", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="write the file (default: print it)")
    args = parser.parse_args(argv)
    text = render(discover(plugins=""))
    if args.write:
        Path(args.write).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
