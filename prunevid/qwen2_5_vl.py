"""Former home of the Qwen2.5-VL adapter, kept for imports: everything now lives in :mod:`prunevid.models`
(one pruner for every Qwen VL family; Qwen2.5-VL's vision fast path in :mod:`prunevid.models.qwen2_5_vl`)."""

from __future__ import annotations

from prunevid.models import CacheLayout, Pruner, attach, cache_layout, pruner_of

__all__ = ["CacheLayout", "Pruner", "attach", "cache_layout", "pruner_of"]
