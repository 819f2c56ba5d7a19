"""A pipeline cut into segments: the stages run between two checkpoints (see the executor)."""

from __future__ import annotations

from dataclasses import dataclass

from stillroom.errors import ConfigError
from stillroom.pipeline.stage import AllRowsFilter, AllRowsStage, RowStage, Stage

# Rows committed at once where a segment has no row stage (a redo costs only reading them again):
# few shards, and a resume redoes at most this many.
ROWS_PER_CHUNK = 50_000


@dataclass
class Segment:
    """Stages run between two checkpoints: an optional :class:`AllRowsFilter` at its head that
    decides each row as the rows stream in, row stages, and the all-rows stage that ends it
    (none for the last segment)."""

    index: int
    row_stages: list[tuple[str, RowStage]]
    all_rows_stage: tuple[str, AllRowsStage] | None
    head: tuple[str, AllRowsFilter] | None = None

    @property
    def final(self) -> bool:
        return self.all_rows_stage is None

    def key(self, position: int) -> str:
        """The key of the segment's row ``position``: the row itself, or its chunk where no row
        stage runs. A method, not an expression in a caller's loop: a generator expression over
        a loop variable read it one segment later, and a resumed run wrote rows twice."""
        prefix = f"{self.index}:" if self.index else ""
        if not self.row_stages:
            return f"{prefix}c{position // ROWS_PER_CHUNK}"
        return f"{prefix}{position}"

    def rows_done(self, keys: set[str], total: int) -> int:
        """About how many rows ``keys`` (committed keys of this segment) stand for."""
        return min(total, len(keys) * (1 if self.row_stages else ROWS_PER_CHUNK))


def split_segments(stages: list[Stage], names: list[str]) -> list[Segment]:
    segments: list[Segment] = []
    current: list[tuple[str, RowStage]] = []
    head: tuple[str, AllRowsFilter] | None = None
    for stage, name in zip(stages, names, strict=True):
        if isinstance(stage, AllRowsFilter) and head is None and not current:
            head = (name, stage)  # first in its segment: it streams (see the module docstring)
        elif isinstance(stage, AllRowsStage):
            segments.append(Segment(len(segments), current, (name, stage), head))
            current, head = [], None
        elif isinstance(stage, RowStage):
            current.append((name, stage))
        else:
            raise ConfigError(f"stage {name!r} is neither a RowStage nor an AllRowsStage")
    segments.append(Segment(len(segments), current, None, head))
    return segments
