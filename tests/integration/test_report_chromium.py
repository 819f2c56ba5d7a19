"""report.html renders in headless Chromium (Debian's `chromium`), with its plots and tables.

CI installs chromium (.ci/run) and sets STILLROOM_REQUIRE_CHROMIUM=1, so there a missing browser
fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stillroom import Drop, Pipeline, RowFailure


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("STILLROOM_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _headless(browser: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={home / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)},
    )


# A lineage cell with no place to break: before, it pushed the lineage table off the page.
LONG_MODEL = "org/" + "VeryLongModelName_" * 12


def grade(row: dict[str, Any]) -> Any:
    """A filter and a scorer with no model: enough rows, drops and failures to draw."""
    from stillroom.data.lineage import with_lineage

    number = int(row["id"][1:])
    if number % 7 == 0:
        return Drop("too short")
    if number % 11 == 0:
        raise RowFailure("the scorer gave up", kind="ScorerError")
    out = {**row, "completion": " ".join(["word"] * (number % 40 + 1)), "score": number % 5 + 1}
    return with_lineage(out, "grade", method="grading", step="score", parent_id=None,
                        seed_id=None, model=LONG_MODEL, template="grade@1")


# Run in a copy of the page (the report itself has no scripts): how wide the page is laid out.
_MEASURE = (
    "<script>document.body.setAttribute('data-widths', document.documentElement.scrollWidth"
    " + ' ' + window.innerWidth)</script></body>"
)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _browser()
    rows = [{"id": f"r{i}", "prompt": f"question {i} " + "text " * (i % 13)} for i in range(1, 80)]
    result = Pipeline([grade], input=rows, name="report <check> & render").run(
        tmp_path / "out", progress=False, max_failure_rate=1.0
    )
    assert result.counts["dropped"] and result.counts["failed"] and result.counts["data"]
    report = tmp_path / "out" / "report.html"

    dom = _headless(browser, "--dump-dom", report.as_uri(), home=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    # The title is escaped, the sections and plots are there and hold the run's numbers.
    assert "report &lt;check&gt; &amp; render" in page
    for heading in ("Stages", "Lengths", "Scores", "Lineage", "Failures by reason", "Drops by reason"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert page.count("<svg") >= 4  # funnel, two length histograms, one score histogram
    assert len(re.findall(r"<rect ", page)) > 20
    assert "function: too short" in page or "too short" in page
    assert f"{result.counts['data']} out" in page  # the funnel's label for the last stage
    assert LONG_MODEL in page and 'class="x-tick"' in page

    # Nothing runs off the page, even in a narrow window: long cells wrap, wide tables scroll
    # inside their box.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _MEASURE))
    measured = _headless(browser, "--dump-dom", "--window-size=760,1200", probe.as_uri(),
                         home=tmp_path)
    assert measured.returncode == 0, measured.stderr[-2000:]
    found = re.search(r'data-widths="(\d+) (\d+)"', measured.stdout)
    assert found, measured.stdout[-2000:]
    page_width, window_width = int(found.group(1)), int(found.group(2))
    assert 0 < page_width <= window_width, (page_width, window_width)

    shot = tmp_path / "report.png"
    screenshot = _headless(
        browser, f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri(), home=tmp_path
    )
    assert screenshot.returncode == 0, screenshot.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2400)
    # A blank page compresses to a few kilobytes; text, tables and bars do not.
    assert len(data) > 40_000
