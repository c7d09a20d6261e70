"""Render a demo run's HTML report and screenshot it in headless Chromium (1280 wide).

    python scripts/screenshot_report.py [--out report.png] [--html existing.html]

Without --html it runs a small sync against the local sandbox (no keys, no network) to get
a report with issues, writes its HTML next to the PNG, and screenshots it. Needs a
`chromium` (or `chromium-browser`, `google-chrome`) binary; the test suite does not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def demo_report_html(workdir: Path) -> Path:
    """A sync of a small sandbox data set (it has MISSING_ID, OVERSIZE, ... records)."""
    from connector.demo import DEMO_MANAGEMENT_KEY, DEMO_WRITE_KEY, demo_settings
    from connector.reports.render import render_html
    from connector.sandbox.serve import start_sync_sandbox
    from connector.sync.job import run_sync

    with start_sync_sandbox(400, 40, management_key=DEMO_MANAGEMENT_KEY,
                            write_key=DEMO_WRITE_KEY) as sandbox:
        settings = demo_settings(workdir / "home", sandbox.moesif_url, sandbox.segment_url,
                                 "http://127.0.0.1:9")
        outcome = run_sync(settings, "incremental")
    path = workdir / f"{outcome.report.run_id}.html"
    path.write_text(render_html(outcome.report), encoding="utf-8")
    return path


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 2400) -> None:
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        sys.exit("no Chromium found: install it (e.g. apt-get install -y chromium)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--window-size={width},{height}",
                    f"--screenshot={out.resolve()}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--html", type=Path, help="screenshot this report instead")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    if args.html is None:
        workdir = Path(tempfile.mkdtemp(prefix="report-shot-"))
        args.html = demo_report_html(workdir)
    screenshot(args.html, args.out, args.width, args.height)
    print(f"{args.html} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
