"""Teacher-forced scoring for the transformers backend: :class:`TeacherForcedScoring`, the
pooled ``score`` and ``score_tokens`` (waiting calls taken ``SCORE_POOL_BATCHES`` batches' worth at once, sorted by
length, run in batches of at most ``batch_size`` sequences and ``batch_tokens`` padded tokens),
mixed into :class:`stillroom.llm.transformers_backend.TransformersBackend`, which supplies the
model, the tokenizer and the padded forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stillroom.llm.types import BackendError, Message

Prompt = list[Message] | str | None
"""Chat messages (the chat template is applied), raw text, or nothing (unconditional)."""

# How many batches' worth of waiting score calls one worker round takes: sorted by length there,
# more of them means batches of more similar lengths (less padding).
SCORE_POOL_BATCHES = 8


@dataclass(slots=True)
class _ScoreRow:
    """One completion to score: ``target`` after ``context``; ``cut``: the completion went on
    past ``target`` (max_tokens, max_length)."""

    index: int
    context: list[int]
    target: list[int]
    top_logprobs: int | None
    cut: bool


@dataclass(frozen=True, slots=True)
class _TokenAsk:
    """A ``score_tokens`` call: given ids, scored from ``start`` on. Pooled with the text
    scores (one row kind: context = ids[:start], target = ids[start:])."""

    token_ids: list[int]
    start: int
    top_logprobs: int | None


class TeacherForcedScoring:
    """The scoring half of the transformers backend (``score`` and its batching); the backend
    class provides what is declared below."""

    model: str
    batch_size: int
    batch_tokens: int | None
    score_passes: int
    _tokenizer: Any
    _torch: Any
    _max_positions: int | None
    _model: Any

    if TYPE_CHECKING:

        async def _submit(self, kind: str, payload: Any) -> Any: ...

        def _load_sync(self) -> None: ...

        def _prompt_ids(self, prompt: Prompt) -> list[int]: ...

        def _padded(self, sequences: list[list[int]]) -> tuple[Any, Any, Any]: ...

        def _forward(
            self, input_ids: Any, mask: Any, positions: Any, *, keep: int, past: Any = None,
            cache: bool
        ) -> Any: ...

        def _piece(self, token: int) -> str: ...

    async def score(
        self,
        prompt: Prompt,
        completion: str,
        top_logprobs: int | None = None,
        *,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``completion``'s tokens following ``prompt``.

        ``prompt`` is chat messages (the chat template with the assistant turn opened is put
        first), raw text (tokenized as the tokenizer reads plain text: with the special tokens it
        puts in front by default, so ``""`` is just those), or None for the completion on its
        own after the model's BOS token. One entry per completion token: ``{"token", "id",
        "logprob"}``; with ``top_logprobs`` K, also ``"top_logprobs"``: the K most likely tokens
        at that position, ``[{"token", "id", "logprob"}]`` best first, from the same raw
        (temperature 1) distribution -- the shape a ``complete`` stage stores, so offline KD
        data can come from any text. A first token with nothing before it is left out (nothing
        predicts it).

        ``max_tokens`` scores only the completion's first tokens; ``max_length`` cuts the
        completion so that prompt and completion fit in that many tokens (and in the model:
        without it, a pair longer than the model holds is a BadRequestError). When either cut
        the completion, its last scored entry has ``"truncated": True``; nothing fitting gives
        no entries. Concurrent calls are pooled and batched by length (see the module).
        """
        result: list[dict[str, Any]] = await self._submit(
            "score", (prompt, completion, top_logprobs, max_length, max_tokens)
        )
        return result

    async def score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None = None,
        *, text: str | None = None,  # only for text-only servers; the ids are scored here
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``token_ids[start:]`` (see ``Backend.score_tokens``): the
        ids go to the model as they are (no template, no BOS). Pooled and batched with the text
        scores; entries in the same shape."""
        ids = [int(token) for token in token_ids]
        if not 1 <= start < len(ids):
            raise BackendError(
                f"start must be in [1, {len(ids) - 1}], got {start}", kind="BadRequestError"
            )
        result: list[dict[str, Any]] = await self._submit(
            "score", _TokenAsk(ids, start, top_logprobs)
        )
        return result

    def _token_row(self, index: int, ask: _TokenAsk) -> _ScoreRow | BackendError:
        """A ``score_tokens`` call as a score row, or why it cannot be one."""
        vocabulary = int(self._model.get_input_embeddings().num_embeddings)
        bad = next((token for token in ask.token_ids if not 0 <= token < vocabulary), None)
        if bad is not None:  # an embedding lookup out of range would crash (or assert on CUDA)
            return BackendError(
                f"token id {bad} is outside {self.model}'s vocabulary (0..{vocabulary - 1})",
                kind="BadRequestError", status=400,
            )
        if self._max_positions and len(ask.token_ids) > self._max_positions:
            return BackendError(
                f"the ids to score are {len(ask.token_ids)} tokens and {self.model} holds "
                f"{self._max_positions}; shorten them",
                kind="BadRequestError", status=400,
            )
        return _ScoreRow(index, ask.token_ids[: ask.start], ask.token_ids[ask.start :],
                         ask.top_logprobs, False)

    def _score_sync(
        self, asks: list[tuple[Prompt, str, int | None, int | None, int | None] | _TokenAsk]
    ) -> list[list[dict[str, Any]] | BackendError]:
        self._load_sync()
        tokenizer = self._tokenizer
        results: list[list[dict[str, Any]] | BackendError] = [[] for _ in asks]
        rows: list[_ScoreRow] = []
        for index, ask in enumerate(asks):
            if isinstance(ask, _TokenAsk):
                row = self._token_row(index, ask)
                if isinstance(row, BackendError):
                    results[index] = row
                else:
                    rows.append(row)
                continue
            prompt, completion, top_logprobs, max_length, max_tokens = ask
            try:
                context = self._prompt_ids(prompt)
            except BackendError as error:
                results[index] = error
                continue
            if prompt is None and tokenizer.bos_token_id is not None:
                context = [int(tokenizer.bos_token_id)]
            target = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
            cut = False
            if max_tokens is not None and len(target) > max_tokens:
                target, cut = target[: max(0, max_tokens)], True
            limit = self._max_positions or None
            if max_length is not None:
                limit = min(limit, max_length) if limit else max_length
            if limit and len(context) + len(target) > limit:
                if max_length is None:
                    results[index] = BackendError(
                        f"prompt and completion are {len(context) + len(target)} tokens and "
                        f"{self.model} holds {self._max_positions}; shorten them",
                        kind="BadRequestError",
                        status=400,
                    )
                    continue
                target, cut = target[: max(0, limit - len(context))], True
            # A lone token with no context has nothing to predict it: nothing to score.
            if len(target) > (0 if context else 1):
                rows.append(_ScoreRow(index, context, target, top_logprobs, cut))
        if rows:
            with self._torch.inference_mode():
                for batch in self._score_batches(rows):
                    self._score_rows(batch, results)
        return results

    def _score_batches(self, rows: list[_ScoreRow]) -> list[list[_ScoreRow]]:
        """The rows longest first, so a batch holds sequences of similar length (little padding),
        at most batch_size of them and batch_tokens padded tokens."""
        ordered = sorted(rows, key=lambda row: -(len(row.context) + len(row.target)))
        batches: list[list[_ScoreRow]] = []
        current: list[_ScoreRow] = []
        width = 0
        for row in ordered:
            if current and (
                len(current) >= self.batch_size
                or (self.batch_tokens is not None and (len(current) + 1) * width > self.batch_tokens)
            ):
                batches.append(current)
                current = []
            if not current:
                width = len(row.context) + len(row.target)  # the longest of the batch
            current.append(row)
        if current:
            batches.append(current)
        return batches

    def _score_rows(
        self, rows: list[_ScoreRow], results: list[list[dict[str, Any]] | BackendError]
    ) -> None:
        torch = self._torch
        input_ids, mask, positions = self._padded([row.context + row.target for row in rows])
        width = input_ids.shape[1]
        # The scored tokens are every row's last ones: the logits of the `keep` last columns
        # predict them (a full row of logits is vocabulary-sized per token).
        keep = min(width, max(len(row.target) for row in rows) + 1)
        logits = self._forward(input_ids, mask, positions, keep=keep, cache=False).logits
        self.score_passes += 1
        # Column c of the kept window predicts the token in column c + 1 (so the last column
        # predicts nothing scored): one log-softmax and one gather for the whole batch.
        logprobs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
        predicted = logprobs.gather(-1, input_ids[:, width - keep + 1 :, None])[..., 0].tolist()
        top_k = max((row.top_logprobs or 0 for row in rows), default=0)
        # One topk over the batch's kept window (as _decode does per step), cut per row to its K.
        top = logprobs.topk(top_k, dim=-1) if top_k else None
        for i, row in enumerate(rows):
            # Target token j sits at column width - len(target) + j and is predicted by the
            # column before it; the kept window starts at column width - keep.
            before = keep - len(row.target) - 1
            scored = []
            for j, token in enumerate(row.target):
                if j == 0 and not row.context:
                    continue
                column = before + j
                entry: dict[str, Any] = {
                    "token": self._piece(token),
                    "id": token,
                    "logprob": predicted[i][column],
                }
                if row.top_logprobs is not None:
                    entry["top_logprobs"] = self._alternatives(top, i, column, row.top_logprobs)
                scored.append(entry)
            if row.cut and scored:
                scored[-1]["truncated"] = True
            results[row.index] = scored

    def _alternatives(self, top: Any, row: int, column: int, k: int) -> list[dict[str, Any]]:
        """The ``k`` most likely tokens at one scored position, best first (topk sorts)."""
        if not k or top is None:
            return []
        values = top.values[row, column, :k].tolist()
        ids = top.indices[row, column, :k].tolist()
        return [
            {"token": self._piece(t), "id": t, "logprob": v}
            for t, v in zip(ids, values, strict=True)
        ]
