"""The PruneVid pruner, written once for every Qwen VL family: hooks on a stock transformers model.

Nothing here copies or replaces transformers code. The stages are pure functions (``stage1_merge``,
``stage2_select``, ``stage3_cache``); the pruner decides where their inputs come from and applies their
results to a stock ``...ForConditionalGeneration``. What differs per family (where a video's tokens sit,
which modules give Stage 2 its queries and keys, DeepStack, the vision fast path) is a small
:class:`~prunevid.models.family.Family` (:mod:`prunevid.models.registry`).

- a pre-hook on ``model.model`` sees ``input_ids`` and finds each video's runs of tokens (bookkeeping), or,
  for tokens appended to a pruned cache, maps the mask and positions onto the cache's physical rows;
- a pre-hook on ``model.model.language_model`` (after the video features are scattered in) replaces every
  video by its Stage-1 merged tokens and gathers positions, mask and DeepStack inputs (Stage 1);
- hooks on decoder layer ``M`` take its pre-rotary queries and keys, score and select (Stage 2), gather the
  hidden states and cut the caches of layers ``0..M`` (Stage 3); pre-hooks on layers ``> M`` give them the
  gathered positions and masks;
- a hook after the language model records :class:`~prunevid.stats.PruneStats` and leaves a
  :class:`CacheLayout` on a pruned cache; an instance-level ``generate`` refuses ``use_cache=False``.

A disabled stage registers no hook, so its code never runs; ``detach`` removes every hook and every
instance attribute it set.

Version facts this module relies on (verified on transformers 4.57, 5.17 and 5.24, see the integration
specs): the cache is passed as ``past_key_values`` (4.x, 5.17) or ``cache`` (5.24); decoder layers return a
tensor (5.x, and Qwen3-VL everywhere) or a tuple (Qwen2/2.5-VL on 4.57); rotary ``(cos, sin)`` have the
sequence on dim -2 in all versions; 4.57 passes a logical ``cache_position``; 5.x generate decodes at the
last prompt position plus one per row, 4.57 at the largest prompt position plus one.
"""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from prunevid.config import PruneVidConfig
from prunevid.models.family import Family
from prunevid.models.registry import family_of
from prunevid.reference_methods import ReferenceConfig, reduce_video
from prunevid.stage1_merge import merge_video
from prunevid.stage2_select import (
    budget_groups,
    question_attention_scores,
    select_tokens,
    select_tokens_covering,
)
from prunevid.stage3_cache import compress_kv
from prunevid.stats import PruneStats, SampleStats, VideoStats

SUPPORTED_ATTENTION = ("sdpa", "eager")
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
_CACHE_KWARGS = ("cache", "past_key_values")
# The pruner attached to each model, so a model never carries two sets of hooks.
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Qwen VL chat vocabulary: the special tokens are added in a fixed order (<|endoftext|> <|im_start|>
# <|im_end|> ... <|vision_start|> <|vision_end|> ...), so their ids sit at fixed offsets.
_IM_START_OFFSET = -8
_IM_END_OFFSET = -7
_NEW_VIDEO_IN_CONTINUATION = (
    "this KV cache was pruned by PruneVid: continue its conversation with text only. Its video is already in "
    "the cache, so pass input_ids and attention_mask without pixel_values_videos; a new video needs a new "
    "prompt without this cache"
)
# Where a pruned cache keeps its CacheLayout: an attribute, so copy.deepcopy(cache) carries its own copy.
_LAYOUT_ATTRIBUTE = "_prunevid_layout"


@dataclass
class CacheLayout:
    """What a KV cache that PruneVid pruned holds. It lives on the cache object itself (so a
    ``copy.deepcopy`` of the cache carries its own copy) and grows with every token appended.

    Attributes:
        logical_length: tokens of the conversation (prompt and everything appended since) that the cache
            stands for, counted unpruned: the length of the ``input_ids``/``attention_mask`` that
            ``generate()`` holds for it.
        valid: ``[B, S]`` bool, the physical rows of layers ``0..M`` (of every layer when
            ``upper_valid`` is None) that may be attended to (False: padding).
        next_position: ``[3, B]`` int64, the M-RoPE (t, h, w) position of each sample's next token: the
            position stock transformers gives it in the unpruned conversation.
        upper_valid: ``[B, S_up]`` bool, the rows of layers ``>= upper_start`` when Stage 3 was off (layers
            ``0..M`` then keep every prompt token); None when every layer holds the same rows.
        upper_start: the first layer ``upper_valid`` describes (``M + 1``), or None.
        token_ids: ``[B, logical_length]`` int64 (CPU), the conversation's token ids, to check that a
            continuation really continues it; None once a step was fed as ``inputs_embeds``.
    """

    logical_length: int
    valid: Tensor
    next_position: Tensor
    upper_valid: Tensor | None = None
    upper_start: int | None = None
    token_ids: Tensor | None = None

    def new_positions(self, tail: Tensor) -> Tensor:
        """M-RoPE positions ``[3, B, n]`` of ``n`` appended tokens with validity ``tail [B, n]``."""
        steps = (tail.long().cumsum(1) - 1).clamp(min=0).to(self.next_position.device)
        return self.next_position[:, :, None] + steps[None]

    def append(self, tail: Tensor, token_ids: Tensor | None) -> None:
        """Record ``n`` rows appended to every layer of the cache: validity ``tail [B, n]`` bool, their
        ``token_ids [B, n]`` (None for ``inputs_embeds``)."""
        self.logical_length += tail.shape[1]
        known = self.token_ids is not None and token_ids is not None
        self.token_ids = torch.cat([self.token_ids, token_ids.cpu()], dim=1) if known else None
        self.valid = torch.cat([self.valid, tail.to(self.valid.device)], dim=1)
        if self.upper_valid is not None:
            self.upper_valid = torch.cat([self.upper_valid, tail.to(self.upper_valid.device)], dim=1)
        self.next_position = self.next_position + tail.sum(1).to(self.next_position)[None]


def cache_layout(cache: Any) -> CacheLayout | None:
    """The :class:`CacheLayout` of a KV cache that a pruned prefill produced (or a copy of one), else None."""
    return getattr(cache, _LAYOUT_ATTRIBUTE, None) if cache is not None else None


@dataclass
class _Video:
    """One video of one sample and what the stages made of it."""

    spans: list[tuple[int, int]]  # its runs of video tokens in the prompt: one, or one per frame group
    grid: tuple[int, int, int]  # LLM token grid (T', h', w')
    tokens: Tensor  # [n] prompt positions of its tokens in raster order (t, row, col)
    slots: Tensor | None = None  # [n'] its slots in the current (possibly merged) sequence, increasing
    groups: Tensor | None = None  # [n'] Stage-2 budget group per slot
    merged_into: Tensor | None = None  # [n] Stage 1: prompt index of each source token's representative

    @property
    def start(self) -> int:
        return self.spans[0][0]

    @property
    def end(self) -> int:
        return self.spans[-1][1]

    def span_frames(self) -> list[tuple[int, int]]:
        """The frames ``[f0, f1)`` of the grid each span holds."""
        if len(self.spans) == 1:
            return [(0, self.grid[0])]
        return [(k, k + 1) for k in range(len(self.spans))]


@dataclass
class _Prefill:
    """State of one prefill, from ``model.model``'s pre-hook to the end of its language-model forward."""

    prompt_length: int
    input_ids: Tensor | None  # [B, L] on the CPU (None with inputs_embeds only)
    videos: list[list[_Video]]  # per sample
    stats: PruneStats
    origin: Tensor | None = None  # [B, S] original prompt index of every slot; -1 for padding slots we add
    valid: Tensor | None = None  # [B, S] bool: the slot may be attended to
    question: list[Tensor] = field(default_factory=list)  # per sample: slots of its question rows
    next_position: Tensor | None = None  # [3, B] M-RoPE position of the token after the prompt
    stage1_origin: Tensor | None = None  # [B, S1] origin of the rows of layers 0..M
    query: list[Tensor] = field(default_factory=list)  # per sample: [R_b, H*d] layer-M queries (pre-rotary)
    key: Tensor | None = None  # [B, S, H_kv*d] layer-M keys (pre-rotary)
    keep: Tensor | None = None  # [B, K] slots kept by Stage 2 (padded); None when nothing was removed
    upper_mask: Tensor | None = None  # 4-D mask for layers > M
    upper_position: dict = field(default_factory=dict)  # gathered rotary tables, by id of the original
    pruned: bool = False  # the physical sequence differs from the prompt
    lower_valid: Tensor | None = None  # [B, P] validity of the cache rows of layers 0..M after prefill
    upper_valid: Tensor | None = None  # [B, K] validity of the cache rows of layers > M


@dataclass
class _Step:
    """A forward that appends tokens to a pruned cache (a decode step or a follow-up turn)."""

    layout: CacheLayout
    tail: Tensor  # [B, n] bool validity of the appended tokens
    token_ids: Tensor | None  # [B, n] their ids (None for inputs_embeds)
    physical_length: int  # cache rows of layer 0 before the forward
    upper_mask: Tensor | None = None  # 4-D mask for layers > M when they hold other rows (Stage 3 off)


class Pruner:
    """PruneVid attached to one stock Qwen VL model; build it with :func:`attach`.

    Holds every hook it registered (:meth:`detach` removes them all and leaves the model exactly as it
    was; it is also a context manager) and the statistics of the last prefill in :attr:`last_stats`.
    The state of a forward in flight is per thread, and a pruned cache carries its own
    :class:`CacheLayout`, so threads may share one pruned model (``last_stats`` is then the last to finish).
    """

    def __init__(self, model: nn.Module, config: PruneVidConfig) -> None:
        family = family_of(model)
        if not isinstance(config, PruneVidConfig):
            raise TypeError(f"config must be a PruneVidConfig, got {type(config).__name__}")
        if pruner_of(model) is not None:
            raise RuntimeError("a PruneVid pruner is already attached to this model; detach() it first")
        self.model = model
        self.family: Family = family
        self.config = config
        self.last_stats: PruneStats | None = None
        language_model = model.model.language_model
        self._language_model = language_model
        self._layers = language_model.layers
        self.pruning_layer = config.resolve_pruning_layer(len(self._layers)) if config.enable_stage2 else None
        levels = family.deepstack_levels(model)
        if self.pruning_layer is not None and self.pruning_layer < levels:
            raise ValueError(
                f"pruning_layer={self.pruning_layer} is inside {family.name}'s DeepStack layers: the "
                f"language model adds vision features after layers 0..{levels - 1}, so Stage 2 must select "
                f"at a layer >= {levels}"
            )
        self._video_token_id = model.config.video_token_id
        self._image_token_id = model.config.image_token_id
        self._vision_start_id = model.config.vision_start_token_id
        self._local = threading.local()
        if config.enabled:
            _check_model_supports_pruning(model)

        hooks = [
            model.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True),
            language_model.register_forward_hook(self._after_llm, with_kwargs=True),
        ]
        if config.enabled:
            hooks += [
                model.register_forward_pre_hook(self._on_top_call, with_kwargs=True),
                language_model.register_forward_pre_hook(self._before_llm, with_kwargs=True),
            ]
        if config.enable_stage2:
            layer = self._layers[self.pruning_layer]
            query_module, key_module = family.query_key_modules(layer)
            hooks += [
                query_module.register_forward_hook(self._keep_queries),
                key_module.register_forward_hook(self._keep_keys),
                layer.register_forward_hook(self._select, with_kwargs=True),
            ]
            hooks += [
                upper.register_forward_pre_hook(self._before_upper_layer, with_kwargs=True)
                for upper in self._layers[self.pruning_layer + 1 :]
            ]
        self._hooks = hooks
        self._fast_vision = family.install_fast_vision(model) if config.fast_vision else None
        self._generate = _GenerateGuard(model, self) if config.enabled or config.fast_decode else None
        _ATTACHED[model] = weakref.ref(self)  # a strong value would keep its key alive forever

    # ----------------------------------------------------------------- public API
    def detach(self) -> None:
        """Remove every hook; the model computes exactly as before :func:`attach`."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._fast_vision is not None:
            self._fast_vision.remove()
            self._fast_vision = None
        if self._generate is not None:
            self._generate.remove()
            self._generate = None
        self._local = threading.local()
        if pruner_of(self.model) is self:
            del _ATTACHED[self.model]

    @property
    def attached(self) -> bool:
        """Whether the hooks are still in place."""
        return bool(self._hooks)

    @property
    def fast_vision_active(self) -> bool:
        """Whether the vision attention runs the batched path (``fast_vision`` on, a family that has one,
        SDPA vision attention)."""
        return self._fast_vision is not None and bool(self._fast_vision.modules)

    def __enter__(self) -> Pruner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"Pruner(attached={self.attached}, pruning_layer={self.pruning_layer}, config={self.config})"

    def __deepcopy__(self, memo: dict) -> Pruner:
        """``copy.deepcopy(model)`` copies its hooks and this pruner with them: the copy prunes the copy."""
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for name, value in vars(self).items():  # per-thread state is not copied (nor copyable)
            setattr(clone, name, threading.local() if name == "_local" else copy.deepcopy(value, memo))
        if clone._hooks:
            _ATTACHED[clone.model] = weakref.ref(clone)
        return clone

    # ----------------------------------------------------------------- entry checks
    def _on_top_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward of the whole model: remember whether it computes a loss (refused when pruning)."""
        self._local.labels = kwargs.get("labels") is not None

    def _check_can_prune(self, labels: bool) -> None:
        """Refuse the ways of running a model that cannot hold a data-dependent pruned length."""
        modules = (self.model, self.model.model, self.model.model.language_model, *self._layers)
        if torch.compiler.is_compiling() or any(m._compiled_call_impl is not None for m in modules):
            raise RuntimeError(
                "PruneVid cannot run inside torch.compile: the pruned length is data dependent; "
                "compile only the vision tower, or detach the pruner"
            )
        if labels:
            raise ValueError(
                "PruneVid cannot compute transformers' loss from labels: a pruned forward returns logits for "
                "the kept rows only. Compute the loss on those rows yourself "
                "(pruner.last_stats.samples[b].output_positions maps each row to its prompt position), "
                "or detach the pruner"
            )
        if (
            self.config.enable_stage2
            and self.model.training
            and torch.is_grad_enabled()
            and any(
                getattr(m, "gradient_checkpointing", False) for m in (self._language_model, *self._layers)
            )
        ):
            raise RuntimeError(
                "PruneVid Stage 2 cannot run with gradient checkpointing: the backward pass would run layer "
                "M again without the selection; call model.gradient_checkpointing_disable(), or prune with "
                "Stage 1 only"
            )

    # ----------------------------------------------------------------- bookkeeping
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Start of a forward of ``model.model``: a prefill to prune, or tokens appended to a pruned cache."""
        local = self._local
        local.prefill = local.step = None
        overlapping = getattr(local, "continuation", None)
        local.continuation = None  # only the first call of a generate() re-feeds cached tokens
        cache = _cache_from(kwargs)
        layout = cache_layout(cache)
        if layout is not None:
            return self._on_pruned_cache(layout, cache, overlapping is layout, args, kwargs)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        past = cache.get_seq_length() if cache is not None else 0
        labels, local.labels = getattr(local, "labels", False), False
        if not self.config.enabled:  # statistics only: count the video tokens, read nothing else
            if past == 0 and input_ids is not None:
                local.prefill = self._not_pruned(input_ids, None)
            return None
        has_video_data = _has_video_data(kwargs)
        if past > 0:
            if has_video_data:
                raise RuntimeError(
                    "PruneVid prunes a video only in a prefill that starts from an empty cache; this call "
                    f"passes video inputs with a cache of {past} tokens that PruneVid did not prune. Start "
                    "from an empty cache, or detach the pruner"
                )
            return None  # continuing an unpruned prefix with text: stock
        if input_ids is None:
            local.prefill = self._not_pruned(
                kwargs["inputs_embeds"],
                "inputs_embeds only: the video tokens cannot be found without input_ids",
            )
            return None
        spans = _video_spans(input_ids, self._video_token_id)
        if not spans or not has_video_data:
            reason = "video-token ids without video data (pixel_values_videos): stock embeds them as text"
            local.prefill = self._not_pruned(input_ids, reason if spans else None)
            return None
        self._check_can_prune(labels)
        _check_cache(cache)
        videos: list[list[_Video]] = [[] for _ in range(input_ids.shape[0])]
        for b, video in self._find_videos(spans, kwargs):
            videos[b].append(video)
        local.prefill = self._new_prefill(input_ids, videos)
        return None

    def _find_videos(self, runs: list[tuple[int, int, int]], kwargs: dict) -> list[tuple[int, _Video]]:
        """Group the runs of video tokens ``(sample, start, end)`` into videos with their LLM grids.

        A video is one run (Qwen2/2.5-VL) or ``T'`` consecutive runs of ``h' * w'`` tokens, one per frame
        group (Qwen3-VL). The grids come from ``video_grid_thw``, or, when 5.24's generate() encoded the
        videos first and dropped it, from the M-RoPE rows and the encoded videos' token counts.
        """
        merge = self.model.config.vision_config.spatial_merge_size
        video_grid_thw, position_ids = kwargs.get("video_grid_thw"), kwargs.get("position_ids")
        if video_grid_thw is not None:
            grids = [(t, h // merge, w // merge) for t, h, w in video_grid_thw.tolist()]
        elif position_ids is not None and position_ids.ndim == 3:
            run_grids = [_grid_from_positions(position_ids[-2:, b, start:end]) for b, start, end in runs]
            if not self.family.frame_groups:
                grids = run_grids
            else:
                grids, cursor = [], 0
                for count in _encoded_video_lengths(kwargs.get("mm_encoder_outputs")):
                    _, height, width = run_grids[cursor]
                    frames = count // (height * width)
                    grids.append((frames, height, width))
                    cursor += frames
        else:
            raise ValueError(
                "PruneVid needs video_grid_thw (or the model's 3-D position ids) to read the video grids; "
                "pass the processor's outputs unchanged"
            )
        runs_per_video = [t if self.family.frame_groups else 1 for t, _, _ in grids]
        if sum(runs_per_video) != len(runs):
            raise ValueError(
                f"the prompt has {len(runs)} runs of video tokens but video_grid_thw describes "
                f"{sum(runs_per_video)}; pass the processor's outputs unchanged"
            )
        videos, cursor = [], 0
        for grid, count in zip(grids, runs_per_video, strict=True):
            mine = runs[cursor : cursor + count]
            cursor += count
            b = mine[0][0]
            sizes = {end - start for _, start, end in mine}
            expected = grid[1] * grid[2] * (1 if self.family.frame_groups else grid[0])
            if any(other != b for other, _, _ in mine) or sizes != {expected}:
                raise ValueError(
                    f"sample {b}: runs of {sorted(sizes)} video tokens do not match the video grid {grid}; "
                    "pass the processor's outputs unchanged"
                )
            spans = [(start, end) for _, start, end in mine]
            tokens = torch.cat([torch.arange(start, end) for start, end in spans])
            videos.append((b, _Video(spans, grid, tokens)))
        return videos

    def _new_prefill(self, input_ids: Tensor, videos: list[list[_Video]]) -> _Prefill:
        stats = _unpruned_stats(
            input_ids.shape[1], [[v.tokens.tolist() for v in sample] for sample in videos]
        )
        stats.pruning_layer = self.pruning_layer
        return _Prefill(
            prompt_length=input_ids.shape[1], input_ids=input_ids.cpu(), videos=videos, stats=stats
        )

    def _not_pruned(self, tokens: Tensor, reason: str | None) -> _Prefill:
        """A prefill left stock (every stage off, or nothing to prune); the statistics say why."""
        batch, length = tokens.shape[:2]
        if tokens.is_floating_point():  # inputs_embeds: no token ids to count videos in
            stats = PruneStats(samples=[SampleStats(prompt_length=length) for _ in range(batch)])
        else:
            stats = _count_stats(tokens, self._video_token_id)
        stats.pruning_layer, stats.not_pruned = self.pruning_layer, reason
        for sample in stats.samples:
            if self.config.enable_stage2:
                sample.stage2_skipped = (
                    "no video data in this sample" if sample.videos else "no video in this sample"
                )
        return _Prefill(prompt_length=length, input_ids=None, videos=[[] for _ in range(batch)], stats=stats)

    def _after_llm(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """End of a language-model forward: record the statistics, or what the step appended."""
        local = self._local
        cache = (
            _cache_from(kwargs) or getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        )
        step, local.step = getattr(local, "step", None), None
        if step is not None:
            grown = cache is not None and cache.get_seq_length() == step.physical_length + step.tail.shape[1]
            if grown:  # use_cache=False leaves the cache as it was
                step.layout.append(step.tail, step.token_ids)
            return
        state, local.prefill = getattr(local, "prefill", None), None
        if state is None:
            return
        stats = state.stats
        everything = list(range(state.prompt_length))
        for b, sample in enumerate(stats.samples):
            first = state.stage1_origin[b].tolist() if state.stage1_origin is not None else everything
            sample.stage1_positions = first
            sample.output_positions = state.origin[b].tolist() if state.origin is not None else everything
        if isinstance(cache, DynamicCache) and cache.get_seq_length() > 0:
            layers = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]
            stats.kv_cache_length = [int(layer.keys.shape[-2]) for layer in layers]
            stats.kv_cache_bytes = sum(_nbytes(layer.keys) + _nbytes(layer.values) for layer in layers)
            stats.kv_cache_bytes_unpruned = sum(
                (_nbytes(layer.keys) + _nbytes(layer.values)) * state.prompt_length // layer.keys.shape[-2]
                for layer in layers
            )
            if state.pruned:
                setattr(cache, _LAYOUT_ATTRIBUTE, self._layout(state))
        self.last_stats = stats

    @staticmethod
    def _next_position(positions: Tensor, mask: Tensor | None) -> Tensor:
        """M-RoPE position ``[3, B]`` stock generate() gives the first token after the prompt.

        ``positions`` ``[3, B, L]`` of the prompt, ``mask`` ``[B, L]`` or None. 5.x appends the last column
        plus one; 4.57 decodes at ``cache_position + rope_deltas``, which is the largest position of the
        sample's valid tokens plus one on all rows (computed here, not read from the model's
        ``rope_deltas``, which other threads may overwrite).
        """
        if _TRANSFORMERS_MAJOR >= 5:
            return positions[:, :, -1] + 1
        valid = torch.ones(positions.shape[1:], dtype=torch.bool, device=positions.device)
        if mask is not None:
            valid = mask.to(positions.device).bool()
        largest = positions.masked_fill(~valid[None], torch.iinfo(positions.dtype).min).amax(dim=(0, 2))
        return (largest + 1)[None].expand(3, -1)

    def _layout(self, state: _Prefill) -> CacheLayout:
        """The layout of the cache a pruned prefill leaves."""
        next_position = state.next_position
        separate_upper = state.keep is not None and not self.config.enable_cache_compression
        return CacheLayout(
            logical_length=state.prompt_length,
            valid=state.lower_valid,
            next_position=next_position.clone(),
            upper_valid=state.upper_valid if separate_upper else None,
            upper_start=self.pruning_layer + 1 if separate_upper else None,
            token_ids=state.input_ids,
        )

    # ----------------------------------------------------------------- appending to a pruned cache
    def _on_pruned_cache(
        self, layout: CacheLayout, cache: Any, overlapping: bool, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """Tokens appended to a pruned cache (decode steps, follow-up turns): physical mask and positions.

        ``generate()`` sizes everything by the cache's physical length, so on the first call of a
        generate() that continues a pruned cache the input re-feeds the ``logical - physical`` tokens the
        cache already holds: they are dropped here. Positions continue the unpruned conversation.
        """
        if _has_video_data(kwargs):
            raise ValueError(_NEW_VIDEO_IN_CONTINUATION)
        upper_start = self.pruning_layer + 1 if self.config.enable_stage2 else None
        if layout.upper_valid is not None and layout.upper_start != upper_start:
            raise RuntimeError(
                f"this cache keeps other rows in layers >= {layout.upper_start} (Stage 3 was off); "
                "continue it with the pruner configuration that made it"
            )
        changed = dict(kwargs)
        if args:
            changed["input_ids"] = args[0]
        tokens = changed.get("input_ids")
        tokens = tokens if tokens is not None else changed["inputs_embeds"]
        batch, length = tokens.shape[:2]
        physical = layout.valid.shape[1]
        if cache.get_seq_length() != physical:
            raise RuntimeError(
                f"this pruned cache holds {cache.get_seq_length()} rows but PruneVid recorded {physical}: "
                "it was cropped or changed outside PruneVid (assisted decoding and cache.crop() cannot run "
                "on a pruned cache)"
            )
        if batch != layout.valid.shape[0]:
            raise ValueError(f"this pruned cache holds {layout.valid.shape[0]} samples, not {batch}")
        drop = layout.logical_length - physical if overlapping else 0
        if length <= drop:
            raise ValueError(
                f"this pruned cache stands for {layout.logical_length} tokens; pass the whole conversation "
                "(those tokens and the new ones) to generate()"
            )
        held = layout.token_ids
        if drop and held is not None and changed.get("input_ids") is not None:
            fed = changed["input_ids"][:, :drop].cpu()
            if not torch.equal(fed, held[:, physical:]):
                raise ValueError(
                    "the conversation passed to generate() does not start with the tokens this pruned cache "
                    "holds: pass its token ids followed by the new ones (e.g. output.sequences, then the "
                    "follow-up turn), not a re-tokenized conversation"
                )
        if drop:
            for name in ("input_ids", "inputs_embeds", "position_ids", "mm_token_type_ids", "token_type_ids"):
                value = changed.get(name)
                if value is not None:
                    changed[name] = (
                        value[:, drop:] if name in ("input_ids", "inputs_embeds") else value[..., drop:]
                    )
        new = length - drop
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if mask.ndim != 2 or mask.shape[1] != layout.logical_length + new:
                raise RuntimeError(
                    f"the attention mask has shape {tuple(mask.shape)}, but this pruned cache stands for "
                    f"{layout.logical_length} tokens and {new} are new: pass the whole conversation's mask"
                )
            tail = mask[:, layout.logical_length :].to(layout.valid.device).bool()
        else:
            tail = torch.ones(batch, new, dtype=torch.bool, device=layout.valid.device)
        positions = layout.new_positions(tail)
        given = changed.get("position_ids")
        if given is not None and given.ndim == 3 and given.shape[0] == 4:  # 5.x: row 0 holds text positions
            positions = torch.cat([given[:1].to(positions), positions])
        changed["position_ids"] = positions
        lower = torch.cat([layout.valid, tail], dim=1)
        changed["attention_mask"] = None if mask is None and bool(lower.all()) else lower.long()
        if kwargs.get("cache_position") is not None:  # 4.57: positions of the physical rows
            changed["cache_position"] = torch.arange(physical, physical + new, device=tokens.device)
        new_ids = changed.get("input_ids")
        step = _Step(layout, tail, None if new_ids is None else new_ids.cpu(), physical)
        if layout.upper_valid is not None:
            dtype = self.model.model.language_model.embed_tokens.weight.dtype
            upper = torch.cat([layout.upper_valid, tail.to(layout.upper_valid.device)], dim=1)
            step.upper_mask = self._mask_4d(upper, new, dtype)
        self._local.step = step
        return (), changed

    # ----------------------------------------------------------------- before the LLM (Stage 1)
    def _before_llm(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state = getattr(self._local, "prefill", None)
        if state is None:
            return None
        if not any(state.videos):
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and (isinstance(mask, dict) or mask.ndim != 2):
            raise ValueError(
                "PruneVid needs a 2-D attention mask (batch, length) or none, not a prepared 4-D mask"
            )
        self._check_attention()
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise ValueError(
                "PruneVid needs the model's 3-D (M-RoPE) position ids; on transformers 5.x pass the "
                "processor's mm_token_type_ids along with the other processor outputs"
            )
        if position_ids.ndim == 2:  # text positions for every row, as the stock model expands them
            position_ids = position_ids[None].expand(3, -1, -1)
        state.next_position = self._next_position(position_ids[-3:], mask)
        state.origin = torch.arange(length, device=embeds.device).expand(batch, length)
        state.valid = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
        if mask is not None:
            state.valid = mask.to(embeds.device).bool()
        changed = None
        if self.config.enable_stage1:
            changed = self._merge_videos(state, {**kwargs, "position_ids": position_ids})
        self._record_videos(state)
        state.stage1_origin = state.origin
        state.lower_valid = state.upper_valid = state.valid
        if self.config.enable_stage2:
            self._prepare_stage2(state)
        return None if changed is None else (args, changed)

    def _merge_videos(self, state: _Prefill, kwargs: dict) -> dict | None:
        """Stage 1: replace every video by its merged tokens; gather positions, mask and DeepStack inputs.

        A merged token goes to the run of its representative's frame (one run per video, or one per frame
        group), at its representative's position; the text around and between the runs stays.
        """
        embeds: Tensor = kwargs["inputs_embeds"]
        position_ids: Tensor = kwargs["position_ids"]
        device = embeds.device
        batch, length = embeds.shape[:2]
        rows = position_ids.shape[0]
        deepstack = kwargs.get("deepstack_visual_embeds")
        visual_mask = kwargs.get("visual_pos_masks") if deepstack is not None else None
        visual_row = None
        if visual_mask is not None:
            # DeepStack rows follow the visual positions in (batch, position) order.
            visual_row = (visual_mask.flatten().long().cumsum(0) - 1).view(batch, length).to(device)
            visual_row = torch.where(visual_mask.to(device), visual_row, -1)
            merged_rows: list[list[Tensor]] = [[] for _ in deepstack]
            next_row = len(deepstack[0]) if len(deepstack) else 0
        sequences = []
        any_merged = False
        for b, sample in enumerate(state.videos):
            pieces: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []  # embeds, positions, origin, rows
            cursor = 0

            for video in sample:
                tokens = video.tokens.to(device)
                # The positions may sit on another device than the embeddings (accelerate's device maps).
                position_tokens = video.tokens.to(position_ids.device)
                # Reference methods (for comparisons) reduce a video their own way, applied the same way.
                reduce = reduce_video if isinstance(self.config, ReferenceConfig) else merge_video
                result = reduce(
                    embeds[b, tokens], video.grid, position_ids[-3:, b, position_tokens], self.config
                )
                representative = result.representative.to(device)
                frame_index = result.frame_index.to(device)
                merged_pos = result.positions.to(position_ids)
                if rows == 4:  # row 0 holds plain text positions; rebuilt below
                    first_rows = position_ids[:1, b, position_tokens[representative.to(position_ids.device)]]
                    merged_pos = torch.cat([first_rows, merged_pos])
                source_of = result.assignment.to(device)  # -1: a reference method dropped it
                merged_row = None
                if visual_mask is not None:
                    merged_row = next_row + torch.arange(len(representative), device=device)
                    next_row += len(representative)
                    _merge_deepstack(
                        deepstack, visual_row[b, tokens], source_of, len(representative), merged_rows
                    )
                features = result.features.to(embeds.dtype)
                for (start, end), (first, stop) in zip(video.spans, video.span_frames(), strict=True):
                    pieces.append(_text_piece(embeds, position_ids, visual_row, b, cursor, start))
                    inside = slice(
                        int(torch.searchsorted(frame_index, first)),
                        int(torch.searchsorted(frame_index, stop)),
                    )
                    pieces.append(
                        (
                            features[inside],
                            merged_pos[:, inside],
                            tokens[representative[inside]],
                            None if merged_row is None else merged_row[inside],
                        )
                    )
                    cursor = end
                video.groups = budget_groups(result.frame_index, result.segment_id, result.is_static)
                video.merged_into = torch.where(
                    source_of >= 0, tokens[representative[source_of.clamp(min=0)]], -1
                )
                any_merged |= len(representative) != len(tokens)
            pieces.append(_text_piece(embeds, position_ids, visual_row, b, cursor, length))
            sequences.append(pieces)
        if not any_merged:
            return None  # nothing merged: the sequence is the prompt itself; leave the inputs untouched

        joined = []
        for pieces in sequences:
            seq_embeds, seq_pos, seq_origin, seq_rows = zip(*pieces, strict=True)
            rows_of = torch.cat(seq_rows) if visual_mask is not None else None
            joined.append((torch.cat(seq_embeds), torch.cat(seq_pos, dim=1), torch.cat(seq_origin), rows_of))
        new_length = max(len(origin) for _, _, origin, _ in joined)
        origin = torch.full((batch, new_length), -1, dtype=torch.long, device=device)
        new_rows = torch.full((batch, new_length), -1, dtype=torch.long, device=device)
        embeds_rows, position_rows = [], []
        for b, (seq_embeds, seq_pos, seq_origin, seq_rows) in enumerate(joined):
            pad = new_length - len(seq_origin)  # left padding keeps every sample's last token last
            # Out of place (pad, then stack): autograd records the merge, and no input is written to.
            embeds_rows.append(torch.nn.functional.pad(seq_embeds, (0, 0, pad, 0)))
            position_rows.append(torch.nn.functional.pad(seq_pos, (pad, 0)))
            origin[b, pad:] = seq_origin
            if visual_mask is not None:
                new_rows[b, pad:] = seq_rows
        valid = (origin >= 0) & state.valid.gather(1, origin.clamp(min=0))
        state.origin, state.valid, state.pruned = origin, valid, True

        changed = dict(kwargs)
        changed["inputs_embeds"] = torch.stack(embeds_rows)
        new_pos = torch.stack(position_rows, dim=1)
        if rows == 4:
            new_pos[0] = (valid.long().cumsum(-1) - 1).clamp(min=0).to(new_pos.device)
        changed["position_ids"] = new_pos
        mask = kwargs.get("attention_mask")
        changed["attention_mask"] = None if mask is None and bool(valid.all()) else valid.to(torch.long)
        if kwargs.get("cache_position") is not None:  # 4.57: positions of the physical rows
            changed["cache_position"] = torch.arange(new_length, device=device)
        if visual_mask is not None:
            is_visual = new_rows >= 0
            changed["visual_pos_masks"] = is_visual
            changed["deepstack_visual_embeds"] = [
                torch.cat([level, *extra])[new_rows[is_visual]]
                for level, extra in zip(deepstack, merged_rows, strict=True)
            ]
        return changed

    def _record_videos(self, state: _Prefill) -> None:
        """After Stage 1 (or without it): each video's slots, budget groups and statistics."""
        for b, sample in enumerate(state.videos):
            origin = state.origin[b]
            owner = torch.full((state.prompt_length + 1,), -1, dtype=torch.long, device=origin.device)
            for v, video in enumerate(sample):
                owner[video.tokens.to(origin.device)] = v
            slot_owner = owner[origin]  # padding slots (origin -1) read the spare last entry
            for v, video in enumerate(sample):
                video.slots = torch.nonzero(slot_owner == v).flatten()
                if video.groups is None:
                    t, h, w = video.grid
                    video.groups = budget_groups(torch.arange(t * h * w, device=origin.device) // (h * w))
                stats = state.stats.samples[b].videos[v]
                stats.tokens_after_stage1 = stats.tokens_after_stage2 = len(video.slots)
                stats.kept_indices = origin[video.slots].tolist()
                if video.merged_into is not None:
                    stats.merged_into = video.merged_into.tolist()

    # ----------------------------------------------------------------- Stage 2 and 3 (layer M)
    def _prepare_stage2(self, state: _Prefill) -> None:
        """Before layer M runs: the question rows of each sample (valid slots only)."""
        state.question = []
        for b, sample in enumerate(state.videos):
            stats = state.stats.samples[b]
            if not sample:
                stats.stage2_skipped = "no video in this sample"
                state.question.append(torch.zeros(0, dtype=torch.long))
                continue
            rows, source = _question_rows(
                state.input_ids[b],
                sample,
                self._vision_start_id,
                self._video_token_id,
                self._image_token_id,
                self.family.frame_groups,
            )
            origin = state.origin[b]
            is_row = torch.zeros(state.prompt_length + 1, dtype=torch.bool, device=origin.device)
            is_row[rows.to(origin.device)] = True
            slots = torch.nonzero(
                is_row[origin] & state.valid[b]
            ).flatten()  # origin -1 reads the spare entry
            state.question.append(slots)
            stats.question_rows = origin[slots].tolist()
            if len(slots) == 0:
                stats.stage2_skipped = "no question text in the turn of the video"
            else:
                stats.question_source = source

    def _keep_queries(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        state = getattr(self._local, "prefill", None)
        if state is not None and state.question:
            output = output.flatten(2)  # [B, L, H, d] from q_norm (Qwen3-VL) -> [B, L, H*d]
            state.query = [
                output[b, slots.to(output.device)].detach() for b, slots in enumerate(state.question)
            ]

    def _keep_keys(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        state = getattr(self._local, "prefill", None)
        if state is not None and state.question:
            state.key = output.flatten(2).detach()

    def _select(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """After layer M: score, select, gather the hidden states, cut the caches of layers 0..M."""
        state = getattr(self._local, "prefill", None)
        if state is None or not state.question or state.key is None:
            return None
        with torch.no_grad():
            keep_lists = self._stage2_keep(state)
        state.query, state.key = [], None
        if keep_lists is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        device = hidden.device
        keep_length = max(len(k) for k in keep_lists)
        keep = torch.zeros(len(keep_lists), keep_length, dtype=torch.long)
        keep_valid = torch.zeros(len(keep_lists), keep_length, dtype=torch.bool)
        for b, kept in enumerate(keep_lists):
            keep[b, keep_length - len(kept) :] = kept
            keep_valid[b, keep_length - len(kept) :] = True
        keep, keep_valid = keep.to(device), keep_valid.to(device)

        gathered = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
        gathered = torch.where(keep_valid[..., None], gathered, torch.zeros_like(gathered))
        state.origin = torch.where(keep_valid, state.origin.to(device).gather(1, keep), -1)
        state.valid = keep_valid & state.valid.to(device).gather(1, keep)
        state.keep, state.pruned = keep, True
        state.upper_valid = state.valid
        cache = _cache_from(kwargs)
        if self.config.enable_cache_compression and cache is not None:
            for layer in cache.layers[: self.pruning_layer + 1]:
                layer.keys, layer.values = compress_kv(layer.keys, layer.values, keep)
            state.lower_valid = state.valid
        state.upper_mask = self._mask_4d(state.valid, query_length=keep_length, dtype=hidden.dtype)
        if isinstance(output, tuple):
            return (gathered, *output[1:])
        return gathered

    def _stage2_keep(self, state: _Prefill) -> list[Tensor] | None:
        """Per sample, the slots kept after Stage 2 (increasing); None when every video token is kept."""
        attention = self._layers[self.pruning_layer].self_attn
        head_dim = attention.head_dim
        key = state.key
        keep_lists, removed = [], False
        fastv = isinstance(self.config, ReferenceConfig)  # the in-LLM reference method: one budget a video
        for b, sample in enumerate(state.videos):
            valid = state.valid[b].to(key.device)
            stats = state.stats.samples[b]
            slots = torch.nonzero(valid).flatten()
            if stats.stage2_skipped is not None:
                keep_lists.append(slots.cpu())
                continue
            q = state.query[b].view(-1, attention.config.num_attention_heads, head_dim)
            if fastv:
                q = q[-1:]  # FastV ranks by the last prompt token's attention only
            k = key[b, slots].view(len(slots), -1, head_dim)
            scores = torch.full((valid.shape[0],), float("-inf"), device=key.device)
            scores[slots] = question_attention_scores(
                q.transpose(0, 1), k.transpose(0, 1), self.config.attention_aggregation
            )
            is_video = torch.zeros_like(valid)
            video_slots, groups, offset = [], [], 0
            for video in sample:
                video_slots.append(video.slots.to(key.device))
                group = torch.zeros_like(video.groups) if fastv else video.groups
                groups.append(group.to(key.device) + offset)
                offset += int(group.max()) + 1
                is_video[video.slots.to(key.device)] = True
            video_slots = torch.cat(video_slots)
            if self.config.stage2_coverage > 0 and not fastv:  # opt-in: cover distinct tokens first
                chosen = select_tokens_covering(
                    scores[video_slots],
                    torch.cat(groups),
                    self.config.keep_ratio,
                    key[b, video_slots],
                    self.config.stage2_coverage,
                )
            else:
                chosen = select_tokens(scores[video_slots], torch.cat(groups), self.config.keep_ratio)
            kept_video = video_slots[chosen]
            removed |= len(kept_video) < len(video_slots)
            kept = torch.sort(torch.cat([torch.nonzero(valid & ~is_video).flatten(), kept_video])).values
            keep_lists.append(kept.cpu())
            origin = state.origin[b]
            for v, video in enumerate(sample):
                mine = kept_video[torch.isin(kept_video, video.slots.to(kept_video.device))]
                video_stats = stats.videos[v]
                video_stats.tokens_after_stage2 = len(mine)
                video_stats.kept_indices = origin[mine.to(origin.device)].tolist()
        return keep_lists if removed else None

    def _before_upper_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Layers after M run on the kept tokens: give them gathered positions and masks."""
        step = getattr(self._local, "step", None)
        if step is not None:
            if step.layout.upper_valid is None:
                return None  # every layer has the same cache; the physical 2-D mask fits all of them
            return args, {**kwargs, "attention_mask": step.upper_mask}
        state = getattr(self._local, "prefill", None)
        if state is None or state.keep is None:
            return None
        keep = state.keep
        changed = dict(kwargs)
        changed["attention_mask"] = state.upper_mask
        cos, sin = kwargs["position_embeddings"]
        cached = state.upper_position.get(id(cos))
        if cached is None:
            index = keep.to(cos.device)
            cached = tuple(_gather_sequence(table, index) for table in (cos, sin))
            state.upper_position = {id(cos): cached}
        changed["position_embeddings"] = cached
        length = keep.shape[1]
        if kwargs.get("position_ids") is not None:  # plain text positions, used for packing detection only
            changed["position_ids"] = torch.arange(length, device=keep.device).expand(keep.shape[0], length)
        if kwargs.get("cache_position") is not None:
            changed["cache_position"] = torch.arange(length, device=keep.device)
        return args, changed

    # ----------------------------------------------------------------- helpers
    def _mask_4d(self, key_valid: Tensor, query_length: int, dtype: torch.dtype) -> Tensor | None:
        """The mask the attention implementation expects, for queries at the last ``query_length`` rows.

        ``key_valid`` ``[B, S]`` bool. Query ``i`` (row ``S - query_length + i``) sees every valid key up to
        its own row; an invalid query row still sees itself so its (unused) output stays finite. sdpa
        takes a bool mask (or None for plain causal when every key is valid and the queries are all rows
        or one row), eager an additive float mask; the result is ``[B, 1, query_length, S]``.
        """
        implementation = self._attention_implementation()
        batch, length = key_valid.shape
        if implementation == "sdpa" and query_length in (1, length) and bool(key_valid.all()):
            return None
        rows = torch.arange(length - query_length, length, device=key_valid.device)
        keys = torch.arange(length, device=key_valid.device)
        allowed = (keys[None, :] <= rows[:, None])[None] & key_valid[:, None, :]
        allowed |= (keys[None, :] == rows[:, None])[None]
        allowed = allowed[:, None]
        if implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def _attention_implementation(self) -> str:
        return self.model.model.language_model.config._attn_implementation

    def _check_attention(self) -> None:
        implementation = self._attention_implementation()
        if implementation not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"PruneVid supports attn_implementation in {SUPPORTED_ATTENTION} for the LLM, "
                f"not {implementation!r}"
            )


class _GenerateGuard:
    """An instance-level ``generate`` on the pruned model (class and other models untouched).

    It refuses ``use_cache=False`` (every step would re-run the prompt, and Stage 2 would select again with
    the generated tokens counted as question rows), and tells the pruner when a call continues a pruned
    cache, whose first forward re-feeds the tokens the cache already holds. :meth:`remove` restores it.
    """

    def __init__(self, model: nn.Module, pruner: Pruner) -> None:
        self._model = model
        self._previous = vars(model).get("generate")  # someone else's instance-level generate, kept
        self._pruner = pruner
        self._generate = functools.partial(_guarded_generate, model, self)
        model.generate = self._generate

    def call_original(self, *args: Any, **kwargs: Any) -> Any:
        if self._previous is not None:
            return self._previous(*args, **kwargs)
        return type(self._model).generate(self._model, *args, **kwargs)

    def remove(self) -> None:
        if vars(self._model).get("generate") is self._generate:
            if self._previous is not None:
                self._model.generate = self._previous
            else:
                del self._model.generate


def _guarded_generate(model: nn.Module, guard: _GenerateGuard, *args: Any, **kwargs: Any) -> Any:
    """``model.generate`` with a PruneVid pruner attached (see :class:`_GenerateGuard`)."""
    pruner = guard._pruner
    if not pruner.attached:
        return guard.call_original(*args, **kwargs)
    use_cache = kwargs.get("use_cache", getattr(kwargs.get("generation_config"), "use_cache", None))
    if use_cache is None:
        use_cache = getattr(model.generation_config, "use_cache", True)
    if use_cache is False:
        raise ValueError(
            "PruneVid needs the KV cache: generate(use_cache=False) re-runs the whole prompt at every step, "
            "so the pruning would be decided again with the generated tokens counted as question; call "
            "generate() with use_cache=True (the default)"
        )
    if pruner.config.fast_decode:  # decode on static buffers, the step in a CUDA graph (prunevid.fast_decode)
        from prunevid import fast_decode

        kwargs = fast_decode.generate_kwargs(kwargs)
    layout = cache_layout(_cache_from(kwargs))
    if layout is not None and _has_video_data(kwargs):  # 4.57's generate() would drop them silently
        raise ValueError(_NEW_VIDEO_IN_CONTINUATION)
    pruner._local.continuation = layout
    try:
        return guard.call_original(*args, **kwargs)
    finally:
        pruner._local.continuation = None


def attach(model: nn.Module, config: PruneVidConfig | None = None) -> Pruner:
    """Attach PruneVid to a stock Qwen VL model loaded with ``from_pretrained`` (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL and Qwen3-VL-MoE; :data:`~prunevid.models.registry.SUPPORTED_MODEL_TYPES`).

    ``model.generate(**processor_outputs)`` then prunes every prompt's video tokens as ``config`` says
    (default: the ``paper`` preset). Returns the :class:`Pruner` handle; ``detach()`` undoes everything.
    Raises ``TypeError`` for other model classes and ``ValueError`` for a ``pruning_layer`` outside the
    model (or inside Qwen3-VL's DeepStack layers) or an unsupported attention implementation.
    """
    return Pruner(model, PruneVidConfig.preset("paper") if config is None else config)


def pruner_of(model: nn.Module) -> Pruner | None:
    """The pruner attached to ``model``, or None."""
    ref = _ATTACHED.get(model)
    return None if ref is None else ref()


def _has_video_data(kwargs: dict) -> bool:
    """Whether a forward carries video pixels or encoded video features (not only ids or grids)."""
    encoded = kwargs.get("mm_encoder_outputs")
    return kwargs.get("pixel_values_videos") is not None or (
        isinstance(encoded, dict) and encoded.get("video") is not None
    )


def _video_spans(input_ids: Tensor, video_token_id: int) -> list[tuple[int, int, int]]:
    """``(sample, start, end)`` of every run of video tokens, in order."""
    is_video = (input_ids == video_token_id).cpu()
    padded = torch.nn.functional.pad(is_video.int(), (1, 1))
    change = padded[:, 1:] - padded[:, :-1]
    spans = []
    for b in range(is_video.shape[0]):
        starts = torch.nonzero(change[b] == 1).flatten().tolist()
        ends = torch.nonzero(change[b] == -1).flatten().tolist()
        spans += [(b, start, end) for start, end in zip(starts, ends, strict=True)]
    return spans


def _count_stats(input_ids: Tensor, video_token_id: int) -> PruneStats:
    """Statistics of a prompt nothing was done to, one entry per run of video tokens (no grids read)."""
    runs: list[list[list[int]]] = [[] for _ in range(input_ids.shape[0])]
    for b, start, end in _video_spans(input_ids, video_token_id):
        runs[b].append(list(range(start, end)))
    return _unpruned_stats(input_ids.shape[1], runs)


def _unpruned_stats(length: int, videos: list[list[list[int]]]) -> PruneStats:
    """Statistics before any stage ran: ``videos[b]`` lists the prompt positions of each video of sample b,
    every token kept."""
    return PruneStats(
        samples=[
            SampleStats(
                prompt_length=length,
                videos=[VideoStats(len(t), len(t), len(t), list(t), list(t)) for t in sample],
            )
            for sample in videos
        ]
    )


def _question_rows(
    input_ids: Tensor,
    videos: list[_Video],
    vision_start_id: int,
    video_id: int,
    image_id: int,
    timestamps: bool,
) -> tuple[Tensor, str]:
    """Prompt positions of one sample's question rows and where they come from.

    ``input_ids`` ``[L]`` (CPU). With the chat template, the rows are the text of the user turn that holds
    the videos (after its role header, before and between the videos) and everything after the last video,
    as the paper scores it; vision markers, image tokens and a video's own timestamp texts excluded.
    Without a chat turn around the videos (a raw prompt), only the tokens after the last video. Padding
    is removed by the caller.

    ``timestamps``: each frame group follows its timestamp text (Qwen3-VL). Between a video's groups that
    text is skipped with the video; before its first group, it ends at the last vision marker (the
    template's ``<|vision_start|>`` on 5.x). 4.57 writes no such marker, so there the first timestamp
    counts as question text.
    """
    ids = input_ids.tolist()
    first, last = videos[0].start, videos[-1].end
    after = torch.arange(last, len(ids))
    im_start, im_end = vision_start_id + _IM_START_OFFSET, vision_start_id + _IM_END_OFFSET
    turn = next((i for i in range(first - 1, -1, -1) if ids[i] == im_start), None)
    ends = [i for i in range(len(ids) - 1) if ids[i] == im_end]
    if turn is None or not ends:
        return after, "after the last video"
    newline = ids[ends[0] + 1]  # the template writes "<|im_end|>\n" after every turn
    header_end = next((i for i in range(turn + 1, first) if ids[i] == newline), None)
    if header_end is None:
        return after, "after the last video"
    markers = {vision_start_id, vision_start_id + 1}
    not_text = markers | {video_id, image_id}
    inside: list[int] = []
    boundary = header_end + 1
    for video in videos:
        region = range(boundary, video.start - 1 if timestamps else video.start)
        if timestamps:  # the first group's timestamp: after the last marker before the video
            cut = [i for i in region if ids[i] in markers]
            region = range(region.start, cut[-1]) if cut else region
        inside += [i for i in region if ids[i] not in not_text]
        boundary = video.end
    return torch.cat([torch.tensor(inside, dtype=torch.long), after]), "user turn"


def _text_piece(
    embeds: Tensor, position_ids: Tensor, visual_row: Tensor | None, b: int, start: int, end: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Prompt rows ``start..end`` of sample ``b`` kept as they are: embeddings, positions, origin, DeepStack
    rows (-1 for non-visual tokens; None without DeepStack)."""
    here = slice(start, end)
    origin = torch.arange(start, end, device=embeds.device)
    rows = None if visual_row is None else visual_row[b, here]
    return embeds[b, here], position_ids[:, b, here], origin, rows


def _encoded_video_lengths(encoded: Any) -> list[int]:
    """Tokens per video that 5.24's generate() encoded before the forward (``mm_encoder_outputs``)."""
    output = encoded.get("video") if isinstance(encoded, dict) else None
    per_video = getattr(output, "pooler_output", None)
    if not isinstance(per_video, (list, tuple)):
        raise ValueError(
            "PruneVid needs video_grid_thw to find the frame groups of each video; pass the processor's "
            "outputs unchanged"
        )
    return [len(tokens) for tokens in per_video]


def _merge_deepstack(
    levels: list[Tensor], source_rows: Tensor, assignment: Tensor, n_out: int, merged: list[list[Tensor]]
) -> None:
    """Stage 1 for the DeepStack features of one video: each merged token is the mean of the same sources.

    ``levels`` K tensors ``[N_visual, D]``; ``source_rows`` ``[n]`` the row of each of the video's tokens;
    ``assignment`` ``[n]`` its merged token (-1: dropped); appends ``[n_out, D]`` to ``merged[k]``. The sum is
    a 0/1 matrix product (deterministic, unlike a scatter-add with atomics), in float32.
    """
    members = (assignment[None, :] == torch.arange(n_out, device=assignment.device)[:, None]).float()
    count = members.sum(1, keepdim=True).clamp(min=1)
    for k, level in enumerate(levels):
        sources = level[source_rows.to(level.device)].float()
        merged[k].append(((members.to(level.device) @ sources) / count.to(level.device)).to(level.dtype))


def _check_model_supports_pruning(model: nn.Module) -> None:
    text_config = model.model.language_model.config
    if getattr(text_config, "use_sliding_window", False):
        raise ValueError("PruneVid does not support models with sliding-window attention layers")
    implementation = text_config._attn_implementation
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"PruneVid supports attn_implementation in {SUPPORTED_ATTENTION} for the LLM, "
            f"not {implementation!r}; "
            "load the model with attn_implementation='sdpa'"
        )


def _check_cache(cache: Any) -> None:
    """Refuse caches whose rows are position-indexed (static, compiled, quantized): they cannot be cut."""
    if cache is None:
        return
    if not isinstance(cache, DynamicCache) or getattr(cache, "is_compileable", False):
        raise ValueError(
            f"PruneVid needs a DynamicCache (the default), got {type(cache).__name__}: static and compiled "
            "caches index rows by position and cannot hold a pruned prompt"
        )
    for layer in getattr(cache, "layers", []):
        if type(layer) is not DynamicLayer:
            raise ValueError(f"PruneVid needs plain dynamic cache layers, got {type(layer).__name__}")


def _grid_from_positions(rows_hw: Tensor) -> tuple[int, int, int]:
    """``(T', h', w')`` of one video span from its height and width position rows ``[2, n]``."""
    height = int(rows_hw[0].max() - rows_hw[0].min()) + 1
    width = int(rows_hw[1].max() - rows_hw[1].min()) + 1
    return rows_hw.shape[1] // (height * width), height, width


def _cache_from(kwargs: dict) -> Any:
    for name in _CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _gather_sequence(table: Tensor, index: Tensor) -> Tensor:
    """Gather rotary rows: ``table [..., B, S, D]`` (3 leading M-RoPE rows on 4.57), ``index [B, K]``."""
    expanded = index[..., None].expand(*table.shape[:-3], -1, -1, table.shape[-1])
    return table.gather(-2, expanded)


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()
