"""Video -> answer: load a real checkpoint, decode a video, prompt with the chat template, generate."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.generation.streamers import BaseStreamer

from prunevid.config import PruneVidConfig
from prunevid.prompt import build_inputs
from prunevid.qwen2_5_vl import Pruner, attach, pruner_of
from prunevid.stats import PruneStats
from prunevid.video import VideoClip, load_video

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# 448 x 448 per frame: 256 LLM tokens a frame (the benchmark shape); raise it for detail, lower it for speed.
DEFAULT_MAX_PIXELS = 448 * 448


@dataclass
class Answer:
    """The model's answer to one question about one video.

    Attributes:
        text: the generated answer, special tokens removed.
        token_ids: the generated token ids.
        stats: what PruneVid did in the prefill (None when no pruner is attached).
        timings: seconds spent in ``load_video``, ``preprocess`` (chat template + processor),
            ``ttft`` (generate() start to first token), ``decode`` (the rest of generate()) and ``total``.
        num_frames: frames sampled from the video.
    """

    text: str
    token_ids: list[int]
    stats: PruneStats | None
    timings: dict[str, float] = field(default_factory=dict)
    num_frames: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "num_frames": self.num_frames,
            "timings": self.timings,
            "stats": None if self.stats is None else self.stats.to_dict(),
        }


def load(
    model_id_or_path: str | os.PathLike = DEFAULT_MODEL,
    config: PruneVidConfig | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Any, Pruner]:
    """Load a Qwen2.5-VL checkpoint and its processor with the real ``from_pretrained``, and attach PruneVid.

    Args:
        model_id_or_path: a hub id (downloaded by transformers as usual) or a local checkpoint directory.
        config: what to prune; default the ``paper`` preset.
        **from_pretrained_kwargs: passed to ``from_pretrained`` (``device_map``, ``attn_implementation``...);
            ``dtype`` defaults to ``"auto"`` (the checkpoint's, bf16 for released Qwen2.5-VL) and
            ``attn_implementation`` to ``"sdpa"``.

    Returns:
        ``(model, processor, pruner)``; the model is in eval mode.

    Raises:
        ValueError: the checkpoint is not a supported model type.
    """
    model_config = AutoConfig.from_pretrained(model_id_or_path)
    if model_config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{model_id_or_path} is a {model_config.model_type!r} model; "
            f"prunevid supports {SUPPORTED_MODEL_TYPES}"
        )
    from_pretrained_kwargs.setdefault("dtype", "auto")
    from_pretrained_kwargs.setdefault("attn_implementation", "sdpa")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_id_or_path, **from_pretrained_kwargs)
    model.eval()
    processor = AutoProcessor.from_pretrained(model_id_or_path)
    pruner = attach(model, config)
    return model, processor, pruner


def ask(
    model: Qwen2_5_VLForConditionalGeneration,
    processor: Any,
    video: str | os.PathLike | VideoClip,
    question: str,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_new_tokens: int = 128,
    system_prompt: str | None = None,
) -> Answer:
    """Answer ``question`` about ``video`` with greedy decoding.

    Args:
        model: a Qwen2.5-VL model, with or without a pruner attached (:func:`attach` / :func:`load`).
        processor: its processor.
        video: a video file (decoded with OpenCV or PyAV) or an already sampled :class:`VideoClip`.
        question: the question, asked after the video in one user turn.
        fps / num_frames: frame sampling (at most one; default 2 fps), for a file.
        max_pixels: pixel budget per frame (sides rounded to multiples of 28), for a file.
        max_new_tokens: generation limit.
        system_prompt: optional system message before the user turn.

    Returns:
        An :class:`Answer` with the text, the pruning statistics and timings.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string: PruneVid selects tokens by the question")
    started = time.perf_counter()
    if isinstance(video, VideoClip):
        clip = video
    else:
        clip = load_video(video, fps=fps, num_frames=num_frames, max_pixels=max_pixels)
    loaded = time.perf_counter()
    inputs = build_inputs(processor, clip, question, system_prompt=system_prompt).to(model.device)
    preprocessed = _synchronize(model)
    streamer = _FirstTokenClock(model)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
    finished = _synchronize(model)
    generated = output[0, inputs["input_ids"].shape[1] :].tolist()
    text = processor.batch_decode([generated], skip_special_tokens=True)[0]
    pruner = pruner_of(model)
    first_token = streamer.first_token_at or finished
    timings = {
        "load_video": loaded - started,
        "preprocess": preprocessed - loaded,
        "ttft": first_token - preprocessed,
        "decode": finished - first_token,
        "total": finished - started,
    }
    return Answer(
        text=text.strip(),
        token_ids=generated,
        stats=None if pruner is None else pruner.last_stats,
        timings=timings,
        num_frames=int(np.asarray(clip.frames).shape[0]),
    )


class _FirstTokenClock(BaseStreamer):
    """A generate() streamer that notes when the first new token exists (generate pushes the prompt first)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = _synchronize(self.model)

    def end(self) -> None:
        pass


def _synchronize(model: torch.nn.Module) -> float:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter()
