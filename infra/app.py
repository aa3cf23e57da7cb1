"""The CDK app: `cdk deploy` (cdk.json runs this), or `make infra-synth` to write the template offline.

    cd infra && cdk deploy -c fleet:maxTasks=20        # needs an AWS account, Docker and the CDK CLI
    python -m infra.app --outdir cdk.out                # the template only: no account, no Docker

The workers are the installed ones (`shared.registry.discover()`); FLEET_PREFIX and resource renames
apply as they do for `fleet bootstrap`. Deployment settings come from `fleet:*` context (infra/config.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `cdk` runs this file from infra/: make the repository importable either way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import App

from infra.config import from_context
from infra.stack import FleetStack
from shared.registry import Registry, discover
from shared.settings import FleetSettings, load_settings

STACK = "Fleet"


def build(app: App, registry: Registry | None = None, settings: FleetSettings | None = None) -> FleetStack:
    registry = registry or discover()
    settings = settings or load_settings()
    registry.check(settings)
    config = from_context(app.node.try_get_context, registry.names())
    # Environment-agnostic: the account and region come from the deploying credentials.
    return FleetStack(
        app,
        STACK,
        registry=registry,
        settings=settings,
        config=config,
        description="fleet: asyncio workers on ECS Fargate, autoscaled on backlog (infra/ in the fleet repository)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.app", description="synthesize the fleet's template")
    parser.add_argument("--outdir", help="cloud assembly folder (default: $CDK_OUTDIR or cdk.out)")
    args = parser.parse_args(argv)
    app = App(outdir=args.outdir) if args.outdir else App()
    build(app)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
