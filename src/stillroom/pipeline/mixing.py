"""Mixing: real and synthetic sources combined with target shares, real data kept (accumulated).

    input:
      mix:
        - {path: data/human.jsonl, kind: real}                    # share: null = take every row
        - {path: out/evol/data, kind: synthetic, share: 0.3}
      size: 20000            # optional: at most this many rows in all

or ``stillroom mix -o OUT --source real:data/human.jsonl --source synthetic:out/evol/data:0.3``
(:func:`stillroom.api.mix` from Python).

Why the shares work the way they do: a model trained only on its own (or another model's)
generations narrows with each generation ("model collapse", Shumailov et al. 2024), while keeping
the real data and *adding* synthetic data to it avoids that (Gerstgrasser et al. 2024, "Is Model
Collapse Inevitable?"). So:

* A source with no ``share`` contributes every row it has (accumulate).
* ``share`` is the fraction of the final mix a source should make up. Sources without a share
  are taken whole and the shared ones are sized around them; a shared source with too few rows
  falls short of its share rather than cutting the others (the card shows the share reached).
  When every source has a share, the mix is the largest that meets every share without repeating
  a row. ``size`` caps the total, scaling every source down together (the one case where real
  rows are left out: you asked for it).
* A mix with no ``real`` source is refused unless ``allow_synthetic_only: true``: that is exactly
  the replace-instead-of-accumulate setup the collapse papers warn about.

Rows are drawn uniformly (seeded with the pipeline's seed and the source's name), then the mix is
shuffled with the same seed so any prefix of it holds every source in proportion. Each row gets
``metadata.mix = {source, kind}``; the card and report have a "Data mix" table (available, taken,
target and reached share per source).
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import Row
from stillroom.errors import InputError

Kind = Literal["real", "synthetic"]


class MixSource(BaseModel):
    """One source of a mix."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kind: Kind = Field(description="real (human-written) or synthetic (model-written).")
    share: float | None = Field(
        default=None, gt=0, lt=1, description="Fraction of the final mix; none = every row."
    )
    name: str | None = Field(default=None, description="Label in the card; default: the path.")
    limit: int | None = Field(default=None, ge=1, description="Read only the first N rows.")

    def label(self) -> str:
        return self.name or self.path


def check_sources(sources: list[MixSource], allow_synthetic_only: bool) -> str | None:
    """What is wrong with a mix's sources, if anything (a config error)."""
    labels = [source.label() for source in sources]
    if len(set(labels)) != len(labels):
        return f"two sources share a name or path: {labels}; give each a distinct `name`"
    shares = [source.share for source in sources if source.share is not None]
    if sum(shares) >= 1 - 1e-9 and len(shares) < len(sources):
        return "the shares add up to 1 or more, leaving nothing for the sources without a share"
    if len(shares) == len(sources) and abs(sum(shares) - 1) > 1e-6:
        return f"every source has a share, so they must add up to 1 (they add up to {sum(shares):g})"
    if not allow_synthetic_only and all(source.kind == "synthetic" for source in sources):
        return (
            "every source is synthetic: training only on generated data narrows a model with "
            "each generation (model collapse); add a real source (kind: real), or set "
            "allow_synthetic_only: true (--allow-synthetic-only) if this is what you mean"
        )
    return None


def plan_counts(available: list[int], shares: list[float | None], size: int | None) -> list[int]:
    """How many rows to take from each source (see the module docstring).

    Sources without a share are taken whole and the shared ones sized around them; a shared
    source that has too few rows falls short rather than cutting the others. With every source
    shared, the total is the largest that meets every share without repeating a row. ``size``
    then scales every count down together.
    """
    whole = sum(n for n, share in zip(available, shares, strict=True) if share is None)
    shared_total = sum(share for share in shares if share is not None)
    if shared_total == 0:
        counts = list(available)
    elif whole:
        total = whole / (1.0 - shared_total)
        counts = [
            n if share is None else min(n, math.floor(share * total + 1e-9))
            for n, share in zip(available, shares, strict=True)
        ]
    else:
        total = min(n / share for n, share in zip(available, shares, strict=True) if share)
        counts = [
            min(n, math.floor((share or 0.0) * total + 1e-9))
            for n, share in zip(available, shares, strict=True)
        ]
    if size is not None and sum(counts) > size:
        factor = size / sum(counts)
        counts = [math.floor(count * factor + 1e-9) for count in counts]
    return counts


def _rng(seed: int, *parts: Any) -> random.Random:
    text = "\x1f".join(str(part) for part in (seed, "mix", *parts))
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def mix_rows(
    sources: list[MixSource], base_dir: Path, seed: int, size: int | None = None
) -> tuple[list[tuple[str, Row]], list[dict[str, Any]]]:
    """The mixed rows, each with where it came from, and the mix report for the card."""
    loaded: list[list[tuple[str, Row]]] = []
    for source in sources:
        path = resolve_input_path(source.path, base_dir)
        rows = []
        for index, (where, row) in enumerate(iter_rows(path)):
            if source.limit is not None and index >= source.limit:
                break
            if not isinstance(row, dict):
                raise InputError(f"a row must be a mapping, got {type(row).__name__}", path=where)
            rows.append((where, row))
        if not rows:
            raise InputError("this mix source has no rows", path=str(path))
        loaded.append(rows)
    counts = plan_counts([len(rows) for rows in loaded], [s.share for s in sources], size)
    mixed: list[tuple[str, Row]] = []
    for source, rows, count in zip(sources, loaded, counts, strict=True):
        picked = sorted(_rng(seed, source.label()).sample(range(len(rows)), count))
        for index in picked:
            where, row = rows[index]
            metadata = dict(row.get("metadata") or {})
            metadata["mix"] = {"source": source.label(), "kind": source.kind}
            mixed.append((where, {**row, "metadata": metadata}))
    _rng(seed, "order").shuffle(mixed)
    total = len(mixed)
    report = [
        {
            "source": source.label(),
            "kind": source.kind,
            "available": len(rows),
            "taken": count,
            "target share": source.share,
            "share": count / total if total else 0.0,
        }
        for source, rows, count in zip(sources, loaded, counts, strict=True)
    ]
    return mixed, report


def parse_source(text: str) -> MixSource:
    """``KIND:PATH`` or ``KIND:PATH:SHARE`` (the CLI's ``--source``)."""
    from stillroom.errors import ConfigError

    kind, _, rest = text.partition(":")
    if kind not in ("real", "synthetic") or not rest:
        raise ConfigError(
            f"--source {text!r}: write KIND:PATH or KIND:PATH:SHARE, KIND real or synthetic",
            key="--source",
        )
    path, share = rest, None
    head, _, tail = rest.rpartition(":")
    if head:
        try:
            share = float(tail)
            path = head
        except ValueError:
            pass  # a colon inside the path
    try:
        return MixSource(path=path, kind=kind, share=share)  # type: ignore[arg-type]
    except ValueError as error:
        raise ConfigError(f"--source {text!r}: {error}", key="--source") from None

