"""Format checks: ``json_schema``, ``regex``, ``length`` and ``exact``. Cheap and exact; no model.

    - type: verify
      kind: json_schema
      options: {schema: {type: object, required: [name]}, allow_fence: true}
    - type: verify
      kind: regex
      options: {pattern: "(yes|no)", mode: fullmatch, ignore_case: true}
    - type: verify
      kind: length
      options: {min: 20, max: 200, unit: words}
    - type: verify
      kind: exact
      options: {answer_column: answer, strip_period: true}
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from stillroom.errors import ConfigError
from stillroom.verify.base import Row, Verdict, Verifier, VerifierInputError, verifiers

# A whole completion that is one fenced block: ```json ... ``` (the language tag optional).
_FENCE = re.compile(r"\A\s*```[ \t]*(?:json)?[ \t]*\r?\n(.*?)\r?\n?```\s*\Z", re.DOTALL | re.I)
_SHOWN = 60  # characters of a completion quoted in a reason


def _quote(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


class _TextVerifier(Verifier):
    """A verifier of one text column."""

    def check_row(self, row: Row) -> str | None:
        problem = super().check_row(row)
        if problem:
            return problem
        if not isinstance(row[self.answer_column], str):
            kind = type(row[self.answer_column]).__name__
            return f"`{self.answer_column}` must be text for the {self.name} verifier, got {kind}"
        return None

    def _text(self, row: Row) -> str:
        problem = self.check_row(row)
        if problem:
            raise VerifierInputError(problem)
        return str(row[self.answer_column])


@verifiers.register("json_schema")
class JsonSchemaVerifier(_TextVerifier):
    """The completion is JSON that the schema accepts.

    The schema is the ``schema`` option, or else each row's ``schema_column`` (an object or its
    JSON text). ``allow_fence`` (default true) accepts a completion that is exactly one fenced
    block (```json ... ```), as chat models often write; false demands bare JSON.
    """

    name = "json_schema"

    def __init__(
        self,
        answer_column: str = "completion",
        *,
        schema: dict[str, Any] | None = None,
        schema_column: str = "schema",
        allow_fence: bool = True,
    ):
        super().__init__(answer_column)
        self.schema = schema
        self.schema_column = schema_column
        self.allow_fence = allow_fence
        if schema is not None:
            problem = _schema_problem(schema)
            if problem:
                raise ConfigError(f"the schema is not a valid JSON Schema: {problem}", key="schema")
        else:
            self.required_columns = (schema_column,)

    def check_row(self, row: Row) -> str | None:
        problem = super().check_row(row)
        if problem or self.schema is not None:
            return problem
        schema = row[self.schema_column]
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as error:
                return f"`{self.schema_column}` is not JSON: {error}"
        if not isinstance(schema, dict):
            return f"`{self.schema_column}` must be a JSON Schema object"
        problem = _schema_problem(schema)
        return f"`{self.schema_column}` is not a valid JSON Schema: {problem}" if problem else None

    def _schema_of(self, row: Row) -> dict[str, Any]:
        if self.schema is not None:
            return self.schema
        schema = row[self.schema_column]
        return json.loads(schema) if isinstance(schema, str) else dict(schema)

    def verify_answer(self, row: Row) -> Verdict:
        import jsonschema

        text = self._text(row)
        fenced = _FENCE.match(text)
        if fenced and self.allow_fence:
            text = fenced.group(1)
        try:
            value = json.loads(text)
        except ValueError as error:
            hint = " (it is in a ``` fence; allow_fence is off)" if fenced else ""
            details = {"fenced": bool(fenced), "path": None}
            return Verdict(False, f"not JSON: {error}{hint}", details)
        schema = self._schema_of(row)
        validator = jsonschema.validators.validator_for(schema)(schema)
        worst = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if worst is not None:
            return Verdict(
                False,
                f"JSON does not match the schema at {worst.json_path}: {worst.message}",
                {"fenced": bool(fenced), "path": worst.json_path},
            )
        return Verdict(True, "JSON matches the schema", {"fenced": bool(fenced), "path": None})


def _schema_problem(schema: dict[str, Any]) -> str | None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as error:
        return error.message
    return None


@verifiers.register("regex")
class RegexVerifier(_TextVerifier):
    """The completion matches ``pattern``: whole (``fullmatch``, default) or anywhere
    (``search``). ``strip`` (default true) drops surrounding whitespace first."""

    name = "regex"

    def __init__(
        self,
        answer_column: str = "completion",
        *,
        pattern: str,
        mode: Literal["fullmatch", "search"] = "fullmatch",
        ignore_case: bool = False,
        dotall: bool = False,
        strip: bool = True,
    ):
        super().__init__(answer_column)
        if mode not in ("fullmatch", "search"):
            raise ConfigError(f"mode must be fullmatch or search, not {mode!r}", key="mode")
        flags = (re.IGNORECASE if ignore_case else 0) | (re.DOTALL if dotall else 0)
        try:
            self.regex = re.compile(pattern, flags)
        except re.error as error:
            raise ConfigError(
                f"pattern {pattern!r} is not a regex: {error}", key="pattern"
            ) from None
        self.mode = mode
        self.strip = strip

    def verify_answer(self, row: Row) -> Verdict:
        text = self._text(row)
        if self.strip:
            text = text.strip()
        match = self.regex.fullmatch(text) if self.mode == "fullmatch" else self.regex.search(text)
        if match is None:
            where = "the whole completion" if self.mode == "fullmatch" else "anywhere in it"
            return Verdict(
                False,
                f"{_quote(text)} does not match /{self.regex.pattern}/ ({where})",
                {"match": None},  # the same details keys on every row: one column type
            )
        return Verdict(True, f"matches /{self.regex.pattern}/ ({self.mode})",
                       {"match": match.group(0)[:200]})


@verifiers.register("length")
class LengthVerifier(_TextVerifier):
    """The completion's length is within ``min``..``max`` (inclusive), in ``words``
    (whitespace-separated) or ``characters``."""

    name = "length"

    def __init__(
        self,
        answer_column: str = "completion",
        *,
        min: int | None = None,  # noqa: A002  (the option's name in a pipeline file)
        max: int | None = None,  # noqa: A002
        unit: Literal["words", "characters"] = "words",
    ):
        super().__init__(answer_column)
        if min is None and max is None:
            raise ConfigError("the length verifier needs `min`, `max` or both", key="min")
        if unit not in ("words", "characters"):
            raise ConfigError(f"unit must be words or characters, not {unit!r}", key="unit")
        if min is not None and max is not None and min > max:
            raise ConfigError(f"min ({min}) is greater than max ({max})", key="min")
        self.min, self.max, self.unit = min, max, unit

    def verify_answer(self, row: Row) -> Verdict:
        text = self._text(row)
        length = len(text.split()) if self.unit == "words" else len(text)
        details = {"length": length, "unit": self.unit}
        measured = f"{length} {self.unit}"
        if self.min is not None and length < self.min:
            return Verdict(False, f"{measured}, fewer than the minimum {self.min}", details)
        if self.max is not None and length > self.max:
            return Verdict(False, f"{measured}, more than the maximum {self.max}", details)
        low = self.min if self.min is not None else 0
        high = self.max if self.max is not None else ""
        return Verdict(True, f"{measured}, within {low}..{high}", details)


@verifiers.register("exact")
class ExactVerifier(_TextVerifier):
    """The whole completion is the row's reference answer, character for character: the
    strictest checker, for tasks whose answer has one right form (``12 + 30 = 42``).

    Surrounding whitespace is ignored, and with ``strip_period`` (default true) one final ``.``
    on either side; ``ignore_case`` (default false) compares without case. Anything else (a word
    before the answer, a second sentence, another spelling of the number) fails, with the
    expected text in the reason. Unlike ``math``, which reads the last number of a free-form
    answer, this also checks the form, so a model trained on data that passed it must learn
    that form.
    """

    name = "exact"

    def __init__(
        self,
        answer_column: str = "completion",
        *,
        reference_column: str = "answer",
        strip_period: bool = True,
        ignore_case: bool = False,
    ):
        super().__init__(answer_column)
        if not reference_column:
            raise ConfigError("reference_column is empty", key="reference_column")
        self.required_columns = (reference_column,)
        self.reference_column = reference_column
        self.strip_period = strip_period
        self.ignore_case = ignore_case

    def _normal(self, text: str) -> str:
        text = text.strip()
        if self.strip_period and text.endswith("."):
            text = text[:-1].rstrip()
        return text.casefold() if self.ignore_case else text

    def verify_answer(self, row: Row) -> Verdict:
        text = self._text(row)
        expected = str(row[self.reference_column])
        if self._normal(text) == self._normal(expected):
            return Verdict(True, f"equals {_quote(expected)}", {"expected": expected})
        return Verdict(False, f"{_quote(text.strip())} is not exactly {_quote(expected)}",
                       {"expected": expected})
