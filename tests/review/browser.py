"""Headless Chromium driven over the Chrome DevTools Protocol: a real browser that loads
pages, types, clicks and presses keys as a person does, and takes screenshots. Needs
Debian's ``chromium`` (``tests/setup-machine.sh`` installs it) and ``websocket-client``; nothing
else."""

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one tab. Use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError(
                "chromium is not installed (bash tests/setup-machine.sh installs it)"
            )
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group, whose id is its pid: the renderer, GPU, network and
            # crash-handler processes it starts stay in it, so close() can wait for them all.
            start_new_session=True,
        )
        port = self._devtools_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            seen.append(line)
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                return int(found[1])
            if not line and self.proc.poll() is not None:
                break
        self.close()
        raise RuntimeError("chromium did not start:\n" + "".join(seen)[-3000:])

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self._end_process_group()
        self.proc.stderr.close()
        # Only now: Chromium's processes write into the profile until the last one exits.
        self._profile.cleanup()

    def _end_process_group(self, timeout: float = 10.0) -> None:
        """SIGTERM every process of Chromium's group, SIGKILL what is left after ``timeout``
        seconds, and return once the group is empty."""
        group = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.proc.poll()  # reaps Chromium itself; init reaps the processes it started
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)
        raise RuntimeError(f"chromium's processes (group {group}) are still there after SIGKILL")

    # ------------------------------------------------------------------------- protocol

    def send(self, method: str, **params) -> dict:
        """Send one command and return its result (events meanwhile are dropped)."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        """Evaluate ``expression`` in the page and return its value."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    # ---------------------------------------------------------------------- as a person

    def wait_for(self, expression: str, timeout: float = 20.0):
        """Wait until ``expression`` is truthy in a fully loaded page; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # the page is being replaced
                if self.js("document.readyState") == "complete" and (value := self.js(expression)):
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} never held; the page shows:\n{self.text()}")
            time.sleep(0.1)

    def open(self, url: str) -> None:
        with self.next_page():
            self.send("Page.navigate", url=url)

    @contextlib.contextmanager
    def next_page(self, timeout: float = 20.0):
        """Around an action that loads another page: wait until that page has loaded (a new
        document, parsed to its end: a new one exists before its body has been read)."""
        self.js("window.__left_behind = true")
        yield
        self.wait_for(
            "window.__left_behind === undefined && document.readyState === 'complete'", timeout
        )

    def text(self) -> str:
        try:
            return self.js("document.body ? document.body.innerText : ''") or ""
        except RuntimeError:
            return ""

    def url(self) -> str:
        return self.js("location.href")

    def _centre(self, selector: str) -> tuple[float, float]:
        box = self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
            " })()"
        )
        return box[0], box[1]

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as the mouse does it."""
        x, y = self._centre(selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        """Click into a field and type ``text`` into it."""
        self.click(selector)
        self.send("Input.insertText", text=text)

    def press(self, key: str) -> None:
        """Press and release one key (``Enter``, ``s``, ``2``) on whatever has the focus."""
        codes = {"Enter": ("Enter", 13, "\r")}
        code, vk, text = codes.get(key) or (
            f"Digit{key}" if key.isdigit() else f"Key{key.upper()}",
            ord(key.upper()),
            key,
        )
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
        self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **common)
        self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(data["data"]))
