"""Attach PruneVid to a stock transformers Qwen2.5-VL through hooks: the only module that knows its internals.

Nothing here copies or replaces transformers code. The stages are pure functions (``stage1_merge``,
``stage2_select``, ``stage3_cache``); this adapter decides where their inputs come from and applies
their results to a stock ``Qwen2_5_VLForConditionalGeneration``:

- a pre-hook on ``model.model`` sees ``input_ids`` and finds each video's span (bookkeeping only);
- a pre-hook on ``model.model.language_model`` (after the video features are scattered in) replaces every
  video span by its Stage-1 merged tokens and gathers positions and mask (Stage 1), and on decode
  steps remaps the 2-D attention mask onto the pruned cache;
- hooks on decoder layer ``M`` take its pre-rotary queries and keys, score and select (Stage 2),
  gather the hidden states and cut the caches of layers ``0..M`` (Stage 3); pre-hooks on layers
  ``> M`` give them the gathered positions and masks;
- a hook after the language model records :class:`~prunevid.stats.PruneStats`;
- with ``fast_vision`` and SDPA vision attention, each vision block's ``attn`` gets an instance-level
  ``forward`` that batches equal-length windows (:mod:`prunevid.fast_vision`) instead of the stock
  per-window loop; its class, other models and transformers' attention registry are untouched.

A disabled stage registers no hook, so its code never runs; ``detach`` removes every hook and every
instance ``forward`` it set.

Version facts this module relies on (verified on transformers 4.57, 5.17 and 5.24, see the integration
spec): the cache is passed as ``past_key_values`` (4.x, 5.17) or ``cache`` (5.24); decoder layers return a
tensor (5.x) or a tuple (4.57); rotary ``(cos, sin)`` have the sequence on dim -2 in all versions;
4.57 passes a logical ``cache_position``; generate keeps the unpruned positions for decoding. The vision
blocks call ``attn(hidden_states, cu_seqlens=..., position_embeddings=..., **kwargs)`` by keyword in all
three (plus ``rotary_pos_emb=None`` on 4.57, ``max_seqlen`` on 5.x, both unused by SDPA), and pass one
``cu_seqlens`` tensor object to every windowed block and another to every full-attention block.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

from prunevid.config import PruneVidConfig
from prunevid.fast_vision import WindowPlan, plan_windows, window_attention
from prunevid.reference_methods import ReferenceConfig, reduce_video
from prunevid.stage1_merge import merge_video
from prunevid.stage2_select import budget_groups, question_attention_scores, select_tokens
from prunevid.stage3_cache import compress_kv
from prunevid.stats import PruneStats, SampleStats, VideoStats

SUPPORTED_MODELS: tuple[type[nn.Module], ...] = (Qwen2_5_VLForConditionalGeneration,)
SUPPORTED_ATTENTION = ("sdpa", "eager")
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
_CACHE_KWARGS = ("cache", "past_key_values")
# fast_vision batches windows of at most this many rows: every window of the windowed blocks (8x8 patches).
# The full-attention blocks' frame pairs keep one SDPA call each, as stock: batching them changes flash
# attention's split-KV choice for short frame pairs (measured on an H200: max |diff| 0.3 at 336x336), while
# 64 rows fit one key block of every flash kernel. Costs about 1 ms per tower call. None batches all.
FAST_VISION_MAX_BATCHED_LENGTH: int | None = 64
# The pruner attached to each model, so a model never carries two sets of hooks.
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Video:
    """One video span of one sample and what the stages made of it."""

    start: int  # first token in the original prompt
    end: int
    grid: tuple[int, int, int]  # LLM token grid (T', h', w')
    slot_start: int = 0  # its first slot in the current (possibly merged) sequence
    slot_end: int = 0
    groups: Tensor | None = None  # [n'] Stage-2 budget group per slot
    tokens_after_stage1: int = 0
    merged_into: Tensor | None = None  # [n] Stage 1: prompt index of each source token's representative


@dataclass
class _Prefill:
    """Per-prefill state, reset at the start of every prefill and kept for its decode steps."""

    prompt_length: int
    videos: list[list[_Video]]  # per sample
    stats: PruneStats
    origin: Tensor | None = None  # [B, S] original prompt index of every slot; -1 for padding slots we add
    valid: Tensor | None = None  # [B, S] bool: the slot may be attended to
    stage2_rows: list[int] = field(default_factory=list)  # per sample: first slot after its last video
    query: Tensor | None = None  # [B, R, H*d] layer-M queries of the last R slots (pre-rotary)
    key: Tensor | None = None  # [B, S, H_kv*d] layer-M keys (pre-rotary)
    keep: Tensor | None = None  # [B, K] slots kept by Stage 2 (padded); None when nothing was removed
    upper_mask: Tensor | None = None  # 4-D mask for layers > M during prefill
    upper_position: dict = field(default_factory=dict)  # gathered rotary tables, by id of the original
    cache: Any = None
    decoding: bool = False
    pruned: bool = False  # the physical sequence differs from the prompt
    lower_valid: Tensor | None = None  # [B, P] validity of the cache rows of layers 0..M after prefill
    upper_valid: Tensor | None = None  # [B, K] validity of the cache rows of layers > M
    decode_upper_mask: Tensor | None = None


class Pruner:
    """PruneVid attached to one stock Qwen2.5-VL model; build it with :func:`attach`.

    Holds every hook it registered (:meth:`detach` removes them all and leaves the model exactly as it
    was; it is also a context manager) and the statistics of the last prefill in :attr:`last_stats`.
    """

    def __init__(self, model: nn.Module, config: PruneVidConfig) -> None:
        if not isinstance(model, SUPPORTED_MODELS):
            names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS)
            raise TypeError(f"PruneVid supports {names}; got {type(model).__name__}")
        if not isinstance(config, PruneVidConfig):
            raise TypeError(f"config must be a PruneVidConfig, got {type(config).__name__}")
        if pruner_of(model) is not None:
            raise RuntimeError("a PruneVid pruner is already attached to this model; detach() it first")
        self.model = model
        self.config = config
        self.last_stats: PruneStats | None = None
        language_model = model.model.language_model
        self._layers = language_model.layers
        self.pruning_layer = config.resolve_pruning_layer(len(self._layers)) if config.enable_stage2 else None
        self._video_token_id = model.config.video_token_id
        self._merge = model.config.vision_config.spatial_merge_size
        self._state: _Prefill | None = None
        self._pruned_caches: weakref.WeakSet = weakref.WeakSet()
        if config.enabled:
            _check_model_supports_pruning(model)

        hooks = [
            model.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True),
            language_model.register_forward_hook(self._after_llm, with_kwargs=True),
        ]
        if config.enabled:
            hooks.append(language_model.register_forward_pre_hook(self._before_llm, with_kwargs=True))
        if config.enable_stage2:
            layer = self._layers[self.pruning_layer]
            hooks += [
                layer.self_attn.q_proj.register_forward_hook(self._keep_queries),
                layer.self_attn.k_proj.register_forward_hook(self._keep_keys),
                layer.register_forward_hook(self._select, with_kwargs=True),
            ]
            hooks += [
                upper.register_forward_pre_hook(self._before_upper_layer, with_kwargs=True)
                for upper in self._layers[self.pruning_layer + 1 :]
            ]
        self._hooks = hooks
        self._fast_vision = _FastVision(model.model.visual) if config.fast_vision else None
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
        self._state = None
        if pruner_of(self.model) is self:
            del _ATTACHED[self.model]

    @property
    def attached(self) -> bool:
        """Whether the hooks are still in place."""
        return bool(self._hooks)

    @property
    def fast_vision_active(self) -> bool:
        """Whether the vision attention runs the batched window path (``fast_vision`` on, SDPA vision)."""
        return self._fast_vision is not None and bool(self._fast_vision.modules)

    def __enter__(self) -> Pruner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return f"Pruner(attached={self.attached}, pruning_layer={self.pruning_layer}, config={self.config})"

    # ----------------------------------------------------------------- bookkeeping
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Start of a forward of ``model.model``: decide prefill or decode, find the video spans."""
        cache = _cache_from(kwargs)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        query_length = (input_ids if input_ids is not None else embeds).shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if self.config.enabled and torch.compiler.is_compiling():
            raise RuntimeError(
                "PruneVid cannot run inside torch.compile: the pruned length is data dependent"
            )
        if cache is not None and cache in self._pruned_caches:
            state = self._state
            if state is None or state.cache is not cache or past == 0 or query_length != 1:
                raise RuntimeError(
                    "this KV cache was pruned by PruneVid for one prompt and can only continue that prompt "
                    "one token at a time; start a new generate() call without passing the old cache"
                )
            return  # a decode step: its cache passed the type check at its prefill
        if self.config.enabled:
            _check_cache(cache)
        if past > 0:
            # A cache we did not prune: continuing someone else's prefix. Nothing to prune in it.
            if (
                self.config.enabled
                and input_ids is not None
                and bool((input_ids == self._video_token_id).any())
            ):
                raise RuntimeError("PruneVid prunes videos only in a prefill that starts from an empty cache")
            self._state = None
            return
        if input_ids is None:
            if self.config.enabled:
                raise ValueError(
                    "PruneVid needs input_ids (it finds the video tokens there), got inputs_embeds only"
                )
            self._state = None
            return
        self._state = self._new_prefill(input_ids, kwargs.get("video_grid_thw"), kwargs.get("position_ids"))

    def _new_prefill(
        self, input_ids: Tensor, video_grid_thw: Tensor | None, position_ids: Tensor | None
    ) -> _Prefill:
        """Find every video span of every sample and its LLM token grid."""
        is_video = (input_ids == self._video_token_id).cpu()
        batch, length = is_video.shape
        padded = torch.nn.functional.pad(is_video.int(), (1, 1))
        change = padded[:, 1:] - padded[:, :-1]
        starts = [torch.nonzero(change[b] == 1).flatten().tolist() for b in range(batch)]
        ends = [torch.nonzero(change[b] == -1).flatten().tolist() for b in range(batch)]
        spans = [(b, start, end) for b in range(batch) for start, end in zip(starts[b], ends[b], strict=True)]
        if video_grid_thw is not None:
            grids = [(t, h // self._merge, w // self._merge) for t, h, w in video_grid_thw.tolist()]
        elif spans and position_ids is not None:
            # 5.24's generate() encodes the videos first and drops video_grid_thw; the M-RoPE rows
            # (height, width) of each span still give its grid.
            grids = [_grid_from_positions(position_ids[-2:, b, start:end]) for b, start, end in spans]
        elif spans:
            raise ValueError(
                "PruneVid needs video_grid_thw (or the model's position ids) to read the video grids"
            )
        else:
            grids = []
        if len(grids) != len(spans):
            raise ValueError(
                f"the prompt has {len(spans)} video spans but video_grid_thw describes {len(grids)} videos; "
                "pass the processor's outputs unchanged"
            )
        videos: list[list[_Video]] = [[] for _ in range(batch)]
        for (b, start, end), grid in zip(spans, grids, strict=True):
            if grid[0] * grid[1] * grid[2] != end - start:
                raise ValueError(
                    f"sample {b}: a video span of {end - start} tokens does not match its grid {grid}"
                )
            videos[b].append(_Video(start, end, grid, start, end, tokens_after_stage1=end - start))
        stats = PruneStats(
            samples=[
                SampleStats(
                    prompt_length=length,
                    videos=[
                        VideoStats(
                            v.end - v.start,
                            v.end - v.start,
                            v.end - v.start,
                            list(range(v.start, v.end)),
                            list(range(v.start, v.end)),
                        )
                        for v in sample
                    ],
                )
                for sample in videos
            ],
            pruning_layer=self.pruning_layer,
        )
        return _Prefill(prompt_length=length, videos=videos, stats=stats)

    def _after_llm(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """End of a language-model forward: after a prefill, record the statistics."""
        state = self._state
        if state is None or state.decoding:
            return
        cache = (
            _cache_from(kwargs) or getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        )
        state.cache = cache
        stats = state.stats
        if isinstance(cache, DynamicCache) and cache.get_seq_length() > 0:
            layers = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]
            stats.kv_cache_length = [int(layer.keys.shape[-2]) for layer in layers]
            stats.kv_cache_bytes = sum(_nbytes(layer.keys) + _nbytes(layer.values) for layer in layers)
            stats.kv_cache_bytes_unpruned = sum(
                (_nbytes(layer.keys) + _nbytes(layer.values)) * state.prompt_length // layer.keys.shape[-2]
                for layer in layers
            )
            if state.pruned:
                self._pruned_caches.add(cache)
                if _TRANSFORMERS_MAJOR >= 5:
                    # 5.x decodes a manual loop at cache length + rope_deltas; generate() passes explicit
                    # positions. Keep both at the positions the unpruned prompt gives (4.57 counts logically).
                    deltas = self.model.model.rope_deltas
                    if deltas is not None:
                        self.model.model.rope_deltas = deltas + (
                            state.prompt_length - stats.kv_cache_length[0]
                        )
        if state.lower_valid is None:
            state.lower_valid = state.valid
        state.decoding = True
        self.last_stats = stats

    # ----------------------------------------------------------------- before the LLM (Stage 1, decode masks)
    def _before_llm(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state = self._state
        if state is None:
            return None
        if state.decoding:
            return self._remap_decode_mask(state, args, kwargs) if state.pruned else None
        mask = kwargs.get("attention_mask")
        if mask is not None and (isinstance(mask, dict) or mask.ndim != 2):
            raise ValueError(
                "PruneVid needs a 2-D attention mask (batch, length) or none, not a prepared 4-D mask"
            )
        if not any(state.videos):
            for sample in state.stats.samples:
                sample.stage2_skipped = "no video in this sample" if self.config.enable_stage2 else None
            return None
        self._check_attention()
        embeds = kwargs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        state.origin = torch.arange(length, device=embeds.device).expand(batch, length)
        state.valid = torch.ones(batch, length, dtype=torch.bool, device=embeds.device)
        if mask is not None:
            state.valid = mask.to(embeds.device).bool()
        changed = self._merge_videos(state, kwargs) if self.config.enable_stage1 else None
        self._record_videos(state)
        if self.config.enable_stage2:
            self._prepare_stage2(state)
        return None if changed is None else (args, changed)

    def _merge_videos(self, state: _Prefill, kwargs: dict) -> dict | None:
        """Stage 1: replace every video span by its merged tokens; gather positions and mask."""
        embeds: Tensor = kwargs["inputs_embeds"]
        position_ids: Tensor | None = kwargs.get("position_ids")
        if position_ids is None or position_ids.ndim != 3:
            raise ValueError(
                "PruneVid needs the model's 3-D (M-RoPE) position ids; on transformers 5.x pass the "
                "processor's "
                "mm_token_type_ids along with the other processor outputs"
            )
        batch, length = embeds.shape[:2]
        rows = position_ids.shape[0]
        sequences = []
        any_merged = False
        for b, sample in enumerate(state.videos):
            pieces_embeds, pieces_pos, pieces_origin = [], [], []
            cursor = 0
            for video in sample:
                text = torch.arange(cursor, video.start, device=embeds.device)
                pieces_embeds.append(embeds[b, cursor : video.start])
                pieces_pos.append(position_ids[:, b, cursor : video.start])
                pieces_origin.append(text)
                span = slice(video.start, video.end)
                # Reference methods (for comparisons) reduce a video their own way, applied the same way.
                reduce = reduce_video if isinstance(self.config, ReferenceConfig) else merge_video
                result = reduce(embeds[b, span], video.grid, position_ids[-3:, b, span], self.config)
                representative = result.representative.to(embeds.device)
                merged_pos = result.positions.to(position_ids)
                if rows == 4:  # row 0 holds plain text positions; rebuilt below
                    merged_pos = torch.cat([position_ids[:1, b, video.start + representative], merged_pos])
                pieces_embeds.append(result.features.to(embeds.dtype))
                pieces_pos.append(merged_pos)
                pieces_origin.append(video.start + representative)
                video.groups = budget_groups(result.frame_index, result.segment_id, result.is_static)
                video.tokens_after_stage1 = len(representative)
                source_of = result.assignment.to(embeds.device)  # -1: a reference method dropped it
                merged = video.start + representative[source_of.clamp(min=0)]
                video.merged_into = torch.where(source_of >= 0, merged, -1)
                any_merged |= len(representative) != video.end - video.start
                cursor = video.end
            pieces_embeds.append(embeds[b, cursor:])
            pieces_pos.append(position_ids[:, b, cursor:])
            pieces_origin.append(torch.arange(cursor, length, device=embeds.device))
            sequences.append(
                (torch.cat(pieces_embeds), torch.cat(pieces_pos, dim=1), torch.cat(pieces_origin))
            )
        if not any_merged:
            return None  # nothing merged: the sequence is the prompt itself; leave the inputs untouched

        new_length = max(len(origin) for _, _, origin in sequences)
        new_embeds = embeds.new_zeros(batch, new_length, embeds.shape[-1])
        new_pos = position_ids.new_zeros(rows, batch, new_length)
        origin = torch.full((batch, new_length), -1, dtype=torch.long, device=embeds.device)
        for b, (seq_embeds, seq_pos, seq_origin) in enumerate(sequences):
            pad = new_length - len(seq_origin)  # left padding keeps every sample's last token last
            new_embeds[b, pad:] = seq_embeds
            new_pos[:, b, pad:] = seq_pos
            origin[b, pad:] = seq_origin
        valid = (origin >= 0) & state.valid.gather(1, origin.clamp(min=0))
        state.origin, state.valid, state.pruned = origin, valid, True

        changed = dict(kwargs)
        changed["inputs_embeds"] = new_embeds
        if rows == 4:
            new_pos[0] = (valid.long().cumsum(-1) - 1).clamp(min=0)
        changed["position_ids"] = new_pos
        mask = kwargs.get("attention_mask")
        changed["attention_mask"] = None if mask is None and bool(valid.all()) else valid.to(torch.long)
        if kwargs.get("cache_position") is not None:  # 4.57: positions of the physical rows
            changed["cache_position"] = torch.arange(new_length, device=embeds.device)
        return changed

    def _record_videos(self, state: _Prefill) -> None:
        """After Stage 1 (or without it): each video's slot range, budget groups and statistics."""
        for b, sample in enumerate(state.videos):
            origin = state.origin[b]
            for v, video in enumerate(sample):
                # A video's slots are contiguous and in increasing origin order (Stage 1 sorts them).
                inside = (origin >= video.start) & (origin < video.end)
                video.slot_start = int(torch.argmax(inside.int()))
                video.slot_end = video.slot_start + video.tokens_after_stage1
                if video.groups is None:
                    t, h, w = video.grid
                    video.groups = budget_groups(torch.arange(t * h * w, device=origin.device) // (h * w))
                stats = state.stats.samples[b].videos[v]
                stats.tokens_after_stage1 = stats.tokens_after_stage2 = video.tokens_after_stage1
                stats.kept_indices = origin[video.slot_start : video.slot_end].tolist()
                if video.merged_into is not None:
                    stats.merged_into = video.merged_into.tolist()

    # ----------------------------------------------------------------- Stage 2 and 3 (layer M)
    def _prepare_stage2(self, state: _Prefill) -> None:
        """Before layer M runs: which rows are the question of each sample (after its last video)."""
        state.stage2_rows = []
        for b, sample in enumerate(state.videos):
            stats = state.stats.samples[b]
            if not sample:
                stats.stage2_skipped = "no video in this sample"
                state.stage2_rows.append(state.origin.shape[1])
                continue
            last = sample[-1].slot_end
            state.stage2_rows.append(last)
            if last >= state.origin.shape[1]:
                stats.stage2_skipped = "no text after the last video"

    def _keep_queries(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        state = self._state
        if state is not None and not state.decoding and state.stage2_rows:
            first = min(state.stage2_rows)
            state.query = output[:, first:].detach()

    def _keep_keys(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        state = self._state
        if state is not None and not state.decoding and state.stage2_rows:
            state.key = output.detach()

    def _select(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """After layer M: score, select, gather the hidden states, cut the caches of layers 0..M."""
        state = self._state
        if state is None or state.decoding or not state.stage2_rows:
            return None
        with torch.no_grad():
            keep_lists = self._stage2_keep(state)
        state.query = state.key = None
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
        lower_valid = state.valid
        state.origin = torch.where(keep_valid, state.origin.to(device).gather(1, keep), -1)
        state.valid = keep_valid & state.valid.to(device).gather(1, keep)
        state.keep, state.pruned = keep, True
        state.upper_valid = state.valid
        state.lower_valid = lower_valid
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
        first_row = min(state.stage2_rows)
        query, key = state.query, state.key
        keep_lists, removed = [], False
        fastv = isinstance(self.config, ReferenceConfig)  # the in-LLM reference method: one budget a video
        for b, sample in enumerate(state.videos):
            valid = state.valid[b].to(key.device)
            stats = state.stats.samples[b]
            slots = torch.nonzero(valid).flatten()
            if stats.stage2_skipped is not None:
                keep_lists.append(slots.cpu())
                continue
            row_start = state.stage2_rows[b]
            q = query[b, row_start - first_row :].view(-1, attention.config.num_attention_heads, head_dim)
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
                video_slots.append(torch.arange(video.slot_start, video.slot_end, device=key.device))
                group = torch.zeros_like(video.groups) if fastv else video.groups
                groups.append(group.to(key.device) + offset)
                offset += int(group.max()) + 1
                is_video[video.slot_start : video.slot_end] = True
            video_slots = torch.cat(video_slots)
            kept_video = video_slots[
                select_tokens(scores[video_slots], torch.cat(groups), self.config.keep_ratio)
            ]
            removed |= len(kept_video) < len(video_slots)
            kept = torch.sort(torch.cat([torch.nonzero(valid & ~is_video).flatten(), kept_video])).values
            keep_lists.append(kept.cpu())
            origin = state.origin[b]
            for v, video in enumerate(sample):
                mine = kept_video[(kept_video >= video.slot_start) & (kept_video < video.slot_end)]
                video_stats = stats.videos[v]
                video_stats.tokens_after_stage2 = len(mine)
                video_stats.kept_indices = origin[mine.to(origin.device)].tolist()
        return keep_lists if removed else None

    def _before_upper_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Layers after M run on the kept tokens: give them gathered positions and masks."""
        state = self._state
        if state is None or state.keep is None:
            return None
        changed = dict(kwargs)
        if state.decoding:
            if self.config.enable_cache_compression:
                return None  # every layer has the same cache; the remapped 2-D mask fits all of them
            changed["attention_mask"] = state.decode_upper_mask
            return args, changed
        keep = state.keep
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

    # ----------------------------------------------------------------- decoding
    def _remap_decode_mask(self, state: _Prefill, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Map the unpruned-length 2-D mask of a decode step onto the pruned cache rows."""
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] != 1:
            raise RuntimeError(
                "a pruned prompt decodes one token per step (no assisted or speculative decoding)"
            )
        mask = kwargs.get("attention_mask")
        cache = _cache_from(kwargs)
        new_rows = cache.layers[0].keys.shape[-2] - state.lower_valid.shape[1] + 1
        if mask is not None:
            if mask.ndim != 2 or mask.shape[1] != state.prompt_length + new_rows:
                raise RuntimeError("attention mask does not match the pruned prompt being decoded")
            tail = mask[:, state.prompt_length :].to(state.lower_valid.device).bool()
        else:
            tail = torch.ones(embeds.shape[0], new_rows, dtype=torch.bool, device=state.lower_valid.device)
        changed = dict(kwargs)
        lower = torch.cat([state.lower_valid, tail], dim=1)
        changed["attention_mask"] = None if mask is None and bool(lower.all()) else lower.long()
        if state.keep is not None and not self.config.enable_cache_compression:
            upper = torch.cat([state.upper_valid, tail.to(state.upper_valid.device)], dim=1)
            all_valid = mask is None and bool(upper.all())
            state.decode_upper_mask = None if all_valid else self._mask_4d(upper, 1, embeds.dtype)
        return args, changed

    # ----------------------------------------------------------------- helpers
    def _mask_4d(self, key_valid: Tensor, query_length: int, dtype: torch.dtype) -> Tensor | None:
        """The mask the attention implementation expects, for queries at the last ``query_length`` rows.

        ``key_valid`` ``[B, S]`` bool. Prefill (``query_length == S``): causal over the kept order, invalid
        keys hidden; an invalid query row still sees itself so its (unused) output stays finite. Decode
        (``query_length == 1``): every valid key. sdpa takes a bool mask (or None for plain causal), eager
        an additive float mask; the result is ``[B, 1, query_length, S]``.
        """
        implementation = self._attention_implementation()
        batch, length = key_valid.shape
        if implementation == "sdpa" and bool(key_valid.all()):
            return None
        if query_length == length:
            rows = torch.arange(length, device=key_valid.device)
            allowed = (rows[None, :] <= rows[:, None])[None] & key_valid[:, None, :]
            allowed.diagonal(dim1=-2, dim2=-1).fill_(True)
        else:
            allowed = key_valid[:, None, :].expand(batch, query_length, length)
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


def attach(model: nn.Module, config: PruneVidConfig | None = None) -> Pruner:
    """Attach PruneVid to a stock ``Qwen2_5_VLForConditionalGeneration`` loaded with ``from_pretrained``.

    ``model.generate(**processor_outputs)`` then prunes every prompt's video tokens as ``config`` says
    (default: the ``paper`` preset). Returns the :class:`Pruner` handle; ``detach()`` undoes everything.
    Raises ``TypeError`` for other model classes and ``ValueError`` for a ``pruning_layer`` outside the
    model or an unsupported attention implementation.
    """
    return Pruner(model, PruneVidConfig.preset("paper") if config is None else config)


def pruner_of(model: nn.Module) -> Pruner | None:
    """The pruner attached to ``model``, or None."""
    ref = _ATTACHED.get(model)
    return None if ref is None else ref()


class _FastVision:
    """The batched window attention installed on one vision tower's blocks (lossless, see fast_vision).

    Each ``visual.blocks[i].attn`` gets an instance ``forward``: a ``functools.partial`` bound to that
    module, so only this model changes and a ``copy.deepcopy`` of the model binds its own copies.
    Installed only when the vision attention is SDPA: flash-attention-2 already makes one varlen call and
    eager is the reference implementation. :meth:`remove` deletes exactly the attributes it set.
    """

    def __init__(self, visual: nn.Module) -> None:
        self.modules: list[nn.Module] = []
        self._forwards: list[functools.partial] = []
        self._plans = _PlanCache()
        if visual.config._attn_implementation != "sdpa":
            return
        for block in visual.blocks:
            attn = block.attn
            if "forward" in vars(attn):
                # Someone else (e.g. accelerate's offloading hooks) already wraps this forward: replacing it
                # would bypass them, so this block keeps its stock attention.
                warnings.warn(
                    f"fast_vision left {type(attn).__name__} stock: its forward is already replaced",
                    stacklevel=3,
                )
                continue
            forward = functools.partial(_fast_vision_attention, attn, self._plans)
            attn.forward = forward
            self.modules.append(attn)
            self._forwards.append(forward)

    def remove(self) -> None:
        for attn, forward in zip(self.modules, self._forwards, strict=True):
            if vars(attn).get("forward") is forward:
                del attn.forward
        self.modules, self._forwards = [], []
        self._plans.clear()


class _PlanCache:
    """Window plans of the last two ``cu_seqlens`` tensors: the vision tower passes one tensor object to
    every windowed block and another to every full-attention block, so planning (one host sync) runs
    twice per tower forward instead of once per block. Holding the tensors keeps their identity unique."""

    def __init__(self) -> None:
        self._entries: list[tuple[Tensor, int | None, WindowPlan]] = []

    def get(self, cu_seqlens: Tensor) -> WindowPlan:
        version = None if cu_seqlens.is_inference() else cu_seqlens._version  # inference tensors have none
        for tensor, seen_version, plan in self._entries:
            if tensor is cu_seqlens and seen_version == version:
                return plan
        plan = plan_windows(cu_seqlens)
        self._entries = [(cu_seqlens, version, plan), *self._entries][:2]
        return plan

    def clear(self) -> None:
        self._entries = []


def _fast_vision_attention(
    attn: nn.Module,
    plans: _PlanCache,
    hidden_states: Tensor,
    cu_seqlens: Tensor,
    *args: Any,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> Tensor:
    """``Qwen2_5_VLVisionAttention.forward`` with the per-window SDPA loop batched by window length.

    ``hidden_states`` ``[N, D]``, ``cu_seqlens`` ``[W + 1]`` int32, ``position_embeddings`` rotary
    ``(cos, sin)`` each ``[N, head_dim]``; returns ``[N, D]``, bit-identical to the stock forward. Uses the
    module's own ``qkv``/``proj`` (their hooks and adapters still run) and transformers' own vision rotary.
    """
    if args or position_embeddings is None or attn.config._attn_implementation != "sdpa":
        # Not the blocks' keyword call, or the implementation was switched after attach: stock, as is.
        return type(attn).forward(
            attn, hidden_states, cu_seqlens, *args, position_embeddings=position_embeddings, **kwargs
        )
    length = hidden_states.shape[0]
    qkv = attn.qkv(hidden_states).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    query, key, value = qkv.unbind(0)  # [N, H, d] each
    cos, sin = position_embeddings
    query, key = modeling_qwen2_5_vl.apply_rotary_pos_emb_vision(query, key, cos, sin)
    output = window_attention(
        *(x.transpose(0, 1).unsqueeze(0) for x in (query, key, value)),  # [1, H, N, d], as stock
        cu_seqlens,
        attn.scaling,
        plan=plans.get(cu_seqlens),
        dropout_p=attn.attention_dropout if attn.training else 0.0,
        max_batched_length=FAST_VISION_MAX_BATCHED_LENGTH,
    )
    return attn.proj(output.reshape(length, -1).contiguous())


def _check_model_supports_pruning(model: nn.Module) -> None:
    text_config = model.model.language_model.config
    if getattr(text_config, "use_sliding_window", False):
        raise ValueError("PruneVid does not support Qwen2.5-VL with sliding-window attention layers")
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
