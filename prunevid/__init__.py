"""prunevid: training-free video token pruning (PruneVid) for Qwen2.5-VL on stock transformers.

config = prunevid.PruneVidConfig.preset("paper")
model, processor, pruner = prunevid.load("Qwen/Qwen2.5-VL-7B-Instruct", config)
answer = prunevid.ask(model, processor, "clip.mp4", "What happens at the end?")
print(answer.text, answer.stats.retention)
"""

from __future__ import annotations

from prunevid.config import PRESETS, PruneVidConfig
from prunevid.pipeline import Answer, ask, load
from prunevid.qwen2_5_vl import SUPPORTED_MODELS, Pruner, attach
from prunevid.stats import PruneStats, SampleStats, VideoStats
from prunevid.video import VideoClip, load_video

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SUPPORTED_MODELS",
    "Answer",
    "PruneStats",
    "PruneVidConfig",
    "Pruner",
    "SampleStats",
    "VideoClip",
    "VideoStats",
    "ask",
    "attach",
    "load",
    "load_video",
]
