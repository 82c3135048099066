"""What differs between the Qwen VL families PruneVid attaches to: one small :class:`Family` per family.

The pruner (:mod:`prunevid.models.pruner`) is written once; a family says which model classes it covers,
how a video sits in the prompt (one run of video tokens per video, or one run per frame group between
timestamp texts), which modules give the pre-rotary queries and keys Stage 2 scores, how many DeepStack
levels the language model adds, and whether the lossless ``fast_vision`` tower path exists for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Family:
    """One Qwen VL family as PruneVid sees it.

    Attributes:
        name: a readable name, for messages.
        model_types: the ``config.model_type`` values it covers.
        class_names: the ``...ForConditionalGeneration`` classes (names in ``transformers``).
        frame_groups: True when every frame group of a video is its own run of video tokens, preceded by a
            timestamp text (Qwen3-VL); False when a video is one run (Qwen2-VL, Qwen2.5-VL).
        query_key_norms: True when the pre-rotary queries and keys are the outputs of ``q_norm``/``k_norm``
            (shaped ``[B, L, H, d]``, Qwen3-VL); False when they are ``q_proj``/``k_proj``'s.
    """

    name: str
    model_types: tuple[str, ...]
    class_names: tuple[str, ...]
    frame_groups: bool = False
    query_key_norms: bool = False

    def model_classes(self) -> tuple[type[nn.Module], ...]:
        """The model classes, from the installed transformers (absent ones skipped)."""
        import transformers

        return tuple(getattr(transformers, name) for name in self.class_names if hasattr(transformers, name))

    def query_key_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The modules whose outputs are layer ``layer``'s queries and keys before rotary embedding."""
        attention = layer.self_attn
        if self.query_key_norms:
            return attention.q_norm, attention.k_norm
        return attention.q_proj, attention.k_proj

    def deepstack_levels(self, model: nn.Module) -> int:
        """How many LLM layers get DeepStack features added after them (0: none)."""
        return len(getattr(model.config.vision_config, "deepstack_visual_indexes", None) or ())

    def install_fast_vision(self, model: nn.Module) -> Any:
        """The lossless batched vision attention, installed; None where the family has none."""
        return None
