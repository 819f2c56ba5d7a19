"""Format verifiers: JSON schema, regex, length; each passes and fails with a named reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stillroom.errors import ConfigError
from stillroom.verify import VerifierInputError, verifiers
from stillroom.verify.formats import JsonSchemaVerifier, LengthVerifier, RegexVerifier

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def row(completion: Any, **extra: Any) -> dict[str, Any]:
    return {"completion": completion, **extra}


def test_registered_names() -> None:
    assert verifiers.get("json_schema") is JsonSchemaVerifier
    assert verifiers.get("regex") is RegexVerifier
    assert verifiers.get("length") is LengthVerifier


# -- json_schema ---------------------------------------------------------------------------------

def test_json_that_matches_the_schema_passes() -> None:
    result = JsonSchemaVerifier(schema=PERSON).verify(row('{"name": "Ada", "age": 36}'))
    assert result.passed and result.reason == "JSON matches the schema"
    assert result.details["fenced"] is False


def test_json_missing_a_property_fails_naming_it() -> None:
    result = JsonSchemaVerifier(schema=PERSON).verify(row('{"name": "Ada"}'))
    assert not result.passed
    assert "'age' is a required property" in result.reason and "at $" in result.reason


def test_a_wrong_type_deep_in_the_value_names_its_path() -> None:
    result = JsonSchemaVerifier(schema=PERSON).verify(row('{"name": "Ada", "age": -1}'))
    assert not result.passed and "$.age" in result.reason and "minimum" in result.reason


def test_text_that_is_not_json_fails_saying_so() -> None:
    result = JsonSchemaVerifier(schema=PERSON).verify(row("Sure! Here is the JSON: {"))
    assert not result.passed and result.reason.startswith("not JSON:")


def test_a_fenced_block_is_accepted_by_default_and_refused_when_asked() -> None:
    fenced = '```json\n{"name": "Ada", "age": 36}\n```\n'
    accepted = JsonSchemaVerifier(schema=PERSON).verify(row(fenced))
    assert accepted.passed and accepted.details["fenced"] is True
    refused = JsonSchemaVerifier(schema=PERSON, allow_fence=False).verify(row(fenced))
    assert not refused.passed and "allow_fence is off" in refused.reason
    # Text around the fence is not "a completion that is one fenced block".
    chatty = "Here you go:\n" + fenced
    assert not JsonSchemaVerifier(schema=PERSON).verify(row(chatty)).passed


def test_the_schema_may_come_from_each_row() -> None:
    verifier = JsonSchemaVerifier()
    assert verifier.check_row(row("{}")) is not None  # no `schema` column
    as_text = row('{"name": "Ada", "age": 1}', schema=json.dumps(PERSON))
    assert verifier.check_row(as_text) is None and verifier.verify(as_text).passed
    as_object = row('{"name": "Ada"}', schema=PERSON)
    assert not verifier.verify(as_object).passed
    bad = row("{}", schema='{"type": "no-such-type"}')
    assert "not a valid JSON Schema" in (verifier.check_row(bad) or "")


def test_an_invalid_schema_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        JsonSchemaVerifier(schema={"type": 5})


# -- regex ---------------------------------------------------------------------------------------

def test_fullmatch_needs_the_whole_completion_to_match() -> None:
    verifier = RegexVerifier(pattern="(yes|no)")
    assert verifier.verify(row(" yes\n")).passed  # surrounding whitespace stripped by default
    result = verifier.verify(row("yes, I think so"))
    assert not result.passed
    assert "does not match /(yes|no)/ (the whole completion)" in result.reason
    assert not RegexVerifier(pattern="(yes|no)", strip=False).verify(row(" yes\n")).passed


def test_search_finds_the_pattern_anywhere() -> None:
    verifier = RegexVerifier(pattern=r"answer: \d+", mode="search")
    passed = verifier.verify(row("Thinking...\nanswer: 42\n"))
    assert passed.passed and passed.details["match"] == "answer: 42"
    failed = verifier.verify(row("Thinking... no idea"))
    assert not failed.passed and "anywhere in it" in failed.reason


def test_regex_flags() -> None:
    assert RegexVerifier(pattern="yes", ignore_case=True).verify(row("YES")).passed
    assert not RegexVerifier(pattern="yes").verify(row("YES")).passed
    assert RegexVerifier(pattern="a.b", dotall=True).verify(row("a\nb")).passed


def test_a_bad_pattern_or_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a regex"):
        RegexVerifier(pattern="(unclosed")
    with pytest.raises(ConfigError, match="fullmatch or search"):
        RegexVerifier(pattern="x", mode="match")  # type: ignore[arg-type]


# -- length --------------------------------------------------------------------------------------

def test_words_within_bounds_pass_and_outside_fail_naming_the_bound() -> None:
    verifier = LengthVerifier(min=2, max=4)
    assert verifier.verify(row("three short words")).passed
    short = verifier.verify(row("one"))
    assert not short.passed and short.reason == "1 words, fewer than the minimum 2"
    long = verifier.verify(row("one two three four five"))
    assert not long.passed and long.reason == "5 words, more than the maximum 4"
    assert long.details == {"length": 5, "unit": "words"}


def test_characters_and_a_single_bound() -> None:
    assert LengthVerifier(max=5, unit="characters").verify(row("abcde")).passed
    result = LengthVerifier(max=5, unit="characters").verify(row("abcdef"))
    assert not result.passed and "6 characters" in result.reason
    assert LengthVerifier(min=1).verify(row("x")).passed


def test_length_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="min"):
        LengthVerifier()
    with pytest.raises(ConfigError, match="greater than max"):
        LengthVerifier(min=5, max=1)
    with pytest.raises(ConfigError, match="words or characters"):
        LengthVerifier(min=1, unit="tokens")  # type: ignore[arg-type]


# -- rows that cannot be checked -----------------------------------------------------------------

@pytest.mark.parametrize(
    "verifier",
    [JsonSchemaVerifier(schema=PERSON), RegexVerifier(pattern="x"), LengthVerifier(min=1)],
)
def test_a_missing_or_non_text_completion_is_a_row_problem(verifier: Any) -> None:
    assert "`completion`" in (verifier.check_row({"answer": "x"}) or "")
    assert "must be text" in (verifier.check_row(row(5)) or "")
    with pytest.raises(VerifierInputError):
        verifier.verify({"answer": "x"})


# -- exact ---------------------------------------------------------------------------------------


def test_exact_passes_only_the_whole_reference() -> None:
    from stillroom.verify.formats import ExactVerifier

    check = ExactVerifier()
    row = {"answer": "40 + 85 = 125"}
    assert check.verify({**row, "completion": " 40 + 85 = 125.\n"}).passed
    for wrong in ("40 + 85 = 124", "The answer is 40 + 85 = 125", "40 + 85 = 125, which is",
                  "125", "40+85=125"):
        verdict = check.verify({**row, "completion": wrong})
        assert not verdict.passed and "not exactly '40 + 85 = 125'" in verdict.reason
    assert not ExactVerifier(strip_period=False).verify({**row, "completion": "40 + 85 = 125."}).passed
    assert ExactVerifier(ignore_case=True).verify({"answer": "Paris", "completion": "paris"}).passed
    assert ExactVerifier().check_row({"completion": "x"}) == \
        "the row needs a `answer` column for the exact verifier"
    assert verifiers.get("exact") is ExactVerifier
