"""What lmms-eval reads when it starts: the model manifest, and PruneVid options from ``--model_args``.

lmms-eval 0.7 resolves ``--model NAME`` through its model registry, which loads manifests from the
``lmms_eval.models`` entry-point group (declared in prunevid's ``pyproject.toml``). This module is that
entry point: lmms-eval imports it every time its model package is imported, so it imports nothing of
lmms-eval's model code; the model class (:mod:`prunevid.integrations.lmms_eval_qwen2_5_vl`) is imported
only when ``--model prunevid_qwen2_5_vl`` (or ``prunevid_qwen3_vl``) is resolved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from prunevid.config import PruneVidConfig

__all__ = ["CHAT_CLASSES", "CONFIG_FIELDS", "MODEL_ID", "config_from_model_args", "manifests"]

MODEL_ID = "prunevid_qwen2_5_vl"
# lmms-eval model id -> the chat class, imported only when lmms-eval resolves that id.
CHAT_CLASSES = {
    MODEL_ID: "prunevid.integrations.lmms_eval_qwen2_5_vl.PruneVidQwen2_5_VL",
    "prunevid_qwen3_vl": "prunevid.integrations.lmms_eval_qwen3_vl.PruneVidQwen3_VL",
}
# Every PruneVidConfig field, by name, with its default (its type decides how a string is read).
CONFIG_FIELDS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(PruneVidConfig)}
_NONE_WORDS = ("none", "null", "auto")


def manifests() -> list[Any]:
    """The ``lmms_eval.models`` entry point: one chat-model manifest per id of :data:`CHAT_CLASSES`.

    Returns:
        ``[lmms_eval.models.registry_v2.ModelManifest, ...]``.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, chat_class_path=path) for name, path in CHAT_CLASSES.items()]


def _read_value(name: str, value: Any) -> Any:
    """``value`` of field ``name`` as its type when it arrives as a string. Other values pass unchanged
    (lmms-eval already turns ``true``/``false`` and numbers into Python values); PruneVidConfig checks all."""
    if not isinstance(value, str):
        return value
    default = CONFIG_FIELDS[name]
    text = value.strip()
    if default is None and text.lower() in _NONE_WORDS:
        return None
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            return {"true": True, "false": False}.get(lowered, value)
        if isinstance(default, int) or default is None:
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        return value  # PruneVidConfig names the field and what it allows
    return value


def config_from_model_args(preset: str, options: Mapping[str, Any]) -> PruneVidConfig:
    """The named preset with ``options`` (PruneVidConfig field -> value) applied and validated.

    Args:
        preset: a name of :data:`prunevid.config.PRESETS`.
        options: field values as ``--model_args`` gives them: strings, or the bools / ints / floats
            lmms-eval parsed them into; ``pruning_layer=none`` (or ``auto``) is the depth-fraction default.

    Raises:
        ValueError: an unknown preset or field, or a value the field does not allow.
    """
    unknown = sorted(set(options) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown PruneVid option(s) {', '.join(unknown)}: the fields are {', '.join(CONFIG_FIELDS)}"
        )
    config = PruneVidConfig.preset(str(preset))
    return config.replace(**{name: _read_value(name, value) for name, value in options.items()})
