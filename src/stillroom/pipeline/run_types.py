"""What a run is given and gives back: the pipeline as the executors see it
(:class:`PipelinePlan`, which :class:`~stillroom.pipeline.pipeline.Pipeline` is), the run's
options and its result. The executors and the end of a run depend on these, not on ``Pipeline``,
whose ``run`` starts them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from stillroom.errors import ConfigError

if TYPE_CHECKING:
    import datasets

    from stillroom.llm.backend import BackendConfig
    from stillroom.pipeline.inputs import InputConfig
    from stillroom.pipeline.stage import Row, Stage


class PipelinePlan(Protocol):
    """A pipeline as a run needs it: its stages (named), input, backends and seed."""

    stages: list[Stage]
    stage_names: list[str]
    input: str | os.PathLike[str] | InputConfig | list[Row] | datasets.Dataset | None
    base_dir: Path
    seed: int
    name: str | None
    description: str | None

    def used_backends(self) -> dict[str, BackendConfig]:
        """The backends its stages send requests to, by name."""
        ...

    def identity(self) -> dict[str, Any]:
        """What decides its output (a rerun into the same folder resumes only when it matches)."""
        ...


@dataclass
class RunOptions:
    overwrite: bool = False
    use_cache: bool = True
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    # Share of rows allowed to end in failed/ before the run counts as failed (exit code 1).
    max_failure_rate: float = 0.0
    # A commit happens after this many finished rows or this many seconds, whichever is first.
    flush_rows: int = 1000
    flush_seconds: float = 10.0
    limit: int | None = None
    # Measure the embedding diversity of generated columns at the end (loads a small sentence
    # model, needs the `embed` extra); the text measures are reported either way. True: unless
    # the run took under a minute (the model would cost more than the run); "always"; False.
    diversity_embeddings: bool | Literal["always"] = True
    # Where rows are processed: "local" (this process, one asyncio loop) or "ray" (a pool of Ray
    # actors; see stillroom.pipeline.ray_executor). Neither is part of the run's identity: a run
    # started on one resumes on the other into the same output folder.
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: start a local Ray for this run and stop it after
    workers: int | None = None  # Ray actors (None: as many as the cluster's CPUs or GPUs allow)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: what the pipeline's local engines need

    def __post_init__(self) -> None:
        if self.diversity_embeddings not in (True, False, "always"):
            raise ConfigError(f"diversity_embeddings must be true, false or 'always', not "
                              f"{self.diversity_embeddings!r}", key="diversity_embeddings")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"unknown executor {self.executor!r}: use local or ray", key="executor")
        ray_only = {"ray_address": self.ray_address, "workers": self.workers,
                    "gpus_per_worker": self.gpus_per_worker}
        given = [name for name, value in ray_only.items() if value is not None]
        if self.executor == "local" and given:
            raise ConfigError(
                f"{', '.join(given)} only apply with executor='ray' (--executor ray); requests in "
                "flight to a backend are its `concurrency` (a backend option in a pipeline file, "
                "--concurrency on complete)",
                key=given[0],
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers must be at least 1", key="workers")
        if self.cpus_per_worker < 0 or (self.gpus_per_worker or 0) < 0:
            raise ConfigError("cpus_per_worker and gpus_per_worker cannot be negative",
                              key="cpus_per_worker")


@dataclass
class RunResult:
    out: Path
    counts: dict[str, int]
    session_counts: dict[str, int]
    failures_by_reason: dict[str, int]
    drops_by_reason: dict[str, int]
    backends: dict[str, dict[str, Any]]
    seconds: float
    max_failure_rate: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        finished = self.counts.get("data", 0) + self.counts.get("failed", 0)
        return self.counts.get("failed", 0) / finished if finished else 0.0

    @property
    def ok(self) -> bool:
        return self.failure_rate <= self.max_failure_rate

    @property
    def dataset(self) -> datasets.Dataset:
        """The rows of ``data/`` as a ``datasets.Dataset``, every shard in row order (the order
        ``stillroom inspect`` and ``OutputFolder.read_rows`` give). Read from disk at each access,
        not kept: it is what the folder holds now. An empty ``data/`` gives an empty Dataset."""
        return read_dataset(self.out, "data")

    @property
    def failed(self) -> datasets.Dataset:
        """The rows of ``failed/`` (each with its ``stage``, ``error`` and ``error_type``), read
        from disk like :attr:`dataset`."""
        return read_dataset(self.out, "failed")

    @property
    def dropped(self) -> datasets.Dataset:
        """The rows of ``dropped/`` (each with its ``stage`` and ``drop_reason``), read from disk
        like :attr:`dataset`."""
        return read_dataset(self.out, "dropped")


def read_dataset(out: Path, kind: str) -> datasets.Dataset:
    """The Parquet shards of ``out/kind`` as one in-memory Arrow-backed Dataset.

    Read with pyarrow and wrapped, rather than ``Dataset.from_parquet``, which would copy the
    rows into the Hugging Face cache first. Shards are given one schema at the end of a run; an
    unfinished run's may still differ (a column all null in one shard), which the concatenation
    promotes."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stillroom.data.output import OutputFolder

    tables = [pq.read_table(path) for path in OutputFolder(out).shard_paths(kind)]
    if not tables:
        return datasets.Dataset(pa.table({}))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    return datasets.Dataset(table.replace_schema_metadata(None))
