"""What PruneVid adds to an lmms-eval chat model, whatever the family: options, pruner, logged numbers.

:class:`PruneVidLmmsModel` is combined with lmms-eval's own model class (``lmms_eval_qwen2_5_vl``,
``lmms_eval_qwen3_vl``) and changes two things only: ``__init__`` takes the PruneVid options and attaches
the pruner to the loaded model, and ``generate_until`` runs lmms-eval's own ``generate_until`` while
noting, for every request, what the pruner did and the time to first token. Frame sampling, prompts,
generation settings and scoring stay lmms-eval's.

``--model_args``: everything the lmms-eval class takes (``pretrained``, ``max_num_frames``,
``attn_implementation``, ...), plus ``preset`` (default ``paper``) and any :class:`PruneVidConfig` field
(``keep_ratio=0.3``, ``tau=0.7``, ``pruning_layer=12``, ``fast_vision=false``, ...).

Per request, lmms-eval's logged samples (``--log_samples``) carry, in ``token_counts``, a ``prunevid``
entry: ``video_tokens_in``, ``video_tokens_after_stage1``, ``video_tokens_after_stage2``, ``retention``,
``ttft_s`` (of the ``generate`` call that answered it; shared by the requests of one batch),
``batch_size`` and ``preset``. It relies on lmms-eval's chat models building each batch's messages (one
``doc_to_messages`` call per row, in row order) right before that batch's single ``generate`` call.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts

from prunevid.config import PruneVidConfig
from prunevid.integrations.lmms_eval_registry import CONFIG_FIELDS, config_from_model_args
from prunevid.pipeline import _FirstTokenClock, _synchronize
from prunevid.qwen2_5_vl import Pruner, attach
from prunevid.stats import PruneStats

__all__ = ["PruneVidLmmsModel", "PruneVidTokenCounts"]


@dataclasses.dataclass
class PruneVidTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts plus what PruneVid did (``prunevid``; None if unknown)."""

    prunevid: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """lmms-eval's counts, with ``"prunevid": {...}`` added."""
        counts = super().to_dict()
        if self.prunevid is not None:
            counts["prunevid"] = self.prunevid
        return counts


class PruneVidLmmsModel:
    """Mixin put before an lmms-eval chat model class (``class M(PruneVidLmmsModel, LmmsEvalClass)``):
    the PruneVid options are taken out of the model arguments and the pruner is attached to the loaded
    model; :meth:`generate_until` is the lmms-eval class's own, with PruneVid's numbers added.

    Attributes:
        prunevid_config: the validated :class:`PruneVidConfig`.
        pruner: the attached :class:`~prunevid.qwen2_5_vl.Pruner` (``pruner.detach()`` makes it stock).
        prunevid_preset: the preset name the options were applied to.
    """

    is_simple = False
    _timed_generate: _TimedGenerate | None = None

    def __init__(self, preset: str = "paper", **kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in CONFIG_FIELDS}
        # Options are checked before the model loads: a typo costs seconds, not a 7B load.
        config = config_from_model_args(preset, options)
        base = self._lmms_class()
        accepted = set(inspect.signature(base.__init__).parameters) - {"self", "kwargs"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ValueError(
                f"unknown model_args {', '.join(unknown)}: {type(self).__name__} takes those of lmms-eval's "
                f"{base.__module__}.{base.__name__} ({', '.join(sorted(accepted))}), preset, and the "
                f"PruneVidConfig fields ({', '.join(CONFIG_FIELDS)})"
            )
        super().__init__(**kwargs)
        self.prunevid_preset = str(preset)
        self.prunevid_config: PruneVidConfig = config
        self.pruner: Pruner = attach(self.model, config)

    @classmethod
    def _lmms_class(cls) -> type:
        """The lmms-eval model class this mixin is combined with (the next class in the MRO)."""
        order = cls.__mro__
        return order[order.index(PruneVidLmmsModel) + 1]

    @property
    def model(self) -> Any:
        """The model; inside :meth:`generate_until`, a view of it whose ``generate`` is timed."""
        model = super().model
        return model if self._timed_generate is None else _ModelView(model, self._timed_generate)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """lmms-eval's ``generate_until``, each result's ``token_counts`` carrying PruneVid's numbers.

        Args:
            requests: lmms-eval chat requests, ``args = (context, doc_to_messages, gen_kwargs, doc_id,
                task, split)``.

        Returns:
            One :class:`GenerationResult` per request, in request order, its ``token_counts`` a
            :class:`PruneVidTokenCounts`.
        """
        timed = _TimedGenerate(self.pruner, self.prunevid_preset, len(requests))
        # lmms-eval builds each batch's messages (calling doc_to_messages in batch row order) right
        # before that batch's generate(): wrapping doc_to_messages tells which request is which row.
        tracked = [
            dataclasses.replace(
                request,
                arguments=(
                    request.args[0],
                    _NoteRow(request.args[1], index, timed.prepared),
                    *request.args[2:],
                ),
            )
            for index, request in enumerate(requests)
        ]
        self._timed_generate = timed
        try:
            results = super().generate_until(tracked)
        finally:
            self._timed_generate = None
        return [_with_record(result, record) for result, record in zip(results, timed.records, strict=True)]


def _with_record(result: GenerationResult | str, record: dict[str, Any] | None) -> GenerationResult:
    """``result`` with lmms-eval's token counts kept and PruneVid's ``record`` added."""
    if not isinstance(result, GenerationResult):
        return GenerationResult(text=str(result), token_counts=PruneVidTokenCounts(prunevid=record))
    counts = result.token_counts
    kept = {f.name: getattr(counts, f.name) for f in dataclasses.fields(TokenCounts)} if counts else {}
    return GenerationResult(text=result.text, token_counts=PruneVidTokenCounts(**kept, prunevid=record))


class _NoteRow:
    """``doc_to_messages`` that first appends its request's index to ``prepared``."""

    def __init__(self, doc_to_messages: Callable[[Any], Any], index: int, prepared: list[int]) -> None:
        self.doc_to_messages = doc_to_messages
        self.index = index
        self.prepared = prepared

    def __call__(self, doc: Any) -> Any:
        self.prepared.append(self.index)
        return self.doc_to_messages(doc)


class _TimedGenerate:
    """Times each ``generate`` call and files the pruner's per-row statistics under the requests."""

    def __init__(self, pruner: Pruner, preset: str, num_requests: int) -> None:
        self.pruner = pruner
        self.preset = preset
        self.prepared: list[int] = []
        self.records: list[dict[str, Any] | None] = [None] * num_requests

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        rows = self.prepared[:]
        self.prepared.clear()
        clock = None
        if kwargs.get("streamer") is None:
            clock = _FirstTokenClock(model)
            kwargs["streamer"] = clock
        self.pruner.last_stats = None
        started = _synchronize(model)
        output = model.generate(*args, **kwargs)
        finished = _synchronize(model)
        stats = self.pruner.last_stats
        batch = kwargs["input_ids"].shape[0] if "input_ids" in kwargs else None
        if stats is None or batch != len(rows) or len(stats.samples) != batch:
            return output  # rows not known for certain: no numbers rather than wrong ones
        first_token = clock.first_token_at if clock is not None and clock.first_token_at else finished
        for row, index in enumerate(rows):
            self.records[index] = _row_record(stats, row, self.preset, first_token - started, batch)
        return output


def _row_record(stats: PruneStats, row: int, preset: str, ttft: float, batch: int) -> dict[str, Any]:
    videos = stats.samples[row].videos
    tokens_in = sum(v.tokens_in for v in videos)
    after_stage2 = sum(v.tokens_after_stage2 for v in videos)
    return {
        "preset": preset,
        "video_tokens_in": tokens_in,
        "video_tokens_after_stage1": sum(v.tokens_after_stage1 for v in videos),
        "video_tokens_after_stage2": after_stage2,
        "retention": after_stage2 / tokens_in if tokens_in else 1.0,
        "ttft_s": ttft,
        "batch_size": batch,
    }


class _ModelView:
    """The model, with ``generate`` going through a :class:`_TimedGenerate`; all else is the model's."""

    def __init__(self, model: Any, timed: _TimedGenerate) -> None:
        self._model = model
        self._timed = timed

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._model, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
