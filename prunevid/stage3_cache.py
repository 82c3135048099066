"""Stage 3 of PruneVid: cut the KV cache of layers 0..M to the tokens Stage 2 kept (pure tensor function).

Layers ``0..M`` saw every token during prefill; after Stage 2 the later layers cache only the kept
ones. Cutting the early layers' caches to the same rows makes decoding attend to kept tokens only and
gives every layer one length, which is what transformers sizes its decode masks from. Keys are cached
after rotary embedding, so a kept key keeps its original position; the adapter keeps the decode
positions at those the unpruned prompt would give.
"""

from __future__ import annotations

from torch import Tensor


def compress_kv(keys: Tensor, values: Tensor, keep_index: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the cache rows ``keep_index`` of every sample.

    Args:
        keys: ``[B, H_kv, S, d]`` cached keys of one layer.
        values: ``[B, H_kv, S, d_v]`` cached values of the same layer.
        keep_index: ``[B, K]`` int64 row indices into ``S`` per sample (the adapter pads short samples
            with masked slots, so every sample has K rows).

    Returns:
        ``(keys [B, H_kv, K, d], values [B, H_kv, K, d_v])``, new contiguous tensors, so the memory of
        the full cache is released.
    """
    index = keep_index.to(keys.device)[:, None, :, None]
    keys = keys.gather(2, index.expand(-1, keys.shape[1], -1, keys.shape[3]))
    values = values.gather(2, index.expand(-1, values.shape[1], -1, values.shape[3]))
    return keys, values
