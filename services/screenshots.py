"""Headless Chromium driven over the Chrome DevTools Protocol (CDP): the dashboard's
rendered pages as DOM and as PNG screenshots.

A browser cannot send a bearer header by itself, so the token goes in the dashboard's
session cookie (``Network.setCookie``), never in a URL. The browser is started with a
throw-away profile, ``--remote-debugging-port=0`` (it picks a free port and writes it
to ``DevToolsActivePort`` in the profile) and host-resolver rules that resolve no
host but 127.0.0.1 (and the dashboard's own), so a page cannot reach the internet even
if it tried.

The CDP client speaks WebSocket (RFC 6455) over a plain socket: one connection to the
browser target, page sessions multiplexed on it (``Target.attachToTarget`` with
``flatten``). Everything here depends only on the standard library and a ``chromium``
binary; nothing connects at import time.

Exceptions::

    BrowserError            Chromium did not start, or a CDP call failed or timed out
    └── PageNotShown        a page answered with an HTTP status other than 200
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
WINDOW = (1400, 2000)
#: The dashboard pages, as paths under the base URL, and the file name of each one's
#: screenshot (``services.dashboard.PAGES`` lists the same pages for the nav bar).
PAGES: tuple[tuple[str, str], ...] = (
    ("/dashboard", "overview"),
    ("/dashboard/safety", "safety"),
    ("/dashboard/swimmer", "swimmer"),
    ("/dashboard/cytopenia", "cytopenia"),
    ("/dashboard/kinetics", "kinetics"),
    ("/dashboard/disease", "disease"),
    ("/dashboard/alerts", "alerts"),
    ("/dashboard/optimal-dose", "optimal-dose"),
)
COOKIE_NAME = "toxwatch_dashboard"
#: Resolve nothing but these hosts: no page, and none of Chromium's own background
#: services, can reach another host.
ALLOWED_HOSTS = ("127.0.0.1",)
#: Chromium's background services that would otherwise try the network.
QUIET_FLAGS = (
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-component-extensions-with-background-pages",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=NetworkTimeServiceQuerying,Translate,OptimizationHints,MediaRouter,"
    "DialMediaRouteProvider,CertificateTransparencyComponentUpdater,AutofillServerCommunication",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BrowserError(Exception):
    """Chromium did not start, or a DevTools call failed or timed out."""


class PageNotShown(BrowserError):
    """A page answered with an HTTP status other than 200."""


# ---------------------------------------------------------------- WebSocket


class _WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), whole messages in."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
            raise BrowserError(f"not a local ws:// URL: {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.sock.sendall(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BrowserError("DevTools closed the connection during the handshake")
            head += chunk
        status, _, self._buffer = head.partition(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            raise BrowserError(f"DevTools refused the WebSocket: {status[:80]!r}")

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = secrets.token_bytes(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self, timeout: float) -> str:
        """The next whole text message (control frames are answered or skipped)."""
        self.sock.settimeout(timeout)
        message = b""
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._read(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if second & 0x80 else b""
            payload = self._read(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise BrowserError("DevTools closed the connection")
            if opcode == 0x9:
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0" * 4
                                  + payload)  # fmt: skip
                continue
            if opcode == 0xA:
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise BrowserError("DevTools closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------- CDP


@dataclass
class Shown:
    """A page as the browser showed it: the document's HTTP status, its rendered DOM
    and every URL the page requested (from CDP ``Network.requestWillBeSent``)."""

    url: str
    status: int | None
    html: str
    requested: list[str] = field(default_factory=list)


class Page:
    """One browser tab, attached as a flat CDP session."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session_id=self.session_id)

    def set_cookie(self, base_url: str, token: str, name: str = COOKIE_NAME) -> None:
        """The dashboard's session cookie, as ``POST /dashboard/login`` sets it."""
        done = self.call(
            "Network.setCookie",
            {
                "name": name,
                "value": token,
                "url": base_url.rstrip("/") + "/dashboard",
                "path": "/dashboard",
                "httpOnly": True,
                "sameSite": "Strict",
            },
        )
        if not done.get("success", True):
            raise BrowserError("the browser refused the cookie")

    def close(self) -> None:
        """Close the tab (its target)."""
        target = self.call("Target.getTargetInfo").get("targetInfo", {}).get("targetId")
        if target:
            self.browser.call("Target.closeTarget", {"targetId": target})

    def clear_cookies(self) -> None:
        self.call("Network.clearBrowserCookies")

    def show(self, url: str) -> Shown:
        """Navigate to ``url`` and wait for its load event: status, DOM, requests."""
        self.browser.drain(self.session_id)
        navigation = self.call("Page.navigate", {"url": url})
        if navigation.get("errorText"):
            raise BrowserError(f"{url}: {navigation['errorText']}")
        self.browser.wait_for("Page.loadEventFired", self.session_id)
        return self._shown(url, navigation.get("loaderId"))

    def submit_form(self, fields: dict[str, str]) -> Shown:
        """Fill the page's first form and submit it (as a user would), then wait for
        the next page's load event."""
        self.browser.drain(self.session_id)
        script = (
            "(() => { const form = document.forms[0];"
            + "".join(
                f"form.elements[{json.dumps(name)}].value = {json.dumps(value)};"
                for name, value in fields.items()
            )
            + "form.submit(); return true; })()"
        )
        self.call("Runtime.evaluate", {"expression": script, "returnByValue": True})
        self.browser.wait_for("Page.loadEventFired", self.session_id)
        return self._shown(self.evaluate("location.href"), None)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluation failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def cookies(self) -> list[dict[str, Any]]:
        return list(self.call("Network.getCookies").get("cookies", []))

    def screenshot(self, max_height: int = 12_000) -> bytes:
        """A PNG of the whole page (up to ``max_height`` CSS pixels tall)."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": max(WINDOW[0], int(size["width"])),
            "height": min(max(int(size["height"]), 1), max_height),
            "scale": 1,
        }
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
        )
        return base64.b64decode(shot["data"])

    def _shown(self, url: str, loader_id: str | None) -> Shown:
        status = None
        requested = []
        for event in self.browser.events_of(self.session_id):
            params = event.get("params", {})
            if event["method"] == "Network.requestWillBeSent":
                requested.append(params["request"]["url"])
            elif (
                event["method"] == "Network.responseReceived"
                and params.get("type") == "Document"
                and (loader_id is None or params.get("loaderId") == loader_id)
            ):
                status = params["response"]["status"]
        html = self.evaluate("document.documentElement.outerHTML")
        return Shown(url=url, status=status, html=html, requested=requested)


class Browser:
    """Headless Chromium with a throw-away profile, driven over CDP.

    Use as a context manager; the browser is closed (and its profile deleted) on exit
    whatever happened. ``net_log`` names a file for Chromium's NetLog (JSON), written
    out when the browser closes."""

    def __init__(
        self,
        *,
        binary: str = CHROMIUM,
        window: tuple[int, int] = WINDOW,
        net_log: Path | None = None,
        allowed_hosts: Sequence[str] = ALLOWED_HOSTS,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.allowed_hosts = tuple(dict.fromkeys(allowed_hosts))
        self.window = window
        self.net_log = net_log
        self.extra_args = tuple(extra_args)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._ws: _WebSocket | None = None

    def __enter__(self) -> Browser:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def command(self, profile: str) -> list[str]:
        width, height = self.window
        args = [
            self.binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--host-resolver-rules={resolver_rules(self.allowed_hosts)}",
            *QUIET_FLAGS,
        ]
        if self.net_log is not None:
            args.append(f"--log-net-log={self.net_log}")
        return [*args, *self.extra_args, "about:blank"]

    def start(self) -> None:
        if shutil.which(self.binary) is None:
            raise BrowserError(f"no Chromium at {self.binary}")
        self._profile = tempfile.mkdtemp(prefix="toxwatch-chromium-")
        log = Path(self._profile) / "chromium.log"
        with log.open("wb") as stderr:
            self._process = subprocess.Popen(
                self.command(self._profile),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while True:
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if self._process.poll() is not None:
                raise BrowserError(f"Chromium exited ({self._process.returncode}): "
                                   f"{log.read_text(errors='replace')[-2000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                raise BrowserError("Chromium did not open its DevTools port in time")
            time.sleep(0.05)
        self._ws = _WebSocket(f"ws://127.0.0.1:{lines[0]}{lines[1]}", self.timeout)

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send one CDP command and wait for its answer (events meanwhile are kept)."""
        if self._ws is None:
            raise BrowserError("the browser is not running")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._next(deadline, method)
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                return dict(answer.get("result", {}))

    def wait_for(self, method: str, session_id: str) -> dict[str, Any]:
        """Wait for an event of a session (an already received one counts)."""
        for event in self._events:
            if event["method"] == method and event.get("sessionId") == session_id:
                return event
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._next(deadline, method)
            if event.get("method") == method and event.get("sessionId") == session_id:
                return event

    def drain(self, session_id: str) -> None:
        self._events = [e for e in self._events if e.get("sessionId") != session_id]

    def events_of(self, session_id: str) -> list[dict[str, Any]]:
        return [e for e in self._events if e.get("sessionId") == session_id]

    def _next(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        if self._ws is None:
            raise BrowserError("the browser is not running")
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrowserError(f"timed out waiting for {waiting_for}")
        try:
            message: dict[str, Any] = json.loads(self._ws.receive(left))
        except TimeoutError:
            raise BrowserError(f"timed out waiting for {waiting_for}") from None
        if "method" in message:
            self._events.append(message)
        return message

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        page.call("Page.enable")
        page.call("Network.enable")
        return page

    def close(self) -> None:
        """Close the browser (gracefully, so that the NetLog is complete), then make
        sure its process group is gone and delete the profile."""
        process, self._process = self._process, None
        if self._ws is not None:
            with contextlib.suppress(BrowserError, OSError):
                self._ws.send(json.dumps({"id": next(self._ids), "method": "Browser.close"}))
            self._ws.close()
            self._ws = None
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill_group(process, signal.SIGKILL)
                    process.wait(timeout=5)
            _kill_group(process, signal.SIGKILL)  # helpers left behind, if any
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None


def resolver_rules(allowed_hosts: Sequence[str]) -> str:
    """Chromium host-resolver rules that resolve only ``allowed_hosts``."""
    for host in allowed_hosts:
        if not host or any(c in host for c in ", \t\n"):
            raise BrowserError(f"not a host name: {host!r}")
    return ", ".join(["MAP * ~NOTFOUND", *(f"EXCLUDE {host}" for host in allowed_hosts)])


def _kill_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


# ---------------------------------------------------------------- screenshots


@contextlib.contextmanager
def signed_in_page(base_url: str, token: str, **browser_options: Any) -> Iterator[Page]:
    """A page of a fresh browser holding the dashboard cookie for ``token``."""
    with Browser(**browser_options) as browser:
        page = browser.new_page()
        page.set_cookie(base_url, token)
        yield page


def take_screenshots(
    base_url: str,
    token: str,
    out_dir: Path | str,
    *,
    pages: Sequence[tuple[str, str]] = PAGES,
    binary: str = CHROMIUM,
    timeout: float = 30.0,
) -> list[Path]:
    """One PNG per dashboard page (``out_dir/<name>.png``), as the holder of ``token``
    sees it; a page that does not answer 200 (a refused token, a role without access)
    raises :class:`PageNotShown`. The browser resolves only 127.0.0.1 and the host of
    ``base_url``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    host = urlsplit(base_url).hostname
    if host is None:
        raise BrowserError(f"not a URL: {base_url}")
    written = []
    browser = {"binary": binary, "timeout": timeout, "allowed_hosts": (*ALLOWED_HOSTS, host)}
    with signed_in_page(base_url, token, **browser) as page:
        for path, name in pages:
            url = base_url.rstrip("/") + path
            shown = page.show(url)
            if shown.status != 200:
                raise PageNotShown(f"{url}: HTTP {shown.status}")
            target = out / f"{name}.png"
            target.write_bytes(page.screenshot())
            written.append(target)
    return written
