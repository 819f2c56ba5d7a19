"""The compact logit store: quantization, the layout round trip (also through Parquet), offline
KD's reader giving the same aligned targets from both layouts, and the refusals."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom.data import logit_store
from stillroom.data.logit_store import SCALE, as_entries, columns, quantize, to_compact
from stillroom.errors import ConfigError, InputError
from stillroom.llm.llamacpp import LlamaCppConfig
from stillroom.llm.openai_compat import OpenAIConfig
from stillroom.stages.complete import Complete
from stillroom.stages.teacher_logprobs import TeacherLogprobs
from stillroom.train.kd_alignment import Pieces, align_logprobs, row_entries

TOLERANCE = 0.5 / SCALE + 1e-12  # half a quantization step


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def records_rows(tokenizer: Any, k: int, count: int = 6) -> list[dict[str, Any]]:
    """Rows in the records layout a `complete` stage writes, with ids and random logprobs: the
    chosen token sometimes inside its top-k, sometimes not; some alternatives with no mass."""
    chance = random.Random(7)
    rows = []
    for i in range(count):
        completion = f"The sum of {i} and {i} is {2 * i}. Naïve café\n\nDone."
        entries = []
        for token in tokenizer(completion, add_special_tokens=False).input_ids:
            alternatives = [{"token": tokenizer.decode([t]), "id": t,
                             "logprob": -chance.uniform(0, 12)}
                            for t in chance.sample(range(len(tokenizer)), k)]
            if chance.random() < 0.5:
                alternatives[chance.randrange(k)]["id"] = token
            if chance.random() < 0.1:
                alternatives[-1]["logprob"] = float("-inf")
            alternatives.sort(key=lambda alt: -alt["logprob"])
            entries.append({"token": tokenizer.decode([token]), "id": token,
                            "logprob": -chance.uniform(0, 8), "top_logprobs": alternatives})
        rows.append({"id": f"r{i}", "prompt": f"Add {i} and {i}.", "completion": completion,
                     "logprobs": entries})
    return rows


def compact_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in row.items() if key != "logprobs"}
    return {**out, **to_compact(row["logprobs"], "logprobs")}


# -- quantization and the layout -------------------------------------------------------------------


def test_quantization_keeps_half_a_step_and_drops_what_has_no_mass() -> None:
    for value in (0.0, -1e-9, -0.3333, -7.77777, -31.9):
        q = quantize(value)
        assert isinstance(q, int) and 0 <= q <= logit_store.Q_MAX
        assert abs(logit_store.dequantize(q) - value) <= TOLERANCE
    assert quantize(1e-7) == 0  # a rounding error above 0 is probability 1
    assert quantize(float("-inf")) is None and quantize(float("nan")) is None
    assert quantize(-40.0) is None


def test_round_trip_keeps_ids_and_logprobs_and_stores_the_chosen_token_once() -> None:
    entries = [
        {"token": "a", "id": 5, "logprob": -0.25,
         "top_logprobs": [{"token": "a", "id": 5, "logprob": -0.25},
                          {"token": "b", "id": 9, "logprob": -1.7},
                          {"token": "", "id": 2, "logprob": float("-inf")}]},
        {"token": "c", "id": 7, "logprob": -50.0, "top_logprobs": []},
    ]
    stored = to_compact(entries, "lp")
    assert list(stored) == ["lp_ids", "lp_q", "lp_top_ids", "lp_top_q"] == columns("lp")
    assert stored["lp_ids"] == [5, 7] and stored["lp_top_ids"] == [[9], []]
    assert all(isinstance(v, int) for v in stored["lp_q"])
    back = as_entries(stored, "lp", "row 0", piece=lambda i: f"<{i}>")
    assert [e["id"] for e in back] == [5, 7] and back[0]["token"] == "<5>"
    assert back[0]["logprob"] == pytest.approx(-0.25, abs=TOLERANCE)
    assert back[1]["logprob"] == pytest.approx(-logit_store.Q_MAX / SCALE)  # clamped at -32
    assert [(a["id"], round(a["logprob"], 3)) for a in back[0]["top_logprobs"]] == [(9, -1.7)]


def test_the_layout_survives_a_parquet_file_as_the_output_folder_writes_it(tokenizer: Any) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from stillroom.data.tables import rows_to_table

    rows = [compact_row(row) for row in records_rows(tokenizer, 3, count=3)]
    for table in (rows_to_table(rows), logit_store.narrowed(rows_to_table(rows), "logprobs")):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        buffer.seek(0)
        assert pq.read_table(buffer).to_pylist() == rows
    narrow = logit_store.narrowed(rows_to_table(rows), "logprobs")
    assert str(narrow.schema.field("logprobs_top_q").type) == "list<item: list<item: int16>>"


# -- the one reader --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
def test_both_layouts_align_to_the_same_targets(tokenizer: Any, k: int) -> None:
    pieces = Pieces(tokenizer)
    for index, row in enumerate(records_rows(tokenizer, k)):
        compact = compact_row(row)
        assert "logprobs" not in compact and logit_store.is_compact(compact, "logprobs")
        where = f"row {index}"
        old = align_logprobs(row_entries(row, "logprobs", where, pieces), row["completion"],
                             pieces, where)
        new = align_logprobs(row_entries(compact, "logprobs", where, pieces),
                             row["completion"], pieces, where)
        assert new[0] == old[0] and new[2] == old[2] == []
        assert len(new[1]) == len(old[1])
        for then, now in zip(old[1], new[1], strict=True):
            assert [i for i, _ in now] == [i for i, _ in then]
            assert all(abs(a - b) <= TOLERANCE for (_, a), (_, b) in zip(then, now, strict=True))


def test_an_edited_completion_is_refused_in_the_compact_layout_too(tokenizer: Any) -> None:
    pieces = Pieces(tokenizer)
    row = compact_row(records_rows(tokenizer, 3, count=1)[0])
    entries = row_entries(row, "logprobs", "row 0", pieces)
    with pytest.raises(InputError, match="row 0: the completion does not match"):
        align_logprobs(entries, row["completion"].replace("sum", "total"), pieces, "row 0")


def test_broken_compact_columns_are_refused_naming_the_row() -> None:
    row = to_compact([{"token": "a", "id": 1, "logprob": -1.0, "top_logprobs": []}], "logprobs")
    short = {**row, "logprobs_top_q": []}
    with pytest.raises(InputError, match="row 3: .*differ in length"):
        as_entries(short, "logprobs", "row 3", str)
    with pytest.raises(InputError, match="need all of"):
        as_entries({**row, "logprobs_q": None}, "logprobs", "row 3", str)
    several = {name: [value] for name, value in row.items()}
    with pytest.raises(InputError, match="several samples"):
        as_entries(several, "logprobs", "row 3", str)


def test_entries_without_ids_cannot_be_stored_compact() -> None:
    with pytest.raises(ValueError, match="token 0 'a' has no id"):
        to_compact([{"token": "a", "logprob": -1.0, "top_logprobs": []}], "logprobs")
    with pytest.raises(ValueError, match="alternative of token 0"):
        to_compact([{"token": "a", "id": 1, "logprob": -1.0,
                     "top_logprobs": [{"token": "b", "logprob": -2.0}]}], "logprobs")


# -- the stage options -----------------------------------------------------------------------------


def test_complete_refuses_compact_without_ids_or_with_several_samples() -> None:
    with pytest.raises(ValidationError, match="needs top_logprobs"):
        Complete(logprobs_format="compact")
    with pytest.raises(ValidationError, match="n: 1"):
        Complete(logprobs_format="compact", top_logprobs=3, n=2)
    stage = Complete(logprobs_format="compact", top_logprobs=3)
    stage.check_backends({"default": LlamaCppConfig()})
    server = OpenAIConfig(model="m", base_url="http://127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match="returns token strings without ids") as caught:
        stage.check_backends({"default": server})
    assert caught.value.key == "logprobs_format"
    Complete(top_logprobs=3).check_backends({"default": server})  # records: text is enough



def test_a_run_with_a_server_backend_is_refused_before_any_request(tmp_path: Any) -> None:
    from stillroom import Pipeline

    # Nothing listens on port 1: a request would fail with a connection error, not this.
    server = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1", max_retries=0)
    with pytest.raises(ConfigError, match="logprobs_format.*without ids"):
        Pipeline([Complete(top_logprobs=3, logprobs_format="compact")],
                 input=[{"prompt": "hi"}], backends={"default": server}
                 ).run(tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_teacher_logprobs_takes_the_option() -> None:
    assert TeacherLogprobs(backend="t").logprobs_format == "records"
    assert TeacherLogprobs(backend="t", logprobs_format="compact").logprobs_format == "compact"
    with pytest.raises(ValidationError):
        TeacherLogprobs(backend="t", logprobs_format="columns")

