"""Frames + question -> Qwen2.5-VL processor outputs, the same on transformers 4.57 and 5.x.

The one place that knows how each version's processor wants the video timing. Qwen2.5-VL places video
tokens in time with ``second_per_grid_ts`` (seconds covered by one temporal patch of 2 frames), which the
processor derives from a frame rate it is given:

- 4.57 reads ``fps=[...]`` (one per video; 2.0 if missing);
- 5.x ignores ``fps`` for this and reads ``video_metadata[i].sampled_fps``, defined as
  ``len(frames_indices) / total_num_frames * fps``; without metadata it assumes 24 fps.

That 5.x formula equals the true spacing of the sampled frames only when they are spread evenly over the
whole source video, so the metadata passed here describes the clip on its own time line (T frames at
``clip.sampled_fps``): ``second_per_grid_ts == 2 / clip.sampled_fps`` on every version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import transformers
from transformers import BatchFeature

from prunevid.video import VideoClip

__all__ = ["build_inputs", "build_messages"]

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


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
            f"clip {index}: needs at least 2 frames (Qwen2.5-VL pairs frames), got {frames.shape[0]}"
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
    (``<|im_start|>assistant\\n``) appended. Frames are used as given (no re-sampling by the processor);
    frames whose sides are multiples of 28 within the processor's pixel budget are not resized either.
    A single clip or a single question is paired with every item of the other argument.

    Args:
        processor: a Qwen2.5-VL processor (``AutoProcessor.from_pretrained(...)``).
        clips: one or B clips; frames ``uint8 [T_b, H_b, W_b, 3]`` with ``T_b >= 2``.
        questions: one or B non-empty questions.
        system_prompt: optional system message; None uses the template's default system message.
        return_tensors: passed to the processor ("pt", "np" or None).

    Returns:
        The processor's ``BatchFeature``, padded on the left:
        ``input_ids`` / ``attention_mask`` ``[B, L]``; ``pixel_values_videos`` ``[sum_b t_b*h_b*w_b, 1176]``;
        ``video_grid_thw`` ``int64 [B, 3]`` (t = ceil(T/2), h = H/14, w = W/14), each video filling
        ``t*h*w // 4`` ``<|video_pad|>`` tokens; ``second_per_grid_ts`` ``[B]`` equal to
        ``2 / clip.sampled_fps``; on 5.x also ``mm_token_type_ids`` ``[B, L]`` (0 text, 2 video).
    """
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
    kwargs: dict[str, Any] = {"do_sample_frames": False}
    if hasattr(processor.video_processor, "cap_pixels_per_frame"):
        # 5.x versions with this option (5.17 .. 5.24 at least) warn unless told. The cap would shrink the
        # frames of long clips; the frames here are already sampled and sized by the caller.
        kwargs["cap_pixels_per_frame"] = False
    if _TRANSFORMERS_MAJOR >= 5:
        kwargs["video_metadata"] = [_clip_timeline_metadata(c) for c in clip_list]
    else:
        kwargs["fps"] = [float(c.sampled_fps) for c in clip_list]

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
