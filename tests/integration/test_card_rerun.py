"""A real run's card: its pipeline file reruns the run from another folder, its header is what the
Hub reads, its upload leaves `.stillroom/` out, and its seconds keep wall and request time apart."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def _rows(out: Path) -> int:
    return sum(pq.read_metadata(path).num_rows for path in (out / "data").glob("*.parquet"))


def test_the_cards_pipeline_reruns_a_real_run(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    from huggingface_hub import DatasetCard

    from stillroom.report.card import upload_files

    base_url, _ = echo_server(latency_ms=100)
    made = tmp_path / "made"
    made.mkdir()
    (made / "questions.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in range(16)))
    (made / "p.yaml").write_text(f"""\
name: rerun check
input: {{path: questions.jsonl, limit: 12}}
backends:
  echo: {{kind: openai, model: echo-model, base_url: "{base_url}", concurrency: 8}}
stages:
  - type: complete
    backend: echo
  - type: decontaminate
    against: bench.jsonl
card: {{license: mit, language: en}}
""")
    # Read from the pipeline's folder: the card's file must name it absolute to rerun elsewhere
    # (before, it kept `bench.jsonl` and still said it reruns).
    (made / "bench.jsonl").write_text('{"question": "nothing like these prompts at all"}\n')
    first = subprocess.run([STILLROOM, "run", str(made / "p.yaml"), "-o", str(tmp_path / "out"),
                            "--no-embeddings"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    card = (tmp_path / "out" / "README.md").read_text()
    data = DatasetCard(card).data
    assert (data.license, data.language, data.size_categories) == ("mit", "en", ["n<1K"])

    # Before, the embedded YAML carried `rows_read` (a run fact) and the run failed on it.
    text = re.search(r"## Pipeline\n\n```yaml\n(.*?)```", card, re.S).group(1)
    assert "rows_read" not in text
    assert str(made / "bench.jsonl") in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pipeline.yaml").write_text(text)
    again = subprocess.run([STILLROOM, "run", str(elsewhere / "pipeline.yaml"), "-o",
                            str(tmp_path / "again"), "--no-embeddings"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _rows(tmp_path / "again") == _rows(tmp_path / "out") == 12

    # What the documented upload sends: the data, the card and report, never .stillroom/.
    sent = upload_files(tmp_path / "out")
    assert "README.md" in sent and "report.html" in sent
    assert any(name.startswith("data/") for name in sent)
    assert (tmp_path / "out" / ".stillroom" / "commits.jsonl").exists()
    assert not [name for name in sent if name.startswith(".stillroom")]

    # 12 requests of 100 ms, 8 at a time: about 1.2 request seconds in well under that of wall time.
    report = (tmp_path / "out" / "report.html").read_text()
    row = re.search(r"<tr><td>echo</td>(.*?)</tr>", report).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    wall, request = float(cells[9].replace(",", "")), float(cells[10].replace(",", ""))
    assert 0.1 <= wall < request, (wall, request)
