"""A local ECS container agent: the task scale-in protection endpoint as AWS documents it and the agent
implements it (`$ECS_AGENT_URI/task-protection/v1/state`).

- PUT `{"ProtectionEnabled": bool, "ExpiresInMinutes"?: 1-2880}` (unknown fields refused) -> 200
  `{"protection": {"ExpirationDate", "ProtectionEnabled", "TaskArn"}}`; GET returns the current state;
- ECS's own refusals come back as 200 `{"failure": {"Arn", "Detail", "Reason"}}` (e.g. TASK_NOT_VALID
  for a task outside a service); bad requests as 400 `{"error": {"Arn", "Code", "Message"}}`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/fleet/0123456789abcdef0"
CONTAINER = "0123456789abcdef0-1234567890"
DEFAULT_MINUTES = 120


@dataclass
class AgentState:
    enabled: bool = False
    expires: datetime | None = None
    history: list[tuple[float, bool, int | None]] = field(default_factory=list)  # (time, enabled, minutes)
    refuse: str | None = None  # a failure Reason to answer every PUT with
    requests: int = 0  # PUTs received, refused or not

    def protection(self) -> dict[str, Any]:
        return {
            "ExpirationDate": self.expires.isoformat().replace("+00:00", "Z") if self.expires else None,
            "ProtectionEnabled": self.enabled,
            "TaskArn": TASK_ARN,
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"error": {"Arn": TASK_ARN, "Code": code, "Message": message}})

    def _route(self) -> bool:
        if self.path != f"/api/{CONTAINER}/task-protection/v1/state":
            self._error(404, "ResourceNotFoundException", "Failed to find a task for the request")
            return False
        return True

    def do_GET(self) -> None:
        if self._route():
            self._reply(200, {"protection": self.server.state.protection()})

    def do_PUT(self) -> None:
        if not self._route():
            return
        state = self.server.state
        state.requests += 1
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
            if not isinstance(body, dict) or set(body) - {"ProtectionEnabled", "ExpiresInMinutes"}:
                raise ValueError
        except ValueError:
            self._error(400, "InvalidParameterException", "UpdateTaskProtection: failed to decode request")
            return
        if not isinstance(body.get("ProtectionEnabled"), bool):
            self._error(400, "InvalidParameterException", "Invalid request: does not contain 'ProtectionEnabled' field")
            return
        minutes = body.get("ExpiresInMinutes")
        if minutes is not None and not (isinstance(minutes, int) and 1 <= minutes <= 2880):
            self._error(400, "InvalidParameterException", "expiresInMinutes must be between 1 and 2880")
            return
        if state.refuse:
            self._reply(200, {"failure": {"Arn": TASK_ARN, "Detail": None, "Reason": state.refuse}})
            return
        state.enabled = body["ProtectionEnabled"]
        expires_in = minutes or DEFAULT_MINUTES
        state.expires = datetime.now(UTC) + timedelta(minutes=expires_in) if state.enabled else None
        state.history.append((time.monotonic(), state.enabled, minutes))
        self._reply(200, {"protection": state.protection()})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: AgentState


class EcsAgent:
    """`with EcsAgent() as agent:` then set `ECS_AGENT_URI=agent.uri`."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = AgentState()
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/api/{CONTAINER}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def state(self) -> AgentState:
        return self.server.state

    def __enter__(self) -> EcsAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
