"""Real local receivers for alert channels: a webhook endpoint and an SMTP sink.

Used by the integration tests, the demo and the delivery benchmark. Both listen on
loopback, run in daemon threads, start only when asked, and can be stopped and
started again on the same port to play an endpoint that goes down and comes back.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from infra.channels import IDEMPOTENCY_HEADER, verify_signature

#: ``Delivery.status`` of a request the receiver never answered (stopped, or the
#: client had gone).
NOT_ANSWERED = 0


@dataclass(frozen=True)
class Delivery:
    """One request a ``WebhookReceiver`` received and the HTTP status it answered."""

    received_at: float
    headers: dict[str, str]
    body: dict[str, Any]
    valid: bool
    idempotency_key: str
    status: int

    @property
    def accepted(self) -> bool:
        return self.valid and 200 <= self.status < 300


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    receiver: WebhookReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookReceiver:
    """An HTTP endpoint that verifies ToxWatch webhook signatures and records every
    request. ``deliveries`` are the accepted ones, recorded once answered 200."""

    def __init__(
        self,
        secret: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.secret = secret
        self.host = host
        self.port = port
        self.on_delivery = on_delivery
        self._lock = threading.Condition()
        self._requests: list[Delivery] = []
        self._accepted: list[Delivery] = []
        self._planned: list[tuple[int, float]] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the receiver has not been started")
        return f"http://{self.host}:{self.port}/alerts"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> WebhookReceiver:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"webhook-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; the port is kept for a later ``start``."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` instead of accepting them."""
        with self._lock:
            self._planned += [(status, 0.0)] * n

    def stall_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` requests ``seconds`` before answering them (a slow
        endpoint). A client with a shorter timeout gives up first, yet the request may
        still count as accepted, as on a real server: hence idempotency keys."""
        with self._lock:
            self._planned += [(0, seconds)] * n

    @property
    def requests(self) -> list[Delivery]:
        """Every request answered so far, accepted or not."""
        with self._lock:
            return list(self._requests)

    @property
    def deliveries(self) -> list[Delivery]:
        """The accepted requests (valid signature, answered 200)."""
        with self._lock:
            return list(self._accepted)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Delivery]:
        """The accepted deliveries once there are at least ``n``."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._accepted) >= n, timeout):
                raise TimeoutError(
                    f"{len(self._accepted)} of {n} webhook deliveries after {timeout:g} s"
                )
            return list(self._accepted)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        received_at = time.time()
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        headers = dict(request.headers.items())
        valid = verify_signature(self.secret, headers, raw, now=received_at)
        try:
            body = json.loads(raw)
        except ValueError:
            body, valid = {}, False
        if not isinstance(body, dict):
            body, valid = {}, False
        key = next((v for k, v in headers.items() if k.lower() == IDEMPOTENCY_HEADER.lower()), "")
        with self._lock:
            planned_status, delay = self._planned.pop(0) if self._planned else (0, 0.0)
        if delay and self._stopping.wait(delay):
            status = NOT_ANSWERED
        else:
            status = planned_status or (200 if valid else 401)
        delivery = Delivery(received_at, headers, body, valid, key, status)
        with self._lock:
            self._requests.append(delivery)
        if status == NOT_ANSWERED:
            return
        if not _answer(request, status):
            with self._lock:
                index = self._requests.index(delivery)
                self._requests[index] = replace(delivery, status=NOT_ANSWERED)
            return
        if not delivery.accepted:
            return
        with self._lock:
            self._accepted.append(delivery)
            self._lock.notify_all()
        if self.on_delivery is not None:
            self.on_delivery(delivery)


def _answer(request: BaseHTTPRequestHandler, status: int) -> bool:
    """Write the response; whether the client got it (it may have given up)."""
    text = {200: "accepted", 401: "invalid signature"}.get(status, "refused")
    payload = json.dumps({"status": status, "result": text}).encode()
    try:
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)
        request.wfile.flush()
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class ReceivedMail:
    """One message an ``SmtpSink`` accepted."""

    received_at: float
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: Message


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (aiosmtpd's Controller cannot bind port 0:
    it connects to its own port to check it started)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.sink._receive(envelope)


class SmtpSink:
    """An SMTP server that keeps every message it accepts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Condition()
        self._messages: list[ReceivedMail] = []
        self._replies: list[str] = []
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        if self._controller is not None:
            return self
        if not self.port:
            self.port = free_port(self.host)
        controller = Controller(
            _SinkHandler(self),
            hostname=self.host,
            port=self.port,
            server_hostname="toxwatch-sink",
            ready_timeout=5.0,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening; the port is kept for a later ``start``."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reject_next(self, n: int, reply: str = "550 5.7.1 Message rejected") -> None:
        """Answer the DATA of the next ``n`` messages with ``reply`` (a 4xx or 5xx)."""
        with self._lock:
            self._replies += [reply] * n

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[ReceivedMail]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(f"{len(self._messages)} of {n} e-mails after {timeout:g} s")
            return list(self._messages)

    def _receive(self, envelope: Any) -> str:
        with self._lock:
            if self._replies:
                return self._replies.pop(0)
            content = envelope.original_content or envelope.content
            if isinstance(content, str):
                content = content.encode()
            self._messages.append(
                ReceivedMail(
                    time.time(),
                    str(envelope.mail_from),
                    tuple(envelope.rcpt_tos),
                    email.message_from_bytes(content, policy=email.policy.default),
                )
            )
            self._lock.notify_all()
        return "250 Message accepted for delivery"
