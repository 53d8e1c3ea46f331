"""Render a report.html in headless Chromium and save a PNG screenshot (a check that the page renders).

    python scripts/screenshot_report.py outputs/p2l_table2_ffhq/report.html [--out shot.png] [--width 1400]

Needs a Chromium binary (Debian: apt-get install chromium); exits 2 with one line when there is none.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 2000, timeout: float = 120) -> Path:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    out.unlink(missing_ok=True)
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={out.resolve()}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    if not out.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args()
    try:
        out = screenshot(args.page, args.out or args.page.with_suffix(".png"), args.width, args.height)
    except (FileNotFoundError, RuntimeError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
