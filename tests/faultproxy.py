"""A fault-injecting HTTP reverse proxy in front of the AWS emulator.

Point one client at `proxy.url` and everything it sends is forwarded to the emulator, except requests that
match a rule (for the first `times` matches, or always). A rule's `action` says what happens to them, exactly
as a real network or service fault would reach botocore — over HTTP, through its parsers and retry handlers:

- `fault`: an AWS-style error response (`status`, `code`); the request never reaches the emulator;
- `delay`: forwarded after `delay` seconds (a slow network or a stalled service);
- `lose_reply`: forwarded, so it takes effect, then the connection is closed before any reply is sent
  (the request took effect, the answer never came).

    with FaultProxy(aws_endpoint) as proxy:
        rule = proxy.add(Rule("ddb-update", amz_target("DynamoDB_20120810.UpdateItem"), times=2))
        ... client with endpoint_url=proxy.url ...
        rule.hits  # monotonic arrival time of every matching request, faulted or forwarded
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def target(self) -> str:
        """`X-Amz-Target` of JSON-protocol services (DynamoDB, ...)."""
        return self.headers.get("x-amz-target", "")

    @property
    def action(self) -> str:
        """`Action` of query-protocol services (SNS, ...), from the form body or the query string."""
        form = parse_qs(self.body.decode("utf-8", "replace")) if self.body else {}
        query = parse_qs(urlsplit(self.path).query)
        return (form.get("Action") or query.get("Action") or [""])[0]


Matcher = Callable[[Request], bool]


def amz_target(target: str) -> Matcher:
    return lambda r: r.target == target


def query_action(action: str) -> Matcher:
    return lambda r: r.action == action


@dataclass
class Rule:
    name: str
    match: Matcher
    times: int | None = None  # None: fault every match
    action: Literal["fault", "delay", "lose_reply"] = "fault"
    delay: float = 0.0
    status: int = 500
    code: str = "InternalServerError"
    message: str = "fault injected by tests/faultproxy.py"
    hits: list[float] = field(default_factory=list)
    faulted: int = 0

    def take(self) -> bool:
        """Record a matching request; True when it must fail."""
        self.hits.append(time.monotonic())
        if self.times is None or self.faulted < self.times:
            self.faulted += 1
            return True
        return False


def error_response(request: Request, rule: Rule) -> tuple[dict[str, str], bytes]:
    request_id = str(uuid.uuid4())
    if request.target:  # JSON protocol: botocore reads the code from `__type` after the '#'
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{rule.code}", "message": rule.message}).encode()
        return {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": request_id}, body
    fault = "Receiver" if rule.status >= 500 else "Sender"
    body = (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<Error><Type>{fault}</Type><Code>{rule.code}</Code><Message>{rule.message}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    return {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}, body


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _decide(self, request: Request) -> Rule | None:
        with self._lock:
            self.requests.append(request)
            for rule in self.rules:
                if rule.match(request):
                    return rule if rule.take() else None
        return None

    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                rule = proxy._decide(request)
                if rule is not None and rule.action == "fault":
                    headers, payload = error_response(request, rule)
                    self._reply(rule.status, headers, payload)
                    return
                if rule is not None and rule.action == "delay":
                    time.sleep(rule.delay)
                status, headers, payload = proxy._forward(request)
                if rule is not None and rule.action == "lose_reply":
                    self.close_connection = True  # the emulator acted; the client never hears of it
                    return
                self._reply(status, headers, payload)

            def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per request would drown the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def _forward(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
            headers["host"] = f"{self.upstream_host}:{self.upstream_port}"
            conn.request(request.method, request.path, body=request.body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def sqs_action(action: str) -> Matcher:
    """SQS speaks the JSON protocol: `X-Amz-Target: AmazonSQS.<Action>`."""
    return amz_target(f"AmazonSQS.{action}")
