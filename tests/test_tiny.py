"""The tiny checkpoint, the synthetic clips and build_inputs, on whichever transformers is installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from prunevid.prompt import build_inputs
from prunevid.synthetic import make_clip, write_video
from prunevid.tiny import (
    SPECIAL_TOKENS,
    build_tiny_checkpoint,
)
from prunevid.video import VideoClip

V5 = int(transformers.__version__.split(".")[0]) >= 5
QUESTION = "What happens in the video?"


def _video_token_id(processor: Any) -> int:
    return processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")


def _module_name(hub_name: str) -> str:
    """Where a hub parameter lives in the module tree (4.57 and 5.x agree)."""
    if hub_name.startswith("visual."):
        return "model." + hub_name
    if hub_name.startswith("model."):
        return "model.language_model." + hub_name.removeprefix("model.")
    return hub_name


# ----------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------


def test_weights_load_bit_identical_under_hub_names(tiny_checkpoint: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_checkpoint, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    stored = load_file(tiny_checkpoint / "model.safetensors")
    state = model.state_dict()
    assert {_module_name(n) for n in stored} == set(state)
    for name, array in stored.items():
        assert np.array_equal(state[_module_name(name)].numpy(), array), name
    assert model.config._attn_implementation == "sdpa"


def test_config_matches_tokenizer_and_sizes(tiny_model: Any, tiny_processor: Any) -> None:
    config, tokenizer = tiny_model.config, tiny_processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS))), "special ids not contiguous"
    assert ids[-1] == len(tokenizer) - 1
    assert config.video_token_id == ids[SPECIAL_TOKENS.index("<|video_pad|>")]
    assert config.image_token_id == ids[SPECIAL_TOKENS.index("<|image_pad|>")]
    assert config.vision_start_token_id == ids[SPECIAL_TOKENS.index("<|vision_start|>")]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text, vision = config.text_config, config.vision_config
    assert text.vocab_size == len(tokenizer)
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (64, 4, 2)
    rope = getattr(text, "rope_parameters", None) or text.rope_scaling
    assert list(rope["mrope_section"]) == [2, 3, 3]
    assert list(vision.fullatt_block_indexes) == [1] and vision.depth == 2
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert vision.tokens_per_second == 2 and vision.out_hidden_size == 64
    assert not config.tie_word_embeddings
    assert tiny_model.lm_head.weight.data_ptr() != tiny_model.get_input_embeddings().weight.data_ptr()


def test_build_is_deterministic(tmp_path: Path, tiny_checkpoint: Path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again")
    other = build_tiny_checkpoint(tmp_path / "other", seed=1)
    names = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (tiny_checkpoint / name).read_bytes() == (again / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_chat_template(tiny_processor: Any) -> None:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    text = tiny_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generate(tiny_model: Any, tiny_processor: Any, make_video_clip: Callable[..., VideoClip]) -> None:
    inputs = build_inputs(tiny_processor, make_video_clip(), QUESTION)
    with torch.inference_mode():
        out = tiny_model.generate(**inputs, max_new_tokens=3, do_sample=False)
        again = tiny_model.generate(**inputs, max_new_tokens=3, do_sample=False)
    length = inputs["input_ids"].shape[1]
    assert length < out.shape[1] <= length + 3
    assert torch.equal(out[:, :length], inputs["input_ids"]) and torch.equal(out, again)
    assert isinstance(tiny_processor.batch_decode(out[:, length:], skip_special_tokens=True)[0], str)


# ----------------------------------------------------------------------------------------------
# build_inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_frames", "height", "width"), [(2, 56, 56), (5, 56, 448), (2, 448, 448)])
def test_video_tokens_and_no_resize(
    tiny_processor: Any, make_video_clip: Callable[..., VideoClip], num_frames: int, height: int, width: int
) -> None:
    inputs = build_inputs(tiny_processor, make_video_clip(num_frames, height, width), QUESTION)
    grid = inputs["video_grid_thw"]
    assert grid.tolist() == [[(num_frames + 1) // 2, height // 14, width // 14]]
    assert inputs["pixel_values_videos"].shape == (int(grid.prod()), 3 * 2 * 14 * 14)
    assert int((inputs["input_ids"] == _video_token_id(tiny_processor)).sum()) == int(grid.prod()) // 4


def test_second_per_grid_ts(tiny_processor: Any) -> None:
    # 2 fps from a 10 fps source, evenly over the whole video, then an uneven sub-range (where the 5.x
    # processor's own len(indices) / total * fps would be wrong if given the source metadata).
    frames = make_clip(8, 56, 56)
    even = VideoClip(frames, 10.0, 40, np.arange(0, 40, 5))
    uneven = VideoClip(frames, 10.0, 300, np.round(np.linspace(0, 99, 8)).astype(np.int64))
    assert even.sampled_fps == 2.0
    inputs = build_inputs(tiny_processor, [even, uneven], QUESTION)
    expected = torch.tensor([2 / even.sampled_fps, 2 / uneven.sampled_fps], dtype=torch.float32)
    assert torch.equal(inputs["second_per_grid_ts"].to(torch.float32), expected)


def test_batch_is_left_padded(tiny_model: Any, tiny_processor: Any) -> None:
    short = VideoClip(make_clip(4, 56, 56, seed=1), 4.0, 4, np.arange(4))
    long = VideoClip(make_clip(6, 112, 84, seed=2), 4.0, 6, np.arange(6))
    questions = ["Is it red?", "What happens in the video, from the start to the end?"]
    tokenizer = tiny_processor.tokenizer
    side = tokenizer.padding_side
    batch = build_inputs(tiny_processor, [short, long], questions)
    assert tokenizer.padding_side == side
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0] and mask[1].all()
    pad = int((mask[0] == 0).sum())
    assert (ids[0, :pad] == tokenizer.pad_token_id).all() and mask[0, pad:].all()
    # batch == per sample: every row is the single-sample encoding with padding in front
    for row, (clip, question) in enumerate(zip([short, long], questions, strict=True)):
        single = build_inputs(tiny_processor, clip, question)
        length = single["input_ids"].shape[1]
        assert torch.equal(ids[row, -length:], single["input_ids"][0])
        assert int(mask[row].sum()) == length
        assert torch.equal(batch["video_grid_thw"][row], single["video_grid_thw"][0])
    with torch.inference_mode():
        out = tiny_model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 2


def test_single_clip_or_question_is_broadcast(
    tiny_processor: Any, make_video_clip: Callable[..., VideoClip]
) -> None:
    clip = make_video_clip()
    batch = build_inputs(tiny_processor, clip, ["Is it red?", "Is it blue?"])
    assert batch["input_ids"].shape[0] == 2 and batch["video_grid_thw"].shape[0] == 2
    with pytest.raises(ValueError, match="clips for"):
        build_inputs(tiny_processor, [clip, clip], ["a", "b", "c"])


def test_invalid_inputs_raise(tiny_processor: Any, make_video_clip: Callable[..., VideoClip]) -> None:
    clip = make_video_clip()
    for question in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            build_inputs(tiny_processor, clip, question)
    with pytest.raises(ValueError, match="at least 2 frames"):
        build_inputs(tiny_processor, make_video_clip(num_frames=1), QUESTION)
    with pytest.raises(ValueError, match="uint8"):
        build_inputs(
            tiny_processor, VideoClip(clip.frames.astype(np.float32), 4.0, 8, np.arange(8)), QUESTION
        )


@pytest.mark.skipif(not V5, reason="transformers 4.x does not use mm_token_type_ids")
def test_mm_token_type_ids(tiny_processor: Any, make_video_clip: Callable[..., VideoClip]) -> None:
    inputs = build_inputs(tiny_processor, make_video_clip(), QUESTION)
    types = inputs["mm_token_type_ids"]
    assert types.shape == inputs["input_ids"].shape
    assert torch.equal(types == 2, inputs["input_ids"] == _video_token_id(tiny_processor))
    assert set(types.unique().tolist()) == {0, 2}


# ----------------------------------------------------------------------------------------------
# Synthetic clips
# ----------------------------------------------------------------------------------------------


def test_make_clip_structure() -> None:
    clip = make_clip(12, 64, 80, seed=3, num_objects=3, scene_cut_at=8)
    assert clip.shape == (12, 64, 80, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, make_clip(12, 64, 80, seed=3, num_objects=3, scene_cut_at=8))
    assert not np.array_equal(clip, make_clip(12, 64, 80, seed=4, num_objects=3, scene_cut_at=8))
    same = (clip[1:] == clip[:-1]).all(-1).mean(axis=(1, 2))  # fraction of unchanged pixels per step
    assert (same[:7] > 0.8).all() and (same[:7] < 1.0).all(), "mostly static, something moves"
    assert same[7] < 0.2, "the scene cut changes nearly every pixel"
    background_only = make_clip(4, 32, 32, num_objects=0)
    assert (background_only == background_only[0]).all() and background_only.std() > 10


def test_write_video_round_trip(tmp_path: Path) -> None:
    import av
    import cv2

    frames = make_clip(10, 64, 96, seed=5)
    path = write_video(frames, tmp_path / "clip.mp4", fps=8.0)
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(frame[..., ::-1])
    cap.release()
    assert len(decoded) == len(frames)
    assert np.abs(np.stack(decoded).astype(int) - frames).mean() < 8  # lossy codec, close
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(frames)
