"""Shared fixtures: tiny random models (built once per session, no hub access) and synthetic clips.

Qwen2.5-VL (most tests): ``tiny_checkpoint``, ``tiny_model`` / ``tiny_model_eager`` / ``models``,
``tiny_processor``, ``prompts``, ``stock_models``.

Every supported family (``qwen2_5_vl``, ``qwen2_vl``, ``qwen3_vl``, ``qwen3_vl_moe``; see
:func:`prunevid.tiny.build_tiny_checkpoint` for the sizes):

- ``family``: the family name. A test that uses any fixture below runs once per family; narrow it with
  ``@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"], indirect=True)`` (indirect: the
  fixtures below are session-scoped and built once per family).
- ``tiny_family_checkpoint``: the family's checkpoint folder (seed 0, the family's default depth); load it
  with ``load_tiny_model(checkpoint, "sdpa" | "eager")`` (any family; ``from conftest import
  load_tiny_model``).
- ``tiny_checkpoint_of(family)``: the same folder for a family named in the test body.
- ``tiny_family_models``: ``{"sdpa": model, "eager": model}`` of the family (shared: detach what you
  attach, change no weights); ``tiny_family_processor``: its processor.
- ``family_prompts``: processor outputs (:func:`prunevid.prompt.build_inputs`) of the family: ``single``
  (batch 1: 12 frames of 4x4 LLM tokens, a scene cut at frame 6) and ``padded`` (batch 2, left padding:
  that clip and 8 frames of 4x5 tokens, different questions); ``two_videos`` (batch 1: both clips in one
  user turn) and ``image_video`` (batch 1: a 2x3-token image, then the first clip), both built by
  :func:`family_multimodal_inputs`. Frames are ``FAMILY_CLIP_UNIT[family]``
  (28 or 32 pixels) per LLM token, so the processor does not resize them; both families' clips give the
  same token grids. ``family_clip(family, ...)`` makes more such clips.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prunevid.synthetic import make_clip
from prunevid.tiny import FAMILIES, build_tiny_checkpoint
from prunevid.video import VideoClip

# ----------------------------------------------------------------------------------------------
# Tiny model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Qwen2.5-VL checkpoint + processor (seed 0, 4 decoder layers)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-qwen2_5_vl")


def load_tiny_model(checkpoint: Path, attn_implementation: str) -> Any:
    """A tiny model of any family in float32 and eval mode with the given attention implementation.

    The class follows the checkpoint's ``model_type`` (:data:`prunevid.pipeline.MODEL_CLASSES`).
    """
    import transformers

    from prunevid.pipeline import MODEL_CLASSES

    model_type = json.loads((Path(checkpoint) / "config.json").read_text())["model_type"]
    model_class = getattr(transformers, MODEL_CLASSES[model_type])
    model = model_class.from_pretrained(
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


# ----------------------------------------------------------------------------------------------
# Every supported family
# ----------------------------------------------------------------------------------------------

# Pixels per LLM token side (patch size x spatial merge): frames of multiples of this are not resized.
FAMILY_CLIP_UNIT = {"qwen2_5_vl": 28, "qwen2_vl": 28, "qwen3_vl": 32, "qwen3_vl_moe": 32}


def family_clip(
    family: str, num_frames: int, rows: int, columns: int, *, seed: int = 0, **kwargs: Any
) -> VideoClip:
    """:func:`video_clip` of ``rows x columns`` LLM tokens per frame pair for ``family``'s processor."""
    unit = FAMILY_CLIP_UNIT[family]
    return video_clip(num_frames, rows * unit, columns * unit, seed=seed, **kwargs)


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    """The model family (``model_type``) of the ``tiny_family_*`` fixtures; one test run per family."""
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoint_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_checkpoint_of(family)``: that family's tiny checkpoint folder, built on first use."""
    built: dict[str, Path] = {}

    def checkpoint(family_name: str) -> Path:
        if family_name not in built:
            folder = tmp_path_factory.mktemp("tiny-family") / f"tiny-{family_name}"
            built[family_name] = build_tiny_checkpoint(folder, family=family_name)
        return built[family_name]

    return checkpoint


@pytest.fixture(scope="session")
def tiny_family_checkpoint(family: str, tiny_checkpoint_of: Callable[[str], Path]) -> Path:
    """The tiny checkpoint folder of ``family`` (seed 0, the family's default number of layers)."""
    return tiny_checkpoint_of(family)


@pytest.fixture(scope="session")
def tiny_family_models(tiny_family_checkpoint: Path) -> dict[str, Any]:
    """``{"sdpa": model, "eager": model}`` of ``family`` in float32. Shared: tests must leave them stock."""
    return {impl: load_tiny_model(tiny_family_checkpoint, impl) for impl in ("sdpa", "eager")}


@pytest.fixture(scope="session")
def tiny_family_processor(tiny_family_checkpoint: Path) -> Any:
    """The processor of ``family``'s tiny checkpoint (``AutoProcessor``)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_family_checkpoint)


@pytest.fixture(scope="session")
def family_prompts(family: str, tiny_family_processor: Any) -> dict[str, Any]:
    """Processor outputs of ``family``: ``single`` (batch 1) and ``padded`` (batch 2, left padding, clips
    of different sizes and lengths). See the module docstring."""
    from prunevid.prompt import build_inputs

    first = family_clip(family, 12, 4, 4, seed=1, scene_cut_at=6)
    second = family_clip(family, 8, 4, 5, seed=2)
    image = family_clip(family, 1, 2, 3, seed=3).frames[0]
    return {
        "single": build_inputs(tiny_family_processor, first, "What moves in the video?"),
        "padded": build_inputs(
            tiny_family_processor,
            [first, second],
            ["What moves in the video?", "Which colour is the disc at the end?"],
        ),
        "two_videos": family_multimodal_inputs(
            tiny_family_processor, [first, second], "Which video is longer?"
        ),
        "image_video": family_multimodal_inputs(
            tiny_family_processor, [first], "Is the picture in the video?", image=image
        ),
    }


def family_multimodal_inputs(
    processor: Any, clips: list[VideoClip], question: str, *, image: np.ndarray | None = None
) -> Any:
    """One user turn (batch 1) with an optional image ``uint8 [H, W, 3]``, then every clip, then the question:
    the chat template and the processor with :func:`prunevid.prompt.video_kwargs` (each family's timing)."""
    from prunevid.prompt import video_kwargs

    content: list[dict[str, Any]] = [{"type": "image"}] if image is not None else []
    content += [{"type": "video"} for _ in clips] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    images = {"images": [image]} if image is not None else {}
    return processor(
        text=[text],
        videos=[c.frames for c in clips],
        return_tensors="pt",
        **images,
        **video_kwargs(processor, clips),
    )
