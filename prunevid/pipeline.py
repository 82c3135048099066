"""Video -> answer: load a real checkpoint, decode a video, prompt with the chat template, generate."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from prunevid.config import PruneVidConfig
from prunevid.stats import PruneStats
from prunevid.video import DEFAULT_MAX_PIXELS, MAX_FRAMES, VideoClip, load_video

if TYPE_CHECKING:  # torch and transformers load when a function needs them (`prunevid --help` stays fast)
    import torch

    from prunevid.qwen2_5_vl import Pruner

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MODEL",
    "MODEL_CLASSES",
    "SUPPORTED_MODEL_TYPES",
    "Answer",
    "ask",
    "check_model_source",
    "load",
    "load_model",
]

# config.model_type -> the transformers class that loads it (its processor comes from AutoProcessor).
MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}
SUPPORTED_MODEL_TYPES = tuple(MODEL_CLASSES)
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# A hub id: "name" or "owner/name", letters, digits, "-", "_" and "." (not at the start).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


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
        notes: what a frame cap changed (see :class:`~prunevid.video.VideoClip`), empty if nothing.
    """

    text: str
    token_ids: list[int]
    stats: PruneStats | None
    timings: dict[str, float] = field(default_factory=dict)
    num_frames: int = 0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "num_frames": self.num_frames,
            "notes": list(self.notes),
            "timings": self.timings,
            "stats": None if self.stats is None else self.stats.to_dict(),
        }


def check_model_source(model_id_or_path: str | os.PathLike) -> None:
    """Fail fast, before anything loads, on a model that is neither a local checkpoint folder nor a hub id.

    Raises:
        FileNotFoundError: a path that does not exist and cannot be a hub id ("no such model folder, and
            not a hub id"), or a folder without ``config.json``.
    """
    text = os.fspath(model_id_or_path)
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "config.json")):
            raise FileNotFoundError(f"{text!r} is a folder but not a model checkpoint (no config.json in it)")
        return
    if os.path.exists(text):
        raise FileNotFoundError(f"{text!r} is a file; the model must be a checkpoint folder or a hub id")
    looks_like_a_path = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
    if looks_like_a_path or not _HUB_ID.fullmatch(text):
        raise FileNotFoundError(
            f"no such model folder, and not a hub id: {text!r} "
            "(a hub id looks like 'Qwen/Qwen2.5-VL-7B-Instruct')"
        )


def load_model(
    model_id_or_path: str | os.PathLike = DEFAULT_MODEL, **from_pretrained_kwargs: Any
) -> tuple[torch.nn.Module, Any]:
    """Load a supported checkpoint and its processor with the real ``from_pretrained``; no pruner.

    The class comes from the checkpoint's ``config.model_type`` (:data:`MODEL_CLASSES`: Qwen2.5-VL,
    Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE), the processor from ``AutoProcessor``.

    Args:
        model_id_or_path: a hub id (downloaded by transformers as usual) or a local checkpoint directory.
        **from_pretrained_kwargs: passed to ``from_pretrained`` (``device_map``, ``attn_implementation``...);
            ``dtype`` defaults to ``"auto"`` (the checkpoint's, bf16 for the released models) and
            ``attn_implementation`` to ``"sdpa"``.

    Returns:
        ``(model, processor)``; the model is in eval mode.

    Raises:
        FileNotFoundError: no such model folder, and not a hub id (see :func:`check_model_source`).
        ValueError: the checkpoint's model type is not supported (the message names the supported ones).
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor

    check_model_source(model_id_or_path)
    model_config = AutoConfig.from_pretrained(model_id_or_path)
    model_type = getattr(model_config, "model_type", None)
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{os.fspath(model_id_or_path)} is a {model_type!r} model; prunevid supports the model types "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE checkpoints)"
        )
    model_class = getattr(transformers, MODEL_CLASSES[model_type], None)
    if model_class is None:
        raise ImportError(
            f"{model_id_or_path} is a {model_type!r} model, which transformers {transformers.__version__} "
            f"does not have ({MODEL_CLASSES[model_type]}): upgrade transformers (4.57 or newer)"
        )
    from_pretrained_kwargs.setdefault("dtype", "auto")
    from_pretrained_kwargs.setdefault("attn_implementation", "sdpa")
    model = model_class.from_pretrained(model_id_or_path, **from_pretrained_kwargs)
    model.eval()
    processor = AutoProcessor.from_pretrained(model_id_or_path)
    return model, processor


def load(
    model_id_or_path: str | os.PathLike = DEFAULT_MODEL,
    config: PruneVidConfig | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[torch.nn.Module, Any, Pruner]:
    """Load a supported checkpoint and its processor (:func:`load_model`), and attach PruneVid.

    Args:
        model_id_or_path: a hub id (downloaded by transformers as usual) or a local checkpoint directory of
            a Qwen2.5-VL, Qwen2-VL, Qwen3-VL or Qwen3-VL-MoE model.
        config: what to prune; default the ``paper`` preset.
        **from_pretrained_kwargs: passed to ``from_pretrained`` (``device_map``, ``attn_implementation``...);
            ``dtype`` defaults to ``"auto"`` (the checkpoint's, bf16 for the released models) and
            ``attn_implementation`` to ``"sdpa"``.

    Returns:
        ``(model, processor, pruner)``; the model is in eval mode.

    Raises:
        FileNotFoundError: no such model folder, and not a hub id (see :func:`check_model_source`).
        ValueError: the checkpoint is not a supported model type.
    """
    import prunevid

    model, processor = load_model(model_id_or_path, **from_pretrained_kwargs)
    pruner = prunevid.attach(model, config)
    return model, processor, pruner


def ask(
    model: torch.nn.Module,
    processor: Any,
    video: str | os.PathLike | VideoClip,
    question: str,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int = MAX_FRAMES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_new_tokens: int = 128,
    system_prompt: str | None = None,
) -> Answer:
    """Answer ``question`` about ``video`` with greedy decoding.

    Args:
        model: a supported model (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE), with or without a pruner
            attached (:func:`attach` / :func:`load`).
        processor: its processor.
        video: a video file (decoded with OpenCV or PyAV) or an already sampled :class:`VideoClip`.
        question: the question, asked after the video in one user turn.
        fps / num_frames: frame sampling (at most one; default 2 fps), for a file.
        max_frames: at most this many frames (default 768), for a file.
        max_pixels: pixel budget per frame (sides rounded to multiples of 28), for a file.
        max_new_tokens: generation limit.
        system_prompt: optional system message before the user turn.

    Returns:
        An :class:`Answer` with the text, the pruning statistics and timings.
    """
    import torch

    from prunevid.prompt import build_inputs
    from prunevid.qwen2_5_vl import pruner_of

    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string: PruneVid selects tokens by the question")
    started = time.perf_counter()
    if isinstance(video, VideoClip):
        clip = video
    else:
        clip = load_video(video, fps=fps, num_frames=num_frames, max_frames=max_frames, max_pixels=max_pixels)
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
        notes=tuple(getattr(clip, "notes", ())),
    )


class _FirstTokenClock:
    """A generate() streamer (``put``/``end``, as transformers' ``BaseStreamer``) that notes when the first
    new token exists (generate pushes the prompt first)."""

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
        import torch

        torch.cuda.synchronize(model.device)
    return time.perf_counter()
