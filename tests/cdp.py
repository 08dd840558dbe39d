"""A small Chrome DevTools Protocol client: enough to drive a headless Chromium from a test.

The browser is the distribution's (``apt-get install chromium``), started with
``--remote-debugging-port=0``; it prints the websocket URL of its DevTools endpoint on
stderr. Commands are JSON messages with an id; a page is a target attached in "flat"
mode, so its commands carry a ``sessionId`` on the same websocket. Events that arrive
while a command waits for its answer are kept (``Runtime.exceptionThrown`` tells a test
about errors in the page's scripts).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The Chromium to use: ``$PYREXIS_CHROMIUM``, else the first of :data:`BROWSERS` on PATH."""
    given = os.environ.get("PYREXIS_CHROMIUM")
    if given:
        return given
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(Exception):
    """A command the browser answered with an error, or a script that threw."""


class Browser:
    """A headless Chromium and one websocket to its DevTools endpoint."""

    def __init__(self, executable: str, profile_dir: str, timeout: float = 60.0) -> None:
        args = [
            executable, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile_dir}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-extensions", "--disable-background-networking", "--window-size=1280,1000", "about:blank",
        ]  # fmt: skip
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._closing = contextlib.ExitStack()
        self.ws: ClientConnection = self._closing.enter_context(connect(self._endpoint(timeout), max_size=None, open_timeout=timeout))
        self.timeout = timeout
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def _endpoint(self, timeout: float) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                return match.group(1)
        self.close()
        raise CdpError("the browser did not open its DevTools endpoint:\n" + "".join(seen[-20:]))

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"{method}: no answer within {self.timeout} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]
            if "method" in reply:
                self.events.append(reply)

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        return page

    def close(self) -> None:
        try:
            if hasattr(self, "_closing"):
                self._closing.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class Page:
    """One tab, driven through its session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str | None = None) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or expression}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        box = self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e || e.offsetParent === null) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()",
            what=f"{selector} to be visible",
        )  # fmt: skip
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        """Focus a field, select what it holds, and type ``text`` over it."""
        self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
                      " e.focus(); if (e.select) e.select(); return document.activeElement === e; })()",
                      what=f"{selector} to take the focus")  # fmt: skip
        self.call("Input.insertText", {"text": text})

    def select(self, selector: str, value: str) -> None:
        """Choose an option of a <select>, as a person would (a change event follows)."""
        self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      f" if (!e || ![...e.options].some(o => o.value === {json.dumps(value)})) return false;"
                      f" e.value = {json.dumps(value)}; e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
                      what=f"option {value} of {selector}")  # fmt: skip

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))

    def errors(self) -> list[dict[str, Any]]:
        """Exceptions the page's scripts threw so far."""
        return [e for e in self.browser.events if e.get("method") == "Runtime.exceptionThrown" and e.get("sessionId") == self.session]
