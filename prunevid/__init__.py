"""prunevid: training-free video token pruning (PruneVid) for Qwen2.5-VL on stock transformers.

config = prunevid.PruneVidConfig.preset("paper")
model, processor, pruner = prunevid.load("Qwen/Qwen2.5-VL-7B-Instruct", config)
answer = prunevid.ask(model, processor, "clip.mp4", "What happens at the end?")
print(answer.text, answer.stats.retention)

The names below are imported on first use, so ``import prunevid`` (and ``prunevid --help``) does not
load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "PRESETS": "prunevid.config",
    "PruneVidConfig": "prunevid.config",
    "Answer": "prunevid.pipeline",
    "ask": "prunevid.pipeline",
    "load": "prunevid.pipeline",
    "SUPPORTED_MODEL_TYPES": "prunevid.models",
    "Pruner": "prunevid.models",
    "attach": "prunevid.models",
    "build_inputs": "prunevid.prompt",
    "explain": "prunevid.explain",
    "PruneStats": "prunevid.stats",
    "SampleStats": "prunevid.stats",
    "VideoStats": "prunevid.stats",
    "FrameSamplingWarning": "prunevid.video",
    "VideoClip": "prunevid.video",
    "load_video": "prunevid.video",
}

__all__ = [
    "PRESETS",
    "SUPPORTED_MODEL_TYPES",
    "Answer",
    "FrameSamplingWarning",
    "PruneStats",
    "PruneVidConfig",
    "Pruner",
    "SampleStats",
    "VideoClip",
    "VideoStats",
    "ask",
    "attach",
    "build_inputs",
    "explain",
    "load",
    "load_video",
]

if TYPE_CHECKING:
    from prunevid.config import PRESETS, PruneVidConfig
    from prunevid.explain import explain
    from prunevid.models import SUPPORTED_MODEL_TYPES, Pruner, attach
    from prunevid.pipeline import Answer, ask, load
    from prunevid.prompt import build_inputs
    from prunevid.stats import PruneStats, SampleStats, VideoStats
    from prunevid.video import FrameSamplingWarning, VideoClip, load_video


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prunevid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
