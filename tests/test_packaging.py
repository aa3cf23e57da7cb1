"""The shipped image and compose files agree with the code: every registered worker has a compose
service checked for its own worker; the image runs as a non-root user under tini, health-checks the
worker it actually runs, and installs exactly the locked production dependencies (no moto)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra.compose import ENDPOINT, render
from shared.emulator import MISSING_MOTO
from shared.health import HealthState, write_health
from shared.registry import discover

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
MOTO_OVERRIDE = ROOT / "docker" / "compose.moto.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
# Never in the production image: the emulator and its server stack, test and infra tools.
NOT_IN_IMAGE = {"moto", "werkzeug", "flask", "pytest", "testcontainers", "aws-cdk-lib", "cfn-lint", "mypy", "ruff"}


# --- docker-compose.yml ----------------------------------------------------------------------------


def compose() -> dict[str, dict[str, dict[str, object]]]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_the_committed_compose_file_is_the_one_the_registry_generates() -> None:
    # Given the registered workers, When the compose file is generated, Then it is the committed one
    assert COMPOSE.read_text() == render(discover(plugins="")), "docker-compose.yml is stale: run `make compose`"


def test_every_registered_worker_has_a_service_pointed_at_the_emulator_and_checked_for_itself() -> None:
    services = compose()["services"]
    # Given every registered worker
    for name in discover(plugins="").names():
        # Then it has a service, which runs that worker against the local AWS endpoint
        service = services.get(name)
        assert service is not None, f"no compose service for worker {name!r}"
        assert service["command"] == ["worker", name]
        assert service["environment"]["FLEET_ENDPOINT_URL"] == ENDPOINT  # type: ignore[index]
        # And its health check is its own worker's heartbeat
        assert service["healthcheck"]["test"] == ["CMD", "fleet", "health", name]  # type: ignore[index]
        # And it starts once bootstrap has created the resources, which waits for a healthy emulator
        assert service["depends_on"] == {"bootstrap": {"condition": "service_completed_successfully"}}
        assert service["image"] == services["bootstrap"]["image"]
    assert services["bootstrap"]["command"] == ["bootstrap"]
    assert services["bootstrap"]["depends_on"] == {"aws": {"condition": "service_healthy"}}
    assert ENDPOINT == "http://aws:4566" and "4566:4566" in services["aws"]["ports"][0]  # type: ignore[index]


def test_a_missing_localstack_token_fails_no_compose_command() -> None:
    # Given the compose files as text (compose interpolates before it parses)
    text = COMPOSE.read_text() + MOTO_OVERRIDE.read_text()
    variables = re.findall(r"\$\{([^}]*)\}", text)
    # Then no variable is required (`${X:?msg}` / `${X?msg}` fail every command, config and build too)
    assert variables and not [v for v in variables if re.match(r"^\w+:?\?", v)]
    # And the token is passed through to LocalStack, empty when unset
    aws = compose()["services"]["aws"]
    assert aws["environment"]["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"  # type: ignore[index]
    assert "localstack/localstack" in str(aws["image"])


def test_the_moto_override_replaces_only_the_emulator_on_the_same_port() -> None:
    override = yaml.safe_load(MOTO_OVERRIDE.read_text())
    # Then it swaps the `aws` service for the moto server, listening where the workers expect it
    assert set(override["services"]) == {"aws"}
    aws = override["services"]["aws"]
    assert "motoserver/moto" in aws["image"]
    assert aws["entrypoint"][:1] == ["moto_server"] and aws["entrypoint"][-2:] == ["-p", "4566"]
    assert "4566/moto-api" in " ".join(aws["healthcheck"]["test"])


# --- docker/Dockerfile -----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


def stages() -> dict[str, list[Instruction]]:
    """The Dockerfile's instructions by stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            current = []
            out[args.split(" AS ")[-1].strip() if " AS " in args else str(len(out))] = current
        current.append(Instruction(keyword.upper(), args.strip()))
    return out


def final_stage() -> list[Instruction]:
    return list(stages().values())[-1]


def one(instructions: list[Instruction], keyword: str) -> str:
    (found,) = [i.args for i in instructions if i.keyword == keyword]
    return found


def test_the_image_is_multi_stage_on_slim_python_with_debians_ffmpeg() -> None:
    built = stages()
    assert list(built) == ["build", "runtime"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    runtime = final_stage()
    assert any(i.keyword == "RUN" and "apt-get install" in i.args and "ffmpeg" in i.args for i in runtime)
    # The code comes from the build stage: the runtime stage installs no Python package itself
    assert not [i for i in runtime if i.keyword == "RUN" and "pip" in i.args]


def test_the_image_runs_as_a_non_root_user_with_an_exec_form_entrypoint() -> None:
    runtime = final_stage()
    user = one(runtime, "USER").split(":")[0]
    assert user not in ("root", "0", "")
    entrypoint = json.loads(one(runtime, "ENTRYPOINT"))  # exec form is JSON; shell form is not
    assert entrypoint == ["tini", "--", "fleet"]  # SIGTERM reaches the runtime, which drains
    assert one(runtime, "STOPSIGNAL") == "SIGTERM"


def test_the_health_check_checks_the_running_worker_not_a_variable() -> None:
    check = one(final_stage(), "HEALTHCHECK")
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command == ["fleet-healthcheck"]
    assert "FLEET_WORKER" not in DOCKERFILE.read_text()
    assert "COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/fleet-healthcheck" in DOCKERFILE.read_text()


def test_no_moto_in_the_final_stage_and_exactly_the_locked_dependencies_installed() -> None:
    # Given the build stage: the lock, then the package without resolving anything again
    build = stages()["build"]
    runs = [i.args for i in build if i.keyword == "RUN"]
    assert "pip install --no-deps -r requirements.lock" in runs
    assert any(r.startswith("pip install --no-deps . ") for r in runs)  # no extras: no [emulator]
    # Then nothing in the runtime stage names the emulator
    assert "moto" not in " ".join(i.args for i in final_stage()).lower()
    # And the lock holds no emulator, test or infra tool
    locked = lock()
    assert not NOT_IN_IMAGE & set(locked)


def lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not pinned: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_satisfies_every_production_dependency_range() -> None:
    # Given pyproject's dependencies (no extras)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = lock()
    # Then each is locked at a version its range accepts (`make lock` after changing them)
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in docker/requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name]), f"{name}=={locked[name]} is outside {spec!r}"


def third_party_imports() -> set[str]:
    """Top-level modules shared/ and workers/ import at run time (not under TYPE_CHECKING)."""
    found: set[str] = set()
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
            for node in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("shared", "workers")}


def test_every_module_the_workers_import_is_in_the_production_lock() -> None:
    # Given the third-party modules the runtime and the workers import
    modules = third_party_imports() - {"moto"}  # shared/emulator.py imports it only when asked, with a clear error
    owners = packages_distributions()
    locked = lock()
    # Then the production install has each one (aiobotocore 3 dropped its boto3 extra: this caught it)
    missing = sorted(m for m in modules if not {canonicalize_name(d) for d in owners.get(m, [m])} & set(locked))
    assert missing == []


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert rules[0] == "*"  # everything out, then only what is copied back in
    allowed = [rule[1:].rstrip("/") for rule in rules if rule[0] == "!"]
    copied = []
    for instructions in stages().values():
        for i in instructions:
            if i.keyword == "COPY" and "--from=" not in i.args:
                copied += [a for a in i.args.split()[:-1] if not a.startswith("--")]
    assert copied and all(any(c.rstrip("/").startswith(a) for a in allowed) for c in copied), (copied, allowed)


def test_the_production_install_without_moto_says_what_to_install() -> None:
    # Given an install without the emulator extra (moto made unimportable)
    code = "import sys; sys.modules['moto'] = None; from shared.cli import main; sys.exit(main(['up', '--embedded']))"
    # When the embedded emulator is asked for
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    # Then fleet says what to install instead of a traceback
    assert done.returncode == 2, done.stderr
    assert MISSING_MOTO in done.stderr and "Traceback" not in done.stderr


# --- docker/healthcheck.py -------------------------------------------------------------------------


@pytest.fixture
def healthcheck() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fleet_healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_proc(tmp_path: Path, *commands: list[str]) -> Path:
    proc = tmp_path / "proc"
    for pid, argv in enumerate(commands, start=1):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "self").mkdir(parents=True, exist_ok=True)
    return proc


def heartbeat(directory: Path, worker: str, age: float = 0.0) -> None:
    now = time.time() - age
    write_health(str(directory), HealthState(worker, 7, "running", 0, 3, 0, now, now, 30.0))


@pytest.mark.parametrize(
    ("argv", "worker"),
    [
        (["tini", "--", "fleet", "worker", "ingest"], "ingest"),
        (["/opt/venv/bin/python", "/opt/venv/bin/fleet", "worker", "compact", "--burst"], "compact"),
        (["tini", "--", "fleet", "bootstrap"], None),
        (["fleet", "worker", "--help"], None),
        (["/bin/sh", "-c", "echo worker ingest"], None),
    ],
)
def test_the_worker_is_read_from_its_command_line(healthcheck: ModuleType, argv: list[str], worker: str | None) -> None:
    assert healthcheck.worker_of(argv) == worker


def test_the_container_is_healthy_only_while_its_own_worker_beats(
    healthcheck: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a container whose PID 1 is tini running `fleet worker ingest`, and a python child
    proc = fake_proc(
        tmp_path,
        ["tini", "--", "fleet", "worker", "ingest"],
        ["/opt/venv/bin/python", "/opt/venv/bin/fleet", "worker", "ingest"],
    )
    health = tmp_path / "health"
    monkeypatch.setenv("FLEET_HEALTH_DIR", str(health))
    # When only another worker has a heartbeat (what FLEET_WORKER=echo used to check), Then unhealthy
    heartbeat(health, "echo")
    assert healthcheck.main(proc) == 1
    # When ingest beats, Then healthy
    heartbeat(health, "ingest")
    assert healthcheck.main(proc) == 0
    # When its heartbeat goes stale (a wedged loop), Then unhealthy again
    heartbeat(health, "ingest", age=120)
    assert healthcheck.main(proc) == 1
    # And with no worker process at all (bootstrap, a crash), unhealthy
    assert healthcheck.main(fake_proc(tmp_path / "other", ["tini", "--", "fleet", "bootstrap"])) == 1
