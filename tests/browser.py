"""Open a report in headless Chromium through Playwright and say what is wrong with it.

The system's Chromium (Debian: `apt-get install chromium`, or SAMREP_CHROMIUM=/path), never a
downloaded browser. Collected: uncaught exceptions, console errors, requests that would leave the
machine (only file:, data:, blob:, about: are allowed: a report opens offline), every <img> that
did not decode, horizontal overflow at the viewport's width, the tables' headers, a screenshot.

By hand: python -m tests.browser reports/h200/index.html [shot.png]
"""

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync"]
ALLOWED = ("file:", "data:", "blob:", "about:")
WIDTH = 1280

# Everything measured in the page at once: images, tables, headings, overflow.
_DOM = """() => ({
  images: [...document.images].map(i => ({src: i.src.startsWith('data:') ? i.src.slice(0, 40) : i.src, ok: i.complete &&
    i.naturalWidth > 0, width: i.getBoundingClientRect().width})),
  tables: [...document.querySelectorAll('table')].map(t => ({rows: t.tBodies[0] ?
    t.tBodies[0].rows.length : 0, header: [...t.querySelectorAll('th')].map(h => h.innerText),
    width: t.getBoundingClientRect().width, visible: t.getBoundingClientRect().height > 0})),
  headings: [...document.querySelectorAll('h1, h2, h3')].map(h => h.innerText),
  scrollWidth: document.documentElement.scrollWidth,
  title: document.title,
})"""


def find_chromium() -> str | None:
    """SAMREP_CHROMIUM, else the first Chromium/Chrome on PATH."""
    env = os.environ.get("SAMREP_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((p for p in map(shutil.which, names) if p), None)


@dataclass
class PageReport:
    url: str
    errors: list[str] = field(default_factory=list)  # exceptions and console errors
    outside_requests: list[str] = field(default_factory=list)
    dom: dict = field(default_factory=dict)

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.dom.get("images", []) if not i["ok"]]

    @property
    def overflow_px(self) -> int:
        return max(0, self.dom.get("scrollWidth", 0) - WIDTH)

    def problems(self, min_images: int = 1, min_tables: int = 1) -> list[str]:
        """Everything a reader would notice, one line each (empty: the page is fine)."""
        out = [f"error: {e}" for e in self.errors]
        out += [f"request leaves the machine: {u}" for u in self.outside_requests]
        out += [f"image not decoded: {i['src']}" for i in self.broken_images]
        if self.overflow_px:
            out.append(f"horizontal overflow: {self.overflow_px} px beyond {WIDTH}")
        tables = [t for t in self.dom.get("tables", []) if t["visible"] and t["rows"]]
        if len(tables) < min_tables:
            out.append(f"no visible table (found {len(tables)}, want {min_tables})")
        if len(self.dom.get("images", [])) < min_images:
            out.append(f"{len(self.dom.get('images', []))} images, want {min_images}")
        return out


def check_page(path: Path, screenshot: Path | None = None, timeout_ms: int = 30000) -> PageReport:
    """Load `path` at 1280 px with the network blocked; a full-page screenshot if asked."""
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no chromium: apt-get install -y chromium, or set SAMREP_CHROMIUM")
    report = PageReport(Path(path).resolve().as_uri())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})

            def route(r):
                if r.request.url.startswith(ALLOWED):
                    return r.continue_()
                report.outside_requests.append(r.request.url)
                return r.abort()

            page.route("**/*", route)
            page.on("pageerror", lambda e: report.errors.append(f"exception: {e}"))
            page.on(
                "console",
                lambda m: report.errors.append(f"console: {m.text}") if m.type == "error" else 0,
            )
            page.goto(report.url, wait_until="load", timeout=timeout_ms)
            report.dom = page.evaluate(_DOM)
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return report


if __name__ == "__main__":
    shot = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    r = check_page(Path(sys.argv[1]), shot)
    print(r.dom.get("title"), r.dom.get("headings"), *r.problems(), sep="\n")
