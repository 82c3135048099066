"""Qwen2-VL: the Qwen2.5-VL layout without window attention; a video is one run of video tokens.

No ``second_per_grid_ts`` (the t index steps once per frame pair); rotary tables ``(3, B, L, D)`` on 4.57;
its vision tower has no windows, so the window-batching ``fast_vision`` path does not apply.
"""

from __future__ import annotations

from prunevid.models.family import Family

QWEN2_VL = Family(
    name="Qwen2-VL",
    model_types=("qwen2_vl",),
    class_names=("Qwen2VLForConditionalGeneration",),
)
