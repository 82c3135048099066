"""Qwen2.5-VL: the window-attention vision tower's lossless fast path, and its :class:`Family`.

Qwen2.5-VL is the reference family: a video is one run of ``<|video_pad|>`` tokens, Stage 2 scores
``q_proj``/``k_proj`` outputs, no DeepStack. What is its own is ``fast_vision``: with SDPA vision attention,
each vision block's ``attn`` gets an instance-level ``forward`` that batches equal-length windows
(:mod:`prunevid.fast_vision`) instead of the stock per-window loop; its class, other models and
transformers' attention registry are untouched, and :meth:`_FastVision.remove` deletes what it set.

The vision blocks call ``attn(hidden_states, cu_seqlens=..., position_embeddings=..., **kwargs)`` by keyword
in 4.57, 5.17 and 5.24 (plus ``rotary_pos_emb=None`` on 4.57, ``max_seqlen`` on 5.x, both unused by SDPA),
and pass one ``cu_seqlens`` tensor object to every windowed block and another to every full-attention block.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

from prunevid.fast_vision import WindowPlan, plan_windows, window_attention
from prunevid.models.family import Family

# fast_vision batches windows of at most this many rows: every window of the windowed blocks (8x8 patches).
# The full-attention blocks' frame pairs keep one SDPA call each, as stock: batching them changes flash
# attention's split-KV choice for short frame pairs (measured on an H200: max |diff| 0.3 at 336x336), while
# 64 rows fit one key block of every flash kernel. Costs about 1 ms per tower call. None batches all.
FAST_VISION_MAX_BATCHED_LENGTH: int | None = 64


@dataclass(frozen=True)
class _Qwen25VL(Family):
    def install_fast_vision(self, model: nn.Module) -> _FastVision:
        return _FastVision(model.model.visual)


QWEN2_5_VL = _Qwen25VL(
    name="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    class_names=("Qwen2_5_VLForConditionalGeneration",),
)


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
