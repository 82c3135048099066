"""The supported model families, keyed by ``config.model_type``."""

from __future__ import annotations

from torch import nn

from prunevid.models.family import Family
from prunevid.models.qwen2_5_vl import QWEN2_5_VL
from prunevid.models.qwen2_vl import QWEN2_VL
from prunevid.models.qwen3_vl import QWEN3_VL

FAMILIES: dict[str, Family] = {
    model_type: family for family in (QWEN2_5_VL, QWEN2_VL, QWEN3_VL) for model_type in family.model_types
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a loaded model; ``TypeError`` naming the supported ones otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None or not isinstance(model, family.model_classes()):
        supported = ", ".join(name for f in dict.fromkeys(FAMILIES.values()) for name in f.class_names)
        raise TypeError(
            f"PruneVid supports {supported} (model types {', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"got {type(model).__name__} (model type {model_type!r})"
        )
    return family
