"""Screenshots of the Snakemake HTML report in headless Chromium (a check that it renders).

The report is a single-page app: ``landing`` shows its start page; ``NAME=RESULT`` opens the
result ``RESULT`` (its path in the report, e.g. ``results/synth/report/stages.html``) as if it had
been clicked, by appending a script that calls the app's own view switch. Needs ``chromium`` on
PATH (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=8000")


def page_showing(report_html: str, result: str | None) -> str:
    """The report page, opening ``result`` after load (None: the page unchanged)."""
    if result is None:
        return report_html
    if f'"{result}"' not in report_html:
        raise ValueError(f"the report holds no result {result!r}")
    key = json.dumps(result)
    script = ("<script>setTimeout(function () { var r = results[" + key + "]; "
              "var kind = (r.mime_type || '').indexOf('html') >= 0 ? 'html' : 'img'; "
              "app.setView({content: kind, contentPath: r.data_uri, resultPath: " + key + "}); }, 1500);</script>")
    head, body_end, tail = report_html.rpartition("</body>")  # the last one: the app's scripts hold others
    if not body_end:
        raise ValueError("the report has no </body>")
    return head + script + body_end + tail


def screenshot(report: Path, out: Path, result: str | None = None, size: tuple[int, int] = (1400, 1000)) -> Path:
    """Writes a PNG of the report (or of one result in it) as Chromium renders it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("report_screenshot: chromium not found on PATH (apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(page_showing(report.read_text(), result))
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={out.resolve()}",
                        f"--window-size={size[0]},{size[1]}", page.as_uri()],
                       check=True, capture_output=True, timeout=300)
    if not out.is_file():
        raise RuntimeError(f"report_screenshot: chromium wrote no {out}")
    return out
