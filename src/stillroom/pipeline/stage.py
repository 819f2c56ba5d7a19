"""What a stage is.

A stage is a pydantic model (its options, validated, ``extra="forbid"``) with behaviour:

* :class:`RowStage` handles one row at a time: ``process(row, ctx)`` returns the row (changed), a
  list of rows (one row became several; a list may also hold :class:`Dropped` items, for a stage
  that tried several things and discarded some, such as failed evolutions), or
  ``Drop("reason")``; it may raise
  :class:`RowFailure` (or let an LLM :class:`RequestFailed` through) to send the row to
  ``failed/``. Rows stream: a row-wise stage never sees the whole dataset.
* :class:`AllRowsStage` needs every row at once (bootstrapping from a growing pool) and says so;
  the executor gathers its input, runs it, and checkpoints its output. It gets :class:`Rows`
  (iterate them as often as needed; ``len`` is their count) and yields rows, and
  :class:`Dropped` or :class:`Failed` items for what it removed or could not produce.
* :class:`AllRowsFilter` is an all-rows stage whose output is a decision per input row, in input
  order (dedup, selection, IFD): it reads the rows once to build an index
  (:meth:`AllRowsFilter.index`), then decides each row (:meth:`RowDecisions.decide`). So the
  executor streams it: first in a segment, its rows are read from the input file or checkpoint
  in two passes and never held in memory, and its decisions are committed as they come.

A plain function ``fn(row) -> row | list[row] | Drop`` (sync or async) is a row stage too, from
Python: wrap it in :class:`FunctionStage` or pass it to ``Pipeline`` directly.

Stages register by ``type`` name with :func:`register_stage`, the built-ins included, so a
pipeline file can name them.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, PrivateAttr

from stillroom.data.rows import Row
from stillroom.registry import Registry
from stillroom.secrets import redact

if TYPE_CHECKING:
    from stillroom.llm.backend import BackendConfig
    from stillroom.llm.cache import RequestCache
    from stillroom.llm.client import LLMClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Drop:
    """A filter's verdict: remove the row, for this reason (it goes to ``dropped/``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A row an :class:`AllRowsStage` removed, with the reason."""

    row: Row
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A row an :class:`AllRowsStage` could not produce (it goes to ``failed/``), with the reason.

    ``error`` is a RowFailure or an LLM RequestFailed, so its kind and attempts are kept.
    """

    row: Row
    error: BaseException


class RowFailure(Exception):
    """A row this stage could not produce; it goes to ``failed/`` with the reason."""

    def __init__(self, message: str, *, kind: str = "StageError", attempts: int = 1):
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts


ParallelMap = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]
"""``parallel_map(fn, items)``: ``fn`` applied to every item, results in the items' order."""


@dataclass
class StageContext:
    """What a stage gets besides its row: LLM clients, reproducible randomness, and a way to
    spread CPU-heavy work.

    ``parallel_map`` is for an all-rows stage with work that splits into independent batches
    (MinHash signatures of a million texts): the local executor runs it in this process (the
    builtin ``map``), the Ray executor as Ray tasks across the cluster. ``fn`` and the items must
    pickle (a module-level function or a small object; not a lambda over a big array).

    ``cache`` is the run's request cache (None with ``--no-cache``), for a stage that makes a
    client of its own (IFD's scoring model) rather than using a pipeline backend's.
    """

    stage_name: str
    seed: int
    clients: dict[str, LLMClient] = field(default_factory=dict)
    parallel_map: ParallelMap = map
    cache: RequestCache | None = None

    def client(self, name: str) -> LLMClient:
        return self.clients[name]

    def rng(self, *parts: Any) -> random.Random:
        """A random generator that depends only on the run seed, this stage and ``parts``.

        Seed it with something of the row (its key or id), never with arrival order, so a
        choice made for a row is the same however the rows interleave.
        """
        text = "\x1f".join(str(part) for part in (self.seed, self.stage_name, *parts))
        return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    name: str | None = None

    needs_all_rows: ClassVar[bool] = False
    # Options that name a file or folder read from the pipeline file's folder when relative (a
    # benchmark, a rubric, a model folder): the card's copy of the pipeline writes them absolute,
    # so that it reruns from wherever it is saved. A dotted name is a key inside an option's
    # mapping ("tools.python": the `python` key of a `tools:` option).
    path_options: ClassVar[tuple[str, ...]] = ()

    def check_row(self, row: Row) -> str | None:
        """When this stage reads the pipeline's input: what is wrong with ``row``, if anything.

        Called on every input row before any request is sent.
        """
        return None

    def backend_names(self) -> set[str]:
        """Names of the pipeline backends this stage sends requests to."""
        return set()

    def check_backends(self, configs: dict[str, BackendConfig]) -> None:
        """Raise ConfigError when a backend cannot do what this stage asks (e.g. logprobs)."""

    def generated_columns(self) -> list[str]:
        """The text columns this stage writes with a model (its diversity is measured and reported).

        A column may hold text or a list of texts.
        """
        return []

    def summary_columns(self) -> list[str]:
        """Columns :meth:`summarize` reads at the end of a run (none: this stage reports nothing)."""
        return []

    def summarize(self, rows: list[Row]) -> dict[str, Any]:
        """What this stage measured over the finished run: pass@k, mean ratings, win rates.

        ``rows`` hold only :meth:`summary_columns` (null where a row lacks one), from ``data/``
        and ``dropped/`` both, since a dropped row (no sample passed, a tie) is part of the
        result. The figures go into the card, ``report.html`` and ``stillroom inspect``; keep
        the values numbers or short text.
        """
        return {}

    def result_line(self, figures: dict[str, Any]) -> str | None:
        """One line for the terminal from :meth:`summarize`'s figures ("dedup: kept 950 of 1,000
        rows ..."), printed by the verbs after a run; None: this stage prints none."""
        return None

    def identity(self) -> dict[str, Any]:
        """What decides this stage's output (for telling one run from another)."""
        return self.model_dump(mode="json", exclude={"name"})

    async def aclose(self) -> None:  # noqa: B027 - most stages hold nothing to release
        """Release what this stage opened for a run (a tool server, a subprocess, a model).

        The executors call it once for every stage when a run ends, however it ends (complete,
        failed, interrupted), on the event loop the stage ran on (in each Ray worker too). A
        stage may be run again afterwards (the Python API reruns a pipeline), so open things
        again lazily rather than refusing."""


async def close_stages(stages: Iterable[Stage]) -> None:
    """``aclose`` every stage once (a stage object listed twice is closed once). A failure is
    logged and the others are still closed: releasing one resource must not leak the next, nor
    replace the run's own outcome with a closing error."""
    closed: set[int] = set()
    for stage in stages:
        if id(stage) in closed:
            continue
        closed.add(id(stage))
        try:
            await stage.aclose()
        except Exception as error:  # noqa: BLE001 - see the docstring
            log.warning("warning: closing stage %r failed: %s: %s", stage.name or stage.type,
                        type(error).__name__, redact(str(error)))


class RowStage(Stage):
    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped] | Drop:
        raise NotImplementedError


class Rows:
    """The rows an all-rows stage reads: ``iter(rows)`` reads them afresh from where they are
    (the input file, a checkpoint, or memory), as often as the stage needs; ``len(rows)`` is
    their count. Iterate rather than index: the rows need not fit in memory."""

    def __init__(self, read: Callable[[], Iterator[Row]], count: int):
        self._read = read
        self._count = count

    @classmethod
    def of(cls, rows: list[Row]) -> Rows:
        return cls(lambda: iter(rows), len(rows))

    def __iter__(self) -> Iterator[Row]:
        return self._read()

    def __len__(self) -> int:
        return self._count


class AllRowsStage(Stage):
    needs_all_rows: ClassVar[bool] = True

    def run(self, rows: Rows, ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:
        raise NotImplementedError


class RowDecisions(Protocol):
    """What an :class:`AllRowsFilter` learned from all rows: a decision for each one."""

    figures: dict[str, Any] | None
    """The stage's figures over the rows it indexed (what :meth:`Stage.summarize` would report
    from the finished run, without reading the rows back), or None: summarize them at the end."""

    def decide(self, position: int, row: Row) -> Row | Dropped | Failed:
        """Row ``position`` (from 0, in the order indexed): kept (maybe with new columns or
        lineage), :class:`Dropped`, or :class:`Failed`."""
        ...


class AllRowsFilter(AllRowsStage):
    """An all-rows stage that keeps, changes or drops each row once it has seen them all.

    Write :meth:`index` (one pass, or a few, over the rows: keep only what the decisions need,
    such as hashes or scores, not the rows) and return a :class:`RowDecisions`. The executor
    then reads the rows once more and asks for a decision per row.
    """

    async def index(self, rows: Rows, ctx: StageContext) -> RowDecisions:
        raise NotImplementedError

    async def run(self, rows: Rows, ctx: StageContext) -> AsyncIterator[Row | Dropped | Failed]:  # type: ignore[override]
        decisions = await self.index(rows, ctx)
        for position, row in enumerate(rows):
            yield decisions.decide(position, row)


class FunctionStage(RowStage):
    """A plain Python function as a row stage (for pipelines built in Python)."""

    type: Literal["function"] = "function"
    function_name: str = ""
    _function: Callable[..., Any] = PrivateAttr()

    @classmethod
    def wrap(cls, function: Callable[..., Any], name: str | None = None) -> FunctionStage:
        qualified = f"{function.__module__}.{getattr(function, '__qualname__', repr(function))}"
        stage = cls(function_name=qualified, name=name or getattr(function, "__name__", None))
        stage._function = function
        return stage

    def identity(self) -> dict[str, Any]:
        """The function's name and a digest of its code: a changed function is a different run
        (resuming into the old one's folder would mix rows of both versions), and two lambdas
        are two stages, not one named ``<lambda>``."""
        return {**super().identity(), "code": code_digest(self._function)}

    async def process(self, row: Row, ctx: StageContext) -> Row | list[Row | Dropped] | Drop:
        result = self._function(row)
        if inspect.isawaitable(result):
            result = await result
        return result  # type: ignore[no-any-return]


def code_digest(function: Callable[..., Any]) -> str:
    """A digest of what ``function`` does: its source when Python can find it, else its
    bytecode, constants and names (recursively for nested code), plus the values it closes over
    when they have a stable text form."""
    target = getattr(function, "__func__", function)
    digest = hashlib.sha256()
    try:
        digest.update(inspect.getsource(target).encode())
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is None:
            digest.update(repr(target).encode())
        else:
            _feed_code(digest, code)
    for cell in getattr(target, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, (str, int, float, bool, bytes, type(None), tuple, frozenset)):
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def _feed_code(digest: Any, code: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            _feed_code(digest, const)
        else:
            digest.update(repr(const).encode())


def pipeline_dir(info: Any) -> Path | None:
    """The pipeline file's folder, from pydantic's validation context, when the stage was read
    from a file: a relative path in a stage's options (a principles file, a model, a benchmark)
    is read from there. ``info`` is the validator's ValidationInfo."""
    context = getattr(info, "context", None)
    if isinstance(context, dict) and context.get("base_dir") is not None:
        return Path(context["base_dir"])
    return None


stages: Registry[type[Stage]] = Registry("stage type")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage usable in pipeline files under its ``type`` name."""
    default = cls.model_fields["type"].default
    if not isinstance(default, str):
        raise TypeError(f"{cls.__name__} needs `type: Literal['name'] = 'name'`")
    return stages.register(default)(cls)

