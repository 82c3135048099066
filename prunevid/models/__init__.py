"""PruneVid on stock transformers models: one pruner (:mod:`prunevid.models.pruner`) and one small
:class:`~prunevid.models.family.Family` per Qwen VL family, found by ``config.model_type``
(:mod:`prunevid.models.registry`)."""

from __future__ import annotations

from prunevid.models.family import Family
from prunevid.models.pruner import SUPPORTED_ATTENTION, CacheLayout, Pruner, attach, cache_layout, pruner_of
from prunevid.models.registry import FAMILIES, SUPPORTED_MODEL_TYPES, family_of

__all__ = [
    "FAMILIES",
    "SUPPORTED_ATTENTION",
    "SUPPORTED_MODEL_TYPES",
    "CacheLayout",
    "Family",
    "Pruner",
    "attach",
    "cache_layout",
    "family_of",
    "pruner_of",
]
