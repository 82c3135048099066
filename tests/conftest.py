"""Shared fixtures: a tiny random Qwen2.5-VL (built once per session, no hub access) and synthetic clips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prunevid.synthetic import make_clip
from prunevid.tiny import build_tiny_checkpoint
from prunevid.video import VideoClip

# ----------------------------------------------------------------------------------------------
# Tiny model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Qwen2.5-VL checkpoint + processor (seed 0, 4 decoder layers)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-qwen2_5_vl")


def load_tiny_model(checkpoint: Path, attn_implementation: str) -> Any:
    """The tiny model in float32 and eval mode with the given attention implementation."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation=attn_implementation
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> Any:
    """The tiny model with SDPA attention. Shared: tests must not modify it."""
    return load_tiny_model(tiny_checkpoint, "sdpa")


@pytest.fixture(scope="session")
def tiny_processor(tiny_checkpoint: Path) -> Any:
    """The tiny checkpoint's ``Qwen2_5_VLProcessor``."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


# ----------------------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------------------


def video_clip(
    num_frames: int = 8,
    height: int = 56,
    width: int = 56,
    *,
    seed: int = 0,
    source_fps: float = 4.0,
    **make_clip_kwargs: Any,
) -> VideoClip:
    """A ``VideoClip`` of ``make_clip`` frames (``uint8 [T, H, W, 3]``), every source frame sampled."""
    frames = make_clip(num_frames, height, width, seed=seed, **make_clip_kwargs)
    return VideoClip(
        frames=frames,
        source_fps=source_fps,
        total_num_frames=num_frames,
        frame_indices=np.arange(num_frames, dtype=np.int64),
    )


@pytest.fixture(scope="session")
def make_video_clip() -> Callable[..., VideoClip]:
    """Factory fixture for :func:`video_clip` (so tests need not import from conftest)."""
    return video_clip


@pytest.fixture(scope="session")
def tiny_model_eager(tiny_checkpoint: Path) -> Any:
    """The tiny model with eager attention (the masked-oracle reference)."""
    return load_tiny_model(tiny_checkpoint, "eager")


@pytest.fixture(scope="session")
def models(tiny_model: Any, tiny_model_eager: Any) -> dict[str, Any]:
    """The tiny model by attention implementation."""
    return {"sdpa": tiny_model, "eager": tiny_model_eager}


LONG_SYSTEM_PROMPT = (
    "You are a careful video analyst. Watch every frame, note each object, its colour, its shape and "
    "how it moves, and answer briefly with the letter of the best option when options are given. " * 3
)


@pytest.fixture(scope="session")
def prompts(tiny_processor: Any) -> dict[str, Any]:
    """Processor outputs: ``single`` (batch 1), ``padded`` (batch 2, left padding), ``system`` (a long
    system message before the video and a short question)."""
    from prunevid.prompt import build_inputs

    first = video_clip(12, 112, 112, seed=1, scene_cut_at=6)
    second = video_clip(8, 112, 140, seed=2)
    return {
        "single": build_inputs(tiny_processor, first, "What moves in the video?"),
        "padded": build_inputs(
            tiny_processor,
            [first, second],
            ["What moves in the video?", "Which colour is the disc at the end?"],
        ),
        "system": build_inputs(tiny_processor, second, "Colour?", system_prompt=LONG_SYSTEM_PROMPT),
    }


@pytest.fixture
def stock_models(models: dict[str, Any]) -> Any:
    """The shared tiny models, checked stock before the test and made stock again after it."""
    from prunevid.qwen2_5_vl import pruner_of

    for model in models.values():
        assert pruner_of(model) is None, "a previous test left a pruner attached"
    yield models
    for model in models.values():
        pruner = pruner_of(model)
        if pruner is not None:
            pruner.detach()
