"""Load a page in headless Chromium over the DevTools protocol and report what went wrong.

No browser download, no Playwright: the system's Chromium (Debian: `apt-get install chromium`,
or SAMREP_CHROMIUM=/path/to/chrome) driven with `websocket-client`. Collected: uncaught JS
exceptions, console.error calls, browser log errors, failed resource loads, every request URL
(only file:, data:, blob: and about: are allowed: a report must open offline), the metrics
table, every <img> (decoded and drawn at a non-zero size) and a full-page screenshot.

By hand: python -m tests.browser reports/cpu/index.html [shot.png]
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ALLOWED_SCHEMES = ("file:", "data:", "blob:", "about:")
# The metrics table of a report: its header has all of these.
TABLE_COLUMNS = ("engine", "precision", "bs", "p_val_whole", "p_infer_core", "MFU", "acc", "mem")
MIN_TABLE_ROWS = 3

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)
# Anything that would leave the machine fails at once instead of waiting on DNS.
BLOCKED_URLS = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """SAMREP_CHROMIUM, else the first Chromium/Chrome on PATH."""
    env = os.environ.get("SAMREP_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    url: str
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def outside_requests(self) -> list[str]:
        """Requests for anything but file:, data:, blob:, about: (i.e. the network)."""
        return [u for u in self.requests if not u.startswith(ALLOWED_SCHEMES)]

    @property
    def metrics_table(self) -> dict | None:
        for t in self.tables:
            if t["visible"] and all(c in t["header"] for c in TABLE_COLUMNS):
                return t
        return None

    @property
    def broken_images(self) -> list[dict]:
        return [
            i
            for i in self.images
            if not (i["complete"] and i["naturalWidth"] > 0 and i["width"] > 0 and i["height"] > 0)
        ]

    def errors(self) -> list[str]:
        """Everything that went wrong while loading, one line each."""
        out = [f"JS exception: {e}" for e in self.exceptions]
        out += [f"console.error: {e}" for e in self.console_errors]
        out += [f"browser log error: {e}" for e in self.log_errors]
        out += [f"failed load: {e}" for e in self.failed_loads]
        out += [f"network request: {u}" for u in self.outside_requests]
        return out

    def problems(self, min_images: int = 1) -> list[str]:
        """errors() plus the report's content checks: the metrics table and the figures."""
        out = self.errors()
        table = self.metrics_table
        if table is None:
            out.append(f"no visible table whose header has all of {', '.join(TABLE_COLUMNS)}")
        elif table["rows"] < MIN_TABLE_ROWS:
            out.append(f"metrics table has {table['rows']} rows (< {MIN_TABLE_ROWS})")
        if len(self.images) < min_images:
            out.append(f"{len(self.images)} images (< {min_images})")
        for img in self.broken_images:
            out.append(
                f"image not decoded or not drawn: {img['src'][:80]} "
                f"(natural {img['naturalWidth']}x{img['naturalHeight']}, "
                f"drawn {img['width']}x{img['height']})"
            )
        return out

    def summary(self) -> str:
        table = self.metrics_table
        rows = f"{table['rows']} rows" if table else "missing"
        return (
            f"{self.url}: {len(self.errors())} errors, {len(self.requests)} requests "
            f"({len(self.outside_requests)} outside file:/data:/blob:/about:), "
            f"{len(self.tables)} tables (metrics table: "
            f"{rows}), "
            f"{len(self.images)} images ({len(self.broken_images)} broken)"
            + (f", screenshot {self.screenshot}" if self.screenshot else "")
        )


# Runs in the page once it has loaded: the tables and the images, as plain data.
_DOM_JS = """(async () => {
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  };
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map((i) => i.decode().catch(() => null)));
  return {
    tables: Array.from(document.querySelectorAll('table')).map((t) => ({
      header: Array.from(t.querySelectorAll('thead th')).map((th) => th.textContent.trim()),
      rows: t.querySelectorAll('tbody tr').length,
      visible: visible(t),
    })),
    images: imgs.map((i) => {
      const r = i.getBoundingClientRect();
      return {src: i.src, complete: i.complete, naturalWidth: i.naturalWidth,
              naturalHeight: i.naturalHeight, width: r.width, height: r.height};
    }),
  };
})()"""


class Chromium:
    """One headless Chromium with a fresh profile; a context manager that stops it fully."""

    def __init__(self, executable: str | None = None, timeout: float = 30.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError(
                "chromium not found: `apt-get install chromium` (make test tries) "
                "or set SAMREP_CHROMIUM"
            )
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.profile: Path | None = None
        self.ws = None
        self._id = 0
        self._events: list[dict] = []

    # -- process -------------------------------------------------------------------------------
    def start(self) -> Chromium:
        import websocket  # websocket-client (pyproject [dev])

        self.profile = Path(tempfile.mkdtemp(prefix="samrep-chromium-"))
        self._log = open(self.profile.parent / f"{self.profile.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # its own process group: stop() ends every child
        )
        # With --remote-debugging-port=0 Chromium picks a port and writes it (and the browser's
        # websocket path) to <profile>/DevToolsActivePort.
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {self._tail()}")
            lines = port_file.read_text().split("\n") if port_file.is_file() else []
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                break
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port: {self._tail()}")
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        self.ws = websocket.create_connection(url, timeout=self.timeout, suppress_origin=True)
        return self

    def _tail(self) -> str:
        try:
            self._log.flush()
            return (self.profile.parent / f"{self.profile.name}.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.proc is not None:
            # Children (renderer, GPU, zygote) share the group; make sure none is left.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc = None
        if self.profile is not None:
            self._log.close()
            _remove_own_temp(self.profile)
            _remove_own_temp(self.profile.parent / f"{self.profile.name}.log")
            self.profile = None

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- protocol ------------------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._recv(deadline - time.monotonic())
            if reply is None:
                continue
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)
        raise BrowserError(f"{method}: no reply in {self.timeout} s")

    def _recv(self, timeout: float) -> dict | None:
        import websocket

        self.ws.settimeout(max(timeout, 0.01))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def pump(self, seconds: float) -> None:
        """Read events for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self._recv(deadline - time.monotonic())
            if msg is not None:
                self._events.append(msg)

    def wait_event(self, method: str, session: str, seconds: float) -> dict | None:
        deadline = time.monotonic() + seconds
        seen = 0
        while True:
            for ev in self._events[seen:]:
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self._events)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            msg = self._recv(left)
            if msg is not None:
                self._events.append(msg)

    # -- one page ------------------------------------------------------------------------------
    def check_page(
        self, target: str | Path, screenshot: Path | None = None, settle: float = 1.0
    ) -> PageReport:
        """Load a page (a path or a URL) in a new tab; collect errors, requests, DOM facts."""
        url = Path(target).resolve().as_uri() if "://" not in str(target) else str(target)
        report = PageReport(url=url)
        tab = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": tab, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=s)
            self.send("Network.setBlockedURLs", {"urls": BLOCKED_URLS}, session=s)
            self.send("Emulation.setDeviceMetricsOverride", _VIEWPORT, session=s)
            self._events = [e for e in self._events if e.get("sessionId") != s]
            nav = self.send("Page.navigate", {"url": url}, session=s)
            if nav.get("errorText"):
                report.failed_loads.append(f"{url}: {nav['errorText']}")
            if self.wait_event("Page.loadEventFired", s, self.timeout) is None:
                report.failed_loads.append(f"{url}: no load event in {self.timeout} s")
            self.pump(settle)  # late script errors, lazy requests
            result = self.send(
                "Runtime.evaluate",
                {"expression": _DOM_JS, "awaitPromise": True, "returnByValue": True},
                session=s,
            )
            if "exceptionDetails" in result:
                raise BrowserError(f"DOM check failed: {result['exceptionDetails']}")
            dom = result["result"]["value"]
            report.tables, report.images = dom["tables"], dom["images"]
            if screenshot is not None:
                report.screenshot = self._screenshot(s, Path(screenshot))
            self.pump(0.1)
            self._collect(report, s)
        finally:
            self.send("Target.closeTarget", {"targetId": tab})
        return report

    def _screenshot(self, session: str, path: Path) -> Path:
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        width, height = int(size["width"]), min(int(size["height"]), 16000)
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
            session=session,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _collect(self, report: PageReport, session: str) -> None:
        failed_ids = {}
        urls = {}
        for ev in self._events:
            if ev.get("sessionId") != session:
                continue
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                text = d.get("exception", {}).get("description") or d.get("text", "")
                report.exceptions.append(text.splitlines()[0] if text else str(d))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = [a.get("value", a.get("description", "")) for a in p.get("args", [])]
                report.console_errors.append(" ".join(str(a) for a in args))
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                e = p["entry"]
                report.log_errors.append(f"{e.get('text', '')} {e.get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                urls[p["requestId"]] = p["request"]["url"]
                report.requests.append(p["request"]["url"])
            elif method == "Network.loadingFailed":
                failed_ids[p["requestId"]] = p.get("blockedReason") or p.get("errorText", "")
            elif method == "Network.responseReceived":
                status = p["response"].get("status", 0)
                if status >= 400:
                    failed_ids[p["requestId"]] = f"HTTP {status}"
        for rid, why in failed_ids.items():
            report.failed_loads.append(f"{urls.get(rid, rid)[:200]}: {why}")
        self._events = [e for e in self._events if e.get("sessionId") != session]


_VIEWPORT = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}


def _remove_own_temp(path: Path) -> None:
    """Remove a path this module made with tempfile; refuse anything else."""
    path = Path(path).resolve()
    tmp = Path(tempfile.gettempdir()).resolve()
    if path.parent != tmp or not path.name.startswith("samrep-chromium-"):
        raise BrowserError(f"refusing to remove {path}: not a samrep-chromium temp path")
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def check_page(target: str | Path, screenshot: Path | None = None) -> PageReport:
    """Start Chromium, load one page, stop Chromium."""
    with Chromium() as browser:
        return browser.check_page(target, screenshot=screenshot)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 2
    shot = Path(argv[1]) if len(argv) > 1 else None
    try:
        report = check_page(argv[0], screenshot=shot)
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    problems = report.problems()
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
