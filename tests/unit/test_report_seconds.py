"""The report keeps wall seconds and request seconds apart, labels its histograms' axes, and keeps
wide tables inside the page."""

from __future__ import annotations

import asyncio
import re

from stillroom.llm.stats import BackendStats, union, wall_of


def test_concurrent_requests_have_less_wall_time_than_request_time() -> None:
    """20 requests of 50 ms, 10 at a time: about 1 s of request seconds in about 0.1 s of wall
    time. Before, only the summed figure existed and was shown as the stage's seconds."""
    from stillroom.llm.client import LLMClient
    from stillroom.llm.types import Request
    from tests.fakes import ScriptedBackend

    client = LLMClient(ScriptedBackend(latency=0.05), concurrency=10)

    async def ask() -> None:
        await asyncio.gather(*(client.generate(Request(prompt=f"q{i}")) for i in range(20)))

    asyncio.run(ask())
    figures = client.stats.as_dict()
    assert figures["responses"] == 20
    assert figures["busy_seconds"] >= 20 * 0.05
    assert 2 * 0.05 <= figures["wall_seconds"] < figures["busy_seconds"] / 3
    assert figures["first_started"] < figures["last_finished"]
    assert len(figures["spans"]) == 1


def test_sessions_add_up_and_concurrent_workers_count_once() -> None:
    first = BackendStats()
    for end in (100.5, 101.0, 110.0):  # one session: requests from t=100 to t=110
        first.add_request(0.5 if end != 110.0 else 1.0, now=end)
    assert first.wall_seconds == 10.0 and first.busy_seconds == 2.0
    second = BackendStats()
    second.add_request(4.0, now=1004.0)  # resumed 15 minutes later: 4 s
    merged = BackendStats()
    merged.add(first.as_dict())
    merged.add(second.as_dict())
    # The pause between the sessions does not count; their spans do.
    assert merged.as_dict()["wall_seconds"] == 14.0
    assert merged.as_dict()["first_started"] == 100.0
    assert merged.as_dict()["last_finished"] == 1004.0
    assert merged.busy_seconds == 6.0
    # A Ray worker reports its cumulative spans with every batch (and timestamps subtracted by
    # the delta code): added again, overlapping spans count once and the derived figures are
    # recomputed, never summed.
    worker = {**first.as_dict(), "busy_seconds": 0.0, "first_started": 0.0, "wall_seconds": 0.0}
    merged.add(worker)
    assert merged.as_dict()["wall_seconds"] == 14.0
    # A record written before spans were kept: no wall time rather than a wrong one.
    old = BackendStats()
    old.add({"busy_seconds": 3.0, "responses": 2})
    assert old.as_dict()["wall_seconds"] is None and old.busy_seconds == 3.0


def test_union_and_wall_of() -> None:
    assert union([[5, 6], [1, 3], [2, 4]]) == [[1, 4], [5, 6]]
    assert wall_of([[5, 6], [1, 3], [2, 4]]) == 4.0
    assert wall_of([]) is None


def _summary(backends: dict, stages: dict) -> dict:
    return {
        "counts": {"data": 1, "failed": 0, "dropped": 0}, "failure_rate": 0.0,
        "failures_by_reason": {}, "drops_by_reason": {}, "backends": backends, "stages": stages,
        "sessions": [], "seconds": 250.0, "diversity": {}, "warnings": [],
    }


def test_the_report_shows_wall_and_request_seconds_apart() -> None:
    from stillroom.report.card import render_card
    from stillroom.report.html import render_report

    teacher = BackendStats(model="m", kind="openai", responses=100)
    for index in range(100):  # 100 requests of 199 s, all in flight at once
        teacher.add_request(199.0, now=1000.0 + index * 0.01)
    judge = BackendStats(model="j", kind="openai", responses=1)
    judge.add_request(2.0, now=5000.0)
    backends = {"teacher": teacher.as_dict(), "judge": judge.as_dict(), "spare": judge.as_dict()}
    stages = {
        "answer": {"rows_in": 100, "rows_out": 100, "seconds": 19_900.0},
        "rate": {"rows_in": 100, "rows_out": 100, "seconds": 3.0},
        "check": {"rows_in": 100, "rows_out": 100, "seconds": 1.0},
    }
    config = {"stage_backends": {"answer": ["teacher"], "rate": ["judge"], "check": ["judge"]}}
    page = render_report(_summary(backends, stages), config, [], [])
    header = re.search(r"<tr><th>backend</th>.*?</tr>", page).group(0)
    assert "<th>wall seconds</th><th>request seconds</th><th>mean in flight</th>" in header
    row = re.search(r"<tr><td>teacher</td>.*?</tr>", page).group(0)
    assert '<td class="n">200.0</td><td class="n">19,900.0</td><td class="n">99.50</td>' in row
    stage_header = "<th>wall seconds</th><th>row seconds (summed)</th>"
    assert stage_header in page
    answer = re.search(r"<tr><td>answer</td>.*?</tr>", page).group(0)
    assert '<td class="n">200.0</td><td class="n">19,900.00</td>' in answer
    # `judge` serves two stages: neither can claim its wall time.
    rate = re.search(r"<tr><td>rate</td>.*?</tr>", page).group(0)
    assert '<td class="n">-</td><td class="n">3.00</td>' in rate
    card = render_card(_summary(backends, stages), config, [])
    assert "| wall seconds | request seconds |" in card and "| 200.0 | 19,900.0 |" in card


def test_histogram_axes_have_round_ticks_and_bars_their_counts() -> None:
    from stillroom.report.plots import describe, histogram_svg, nice_ticks

    assert nice_ticks(0, 999) == [0, 200, 400, 600, 800]
    assert nice_ticks(0.5, 5.5) == [1, 2, 3, 4, 5]
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    svg = histogram_svg("lengths", describe([float(v) for v in range(1000)]), "words")
    x_ticks = re.findall(r'class="x-tick">([^<]*)<', svg)
    assert x_ticks == ["0", "200", "400", "600", "800"]  # before: only "0" and "999"
    assert re.findall(r'class="y-tick">([^<]*)<', svg) == ["0", "20", "40"]
    assert re.findall(r'class="count">([^<]*)<', svg) == ["50"] * 20
    small = histogram_svg("scores", describe([1, 2, 2, 3, 5]))
    assert re.findall(r'class="x-tick">([^<]*)<', small) == ["1", "2", "3", "4", "5"]
    assert re.findall(r'class="count">([^<]*)<', small) == ["1", "2", "1", "1"]


def test_long_table_cells_wrap_and_wide_tables_scroll_in_their_box() -> None:
    from stillroom.report.html import render_report

    summary = _summary({}, {})
    long_name = "model-" + "x" * 400
    summary["distributions"] = {
        "lengths": {}, "scores": {}, "rows_read": 1,
        "lineage": [{"stage": "s", "rows": 1, "methods": {"m": 1}, "models": {long_name: 1},
                     "templates": {}}],
    }
    page = render_report(summary, {}, [], [])
    assert ".scroll{overflow-x:auto;max-width:100%}" in page
    assert "td.long{overflow-wrap:anywhere;word-break:break-word;min-width:14rem}" in page
    lineage = page[page.index("<h2>Lineage</h2>"):]
    assert lineage.split("</h2>", 1)[1].lstrip().startswith('<div class="scroll"><table>')
    assert f'<td class="long">{long_name} (1)</td>' in lineage and "<td>m (1)</td>" in lineage


def test_a_clock_step_during_a_run_does_not_stretch_the_wall_seconds(monkeypatch) -> None:
    import itertools
    import time

    import stillroom.llm.stats as stats_module

    calls = itertools.count()

    class SteppingClock:  # the wall clock jumps an hour ahead after two readings (NTP, suspend)
        def __getattr__(self, name: str):
            return getattr(time, name)

        def time(self) -> float:
            return time.time() + (3600 if next(calls) >= 2 else 0)

    monkeypatch.setattr(stats_module, "time", SteppingClock())
    stats = stats_module.BackendStats()
    for _ in range(5):
        stats.add_request(0.001)
    assert stats.wall_seconds is not None and 0 <= stats.wall_seconds < 60
