"""Qwen3-VL (dense and MoE): frame groups between timestamps, q/k norms, DeepStack.

- A video of T' frame groups is T' runs of ``<|video_pad|>`` tokens, each after its timestamp text
  (``<1.5 seconds>``) and ``<|vision_start|>``; Stage 1 merges over the whole video, and a merged token goes
  to the run of its representative's frame group (a static token: its segment's first frame).
- Stage 2 scores the outputs of ``q_norm``/``k_norm`` (the queries and keys right before rotary).
- DeepStack: the language model adds vision features of K levels to the visual rows after layers
  ``0..K-1`` (``visual_pos_masks``, ``deepstack_visual_embeds``). Stage 1 merges every level with the same
  assignment and gathers the mask; Stage 2 must select at a layer ``M >= K``.
- The MoE variant (``qwen3_vl_moe``) differs only in its MLPs; the router is untouched.
- The vision tower has no windows: ``fast_vision`` does not apply.
"""

from __future__ import annotations

from prunevid.models.family import Family

QWEN3_VL = Family(
    name="Qwen3-VL",
    model_types=("qwen3_vl", "qwen3_vl_moe"),
    class_names=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
    frame_groups=True,
    query_key_norms=True,
)
