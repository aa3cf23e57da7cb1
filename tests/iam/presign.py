"""Presigned URLs under IAM enforcement: moto cannot authorise a query-signed request while it enforces IAM
(it looks for an `Authorization` header and answers 500), yet a presigned GET is how the clips worker's
ffmpeg reads its source, with the worker's identity.

`PresignShim` stands where S3 would check the URL's signature. A worker's S3 client is routed through it
for presigned URLs only (its other calls go to moto directly); the shim re-signs each such request for
the same user with an `Authorization` header, so moto decides with that user's policy, as S3 would for
the URL, and reports a refusal to the run's recorder.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.faultproxy import HOP_BY_HOP, FaultProxy, Request

OnRefused = Callable[[str], None]  # the bucket a presigned request was refused on


class PresignShim(FaultProxy):
    def __init__(self, upstream: str, region: str) -> None:
        super().__init__(upstream)
        self.region = region
        self._users: dict[str, tuple[str, OnRefused]] = {}  # access key id -> (secret key, on refusal)
        self._users_lock = threading.Lock()
        self.resigned = 0

    def route(self, s3: Any, access_key: str, secret_key: str, on_refused: OnRefused) -> None:
        """Send the presigned URLs `s3` (a client signing with `access_key`) makes through the shim.
        `on_refused` is called on the client's event loop."""
        loop = asyncio.get_running_loop()
        with self._users_lock:
            self._users[access_key] = (secret_key, lambda bucket: loop.call_soon_threadsafe(on_refused, bucket))
        s3.meta.events.register("before-sign.s3", self._through_shim)

    def _through_shim(self, request: AWSRequest, **_: Any) -> None:
        # Before signing: the URL's signature then covers the shim's host, which the shim keeps.
        if request.context.get("is_presign_request"):
            request.url = urlunsplit(urlsplit(request.url)._replace(netloc=urlsplit(self.url).netloc))

    def _forward(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
        path, user = self._resign(request.method, request.path, headers)
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            # The Host header goes through untouched: moto checks it against the signature.
            conn.request(request.method, path, body=request.body or None, headers=headers)
            resp = conn.getresponse()
            status, reply = resp.status, (resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()
        if user is not None and status == 403:
            user[1](urlsplit(path).path.lstrip("/").split("/", 1)[0])
        return reply

    def _resign(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, tuple[str, OnRefused] | None]:
        parts = urlsplit(path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        signed = dict(query)
        if "X-Amz-Signature" not in signed:
            return path, None
        key_id = signed["X-Amz-Credential"].split("/")[0]
        with self._users_lock:
            user = self._users[key_id]
        kept = [(k, v) for k, v in query if not k.startswith("X-Amz-")]
        bare = parts.path + (f"?{urlencode(kept)}" if kept else "")
        host = headers.get("host", "")
        aws = AWSRequest(method=method, url=f"http://{host}{bare}", headers={"Host": host})
        S3SigV4Auth(Credentials(key_id, user[0]), "s3", self.region).add_auth(aws)
        headers.update({k.lower(): v for k, v in aws.headers.items() if k.lower() != "host"})
        with self._users_lock:
            self.resigned += 1
        return bare, user
