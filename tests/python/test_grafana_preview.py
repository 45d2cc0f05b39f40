"""`devdiag grafana preview`: the page opens offline in headless Chromium, without a console error, and
every panel shows a chart, stat or table with data. A screenshot is saved in test-output/.

Chromium is Debian's `chromium` package (installed by .ci/run); it is driven over the DevTools
protocol on a pipe (--remote-debugging-pipe: file descriptors 3 and 4), so no driver or browser
download is needed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from devdiag_db.config import project_dir
from orchestrator.grafana import files
from orchestrator.grafana.cli import grafana

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
MARKS_JS = """
Array.from(document.querySelectorAll('section.panel')).map(p => {
  const visible = Array.from(p.querySelectorAll('svg.chart, table.data, .stats')).some(c => {
    const r = c.getBoundingClientRect(); return r.width > 50 && r.height > 30; });
  return {
    title: p.querySelector('h2').textContent,
    type: p.className.replace('panel panel-', ''),
    series: p.querySelectorAll('.series').length,
    points: Array.from(p.querySelectorAll('.series')).reduce((n, s) => n + Number(s.dataset.points || 0), 0),
    bars: p.querySelectorAll('rect.bar').length,
    stats: p.querySelectorAll('.stat').length,
    rows: p.querySelectorAll('tr.data-row').length,
    problems: p.querySelectorAll('.error, .nodata').length,
    visible: visible,
  };
})
"""


class DevTools:
    """Chromium's DevTools protocol over its pipe: NUL-separated JSON, commands on fd 3, replies on fd 4."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self._from_browser], [], [], timeout)
        if ready:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk

    def _messages(self) -> Iterator[dict[str, Any]]:
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            yield json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for reply in self._messages():
                if reply.get("id") != self._next_id:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._read(0.2)
        raise TimeoutError(method)

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.events.extend(self._messages())
            for message in self.events:
                if message.get("method") == event:
                    return message["params"]
            self._read(0.2)
        raise TimeoutError(event)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


@pytest.fixture(scope="module")
def page(demo_db, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preview") / "devdiag-analytics.html"
    result = CliRunner().invoke(grafana, ["preview", "--out", str(out), "--last", "30d"])
    assert result.exit_code == 0, result.output
    panels = len(files.read_dashboard()["panels"])
    assert f"{panels} panels, 0 without data, 0 failed" in result.output
    return out


def test_page_is_self_contained(page: Path) -> None:
    html = page.read_text()
    assert "<script" not in html.lower()
    assert not [u for u in re.findall(r"(?:src|href)=\"([^\"]+)", html) if not u.startswith("#")]
    # Nothing fetched by CSS either; URLs inside the data (error texts in tables) are only text.
    assert not re.findall(r"url\(\s*['\"]?(?!#|data:)", html) and "@import" not in html
    assert html.count('<section class="panel') == len(files.read_dashboard()["panels"])


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is absent: install Debian's chromium package")
def test_page_renders_every_panel_in_chromium_offline(page: Path, tmp_path: Path) -> None:
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            session=session,
        )
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1600, "height": 1900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        marks = browser.send("Runtime.evaluate", {"expression": MARKS_JS, "returnByValue": True}, session=session)
        panels = marks["result"]["value"]
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
    finally:
        browser.close()

    problems = [
        e["params"]
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or e.get("method") == "Network.loadingFailed"
    ]
    assert not problems, problems
    requested = {
        e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
    }
    assert requested == {page.as_uri()}, f"the page asked for more than itself: {requested}"

    board = files.read_dashboard()
    assert [p["title"] for p in panels] == [p["title"] for p in board["panels"]]
    for panel in panels:
        assert panel["problems"] == 0 and panel["visible"], panel
        if panel["type"] == "timeseries":
            assert panel["series"] >= 1 and panel["points"] >= 2, panel
        elif panel["type"] == "barchart":
            assert panel["bars"] >= 2, panel
        elif panel["type"] == "stat":
            assert panel["stats"] >= 1, panel
        else:
            assert panel["rows"] >= 1, panel

    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    output = project_dir() / "test-output"
    output.mkdir(exist_ok=True)
    (output / "grafana-preview.png").write_bytes(png)
    shutil.copyfile(page, output / "grafana-preview.html")
