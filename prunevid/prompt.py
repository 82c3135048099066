"""Frames + question -> processor outputs of a Qwen VL family, the same on transformers 4.57 and 5.x.

The one place that knows how each family's and version's processor wants the video timing.

Qwen2.5-VL places video tokens in time with ``second_per_grid_ts`` (seconds covered by one temporal patch of
2 frames), which the processor derives from a frame rate it is given:

- 4.57 reads ``fps=[...]`` (one per video; 2.0 if missing);
- 5.x ignores ``fps`` for this and reads ``video_metadata[i].sampled_fps``, defined as
  ``len(frames_indices) / total_num_frames * fps``; without metadata it assumes 24 fps.

That 5.x formula equals the true spacing of the sampled frames only when they are spread evenly over the
whole source video, so the metadata passed here describes the clip on its own time line (T frames at
``clip.sampled_fps``): ``second_per_grid_ts == 2 / clip.sampled_fps`` on every version.

Qwen2-VL has no ``second_per_grid_ts`` (one M-RoPE time step per frame pair whatever the fps); it gets the
same arguments, which its processor does not use for positions.

Qwen3-VL (and Qwen3-VL-MoE, same processor) writes a timestamp text ``<t seconds>`` before each frame pair,
computed from ``video_metadata`` (source ``fps`` and the sampled ``frames_indices``: the mean time of the two
frames). Every version reads it, so the metadata here is the clip's real source time line
(:attr:`VideoClip.metadata`) and ``do_sample_frames=False`` keeps the processor from sampling the frames
again (without metadata it would assume 24 fps and re-sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import transformers
from transformers import BatchFeature

from prunevid.video import VideoClip

__all__ = ["PROCESSOR_FAMILIES", "build_inputs", "build_messages", "processor_family", "video_kwargs"]

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


# Processor class -> the family whose timing rules it follows (Qwen3-VL-MoE checkpoints use Qwen3VLProcessor).
PROCESSOR_FAMILIES = {
    "Qwen2_5_VLProcessor": "qwen2_5_vl",
    "Qwen2VLProcessor": "qwen2_vl",
    "Qwen3VLProcessor": "qwen3_vl",
}


def processor_family(processor: Any) -> str:
    """``"qwen2_5_vl"``, ``"qwen2_vl"`` or ``"qwen3_vl"``: the processor's class (or nearest base class).

    Raises:
        ValueError: not a Qwen2-VL, Qwen2.5-VL or Qwen3-VL processor.
    """
    for cls in type(processor).__mro__:
        if cls.__name__ in PROCESSOR_FAMILIES:
            return PROCESSOR_FAMILIES[cls.__name__]
    raise ValueError(
        f"unsupported processor {type(processor).__name__}: prunevid builds inputs for "
        f"{', '.join(PROCESSOR_FAMILIES)} (load it with AutoProcessor.from_pretrained on a Qwen2-VL, "
        "Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE checkpoint)"
    )


def video_kwargs(processor: Any, clips: Sequence[VideoClip]) -> dict[str, Any]:
    """Keyword arguments for ``processor(text=..., videos=[c.frames for c in clips], ...)``.

    The frames are used as given (``do_sample_frames=False``), with the timing each family needs (see the
    module docstring): ``video_metadata`` (5.x, or Qwen3-VL on every version) or ``fps`` (Qwen2/2.5-VL on
    4.57), one entry per clip.
    """
    family = processor_family(processor)
    kwargs: dict[str, Any] = {"do_sample_frames": False}
    if hasattr(processor.video_processor, "cap_pixels_per_frame"):
        # 5.x versions with this option (5.17 .. 5.24 at least) warn unless told. The cap would shrink the
        # frames of long clips; the frames here are already sampled and sized by the caller.
        kwargs["cap_pixels_per_frame"] = False
    if family == "qwen3_vl":
        kwargs["video_metadata"] = [c.metadata for c in clips]
    elif _TRANSFORMERS_MAJOR >= 5:
        kwargs["video_metadata"] = [_clip_timeline_metadata(c) for c in clips]
    else:
        kwargs["fps"] = [float(c.sampled_fps) for c in clips]
    return kwargs


def build_messages(question: str, *, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """One conversation: an optional system message, then a user turn with the video and the question."""
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
    return messages


def _as_list(value: Any, kind: type) -> list:
    if isinstance(value, kind):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"expected a {kind.__name__} or a sequence of them, got {type(value).__name__}")
    return list(value)


def _check_clip(clip: VideoClip, index: int) -> None:
    if not isinstance(clip, VideoClip):
        raise TypeError(f"clip {index}: expected a VideoClip, got {type(clip).__name__}")
    frames = clip.frames
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"clip {index}: frames must be a numpy array [T, H, W, 3], got shape {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"clip {index}: frames must be uint8 RGB, got {frames.dtype}")
    if frames.shape[0] < 2:
        raise ValueError(
            f"clip {index}: needs at least 2 frames (Qwen VL models pair frames), got {frames.shape[0]}"
        )
    if len(clip.frame_indices) != frames.shape[0]:
        raise ValueError(
            f"clip {index}: {len(clip.frame_indices)} frame indices for {frames.shape[0]} frames"
        )
    if not clip.sampled_fps > 0:
        raise ValueError(f"clip {index}: sampled fps must be > 0, got {clip.sampled_fps}")


def _clip_timeline_metadata(clip: VideoClip) -> dict[str, Any]:
    """5.x ``video_metadata`` whose ``sampled_fps`` is exactly ``clip.sampled_fps`` (see module docstring)."""
    num_frames = int(clip.frames.shape[0])
    return {
        "fps": float(clip.sampled_fps),
        "total_num_frames": num_frames,
        "frames_indices": list(range(num_frames)),
    }


def build_inputs(
    processor: Any,
    clips: VideoClip | Sequence[VideoClip],
    questions: str | Sequence[str],
    *,
    system_prompt: str | None = None,
    return_tensors: str | None = "pt",
) -> BatchFeature:
    """Tokenize one conversation per (clip, question) and preprocess the frames, as a batch.

    Each conversation is the chat template applied to :func:`build_messages` with the generation prompt
    (``<|im_start|>assistant\n``) appended. Frames are used as given (no re-sampling by the processor);
    frames whose sides are multiples of 28 (Qwen2/2.5-VL) or 32 (Qwen3-VL) within the processor's pixel
    budget are not resized either. A single clip or a single question is paired with every item of the
    other argument.

    Args:
        processor: the processor of a Qwen2.5-VL, Qwen2-VL, Qwen3-VL or Qwen3-VL-MoE checkpoint
            (``AutoProcessor.from_pretrained(...)``).
        clips: one or B clips; frames ``uint8 [T_b, H_b, W_b, 3]`` with ``T_b >= 2``.
        questions: one or B non-empty questions.
        system_prompt: optional system message; None uses the template's default system message.
        return_tensors: passed to the processor ("pt", "np" or None).

    Returns:
        The processor's ``BatchFeature``, padded on the left: ``input_ids`` / ``attention_mask`` ``[B, L]``;
        ``video_grid_thw`` ``int64 [B, 3]`` = (t, h, w) in patches (t = ceil(T/2), h = H/p, w = W/p with
        patch p = 14, or 16 for Qwen3-VL); ``pixel_values_videos`` ``[sum_b t_b*h_b*w_b, 3*2*p*p]``; on 5.x
        also ``mm_token_type_ids`` ``[B, L]`` (0 text, 2 video). Each video fills ``t*h*w // 4``
        ``<|video_pad|>`` tokens: Qwen2/2.5-VL in one ``<|vision_start|>...<|vision_end|>`` span; Qwen3-VL in
        t frame groups of ``h*w // 4``, each after its timestamp text ``<s.s seconds>`` (the mean source
        time of its two frames) and inside its own ``<|vision_start|>...<|vision_end|>``. Qwen2.5-VL only:
        ``second_per_grid_ts`` ``[B]`` equal to ``2 / clip.sampled_fps``.

    Raises:
        ValueError: an unsupported processor, an empty question, a clip with fewer than 2 frames or frames
            that are not ``uint8 [T, H, W, 3]``, or clip and question counts that do not pair.
    """
    processor_family(processor)  # an unsupported processor fails before any work
    clip_list = _as_list(clips, VideoClip)
    question_list = _as_list(questions, str)
    if not clip_list or not question_list:
        raise ValueError("need at least one clip and one question")
    if len(clip_list) == 1 and len(question_list) > 1:
        clip_list = clip_list * len(question_list)
    elif len(question_list) == 1 and len(clip_list) > 1:
        question_list = question_list * len(clip_list)
    if len(clip_list) != len(question_list):
        raise ValueError(f"{len(clip_list)} clips for {len(question_list)} questions")
    for i, question in enumerate(question_list):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question {i} is empty: PruneVid selects video tokens by the question")
    for i, clip in enumerate(clip_list):
        _check_clip(clip, i)

    texts = [
        processor.apply_chat_template(
            build_messages(q, system_prompt=system_prompt), add_generation_prompt=True, tokenize=False
        )
        for q in question_list
    ]
    kwargs = video_kwargs(processor, clip_list)

    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last column of every row
    try:
        return processor(
            text=texts,
            videos=[c.frames for c in clip_list],
            padding=True,
            return_tensors=return_tensors,
            **kwargs,
        )
    finally:
        tokenizer.padding_side = padding_side
