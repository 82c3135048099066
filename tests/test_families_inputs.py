"""Every supported family end to end around the pruner: tiny checkpoints, processor inputs, loading, dispatch.

Families: Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE (``family`` fixture, tests/conftest.py), on whichever
transformers is installed (CI: 4.57, 5.17, 5.24).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from conftest import family_clip, load_tiny_model
from safetensors.numpy import load_file

import prunevid
from prunevid.config import PruneVidConfig
from prunevid.pipeline import MODEL_CLASSES, SUPPORTED_MODEL_TYPES, ask, load, load_model
from prunevid.prompt import build_inputs, processor_family
from prunevid.synthetic import write_video
from prunevid.tiny import FAMILIES, SPECIAL_TOKENS, build_tiny_checkpoint, family_sizes

V5 = int(transformers.__version__.split(".")[0]) >= 5
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")
PROCESSORS = {
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
}
TIMESTAMP = re.compile(r"<(\d+\.\d) seconds>")


def _module_name(hub_name: str) -> str:
    """Where a hub parameter lives in the module tree (old Qwen2/2.5-VL layout -> module layout)."""
    if hub_name.startswith("visual."):
        return "model." + hub_name
    if hub_name.startswith("model.") and not hub_name.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + hub_name.removeprefix("model.")
    return hub_name


def _token_id(processor: Any, token: str) -> int:
    return processor.tokenizer.convert_tokens_to_ids(token)


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """``(start, end)`` of every run of True."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def test_checkpoint_loads_every_weight_bit_identical(family: str, tiny_family_checkpoint: Path) -> None:
    model_class = getattr(transformers, MODEL_CLASSES[family])
    model, info = model_class.from_pretrained(
        tiny_family_checkpoint, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == family
    stored = load_file(tiny_family_checkpoint / "model.safetensors")
    state = model.state_dict()
    assert {_module_name(n) for n in stored} == set(state)
    for name, array in stored.items():
        loaded = state[_module_name(name)].numpy()
        if ".experts." in name and V5:  # 5.x keeps fused experts as [E, out, in]: transposed on load
            array = np.swapaxes(array, 1, 2)
        assert np.array_equal(loaded, array), name
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_checkpoint_is_deterministic_and_small(family: str, tmp_path: Path) -> None:
    first = build_tiny_checkpoint(tmp_path / "a", family=family)
    second = build_tiny_checkpoint(tmp_path / "b", family=family)
    other_seed = build_tiny_checkpoint(tmp_path / "c", family=family, seed=1)
    for name in sorted(p.name for p in first.iterdir()):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    weights = "model.safetensors"
    assert (first / weights).read_bytes() != (other_seed / weights).read_bytes()
    assert (first / weights).stat().st_size < 4_000_000


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model family 'llava'.*qwen3_vl_moe"):
        build_tiny_checkpoint(tmp_path, family="llava")


def test_config_sizes_and_token_ids(family: str, tiny_family_models: dict[str, Any]) -> None:
    config = tiny_family_models["sdpa"].config
    text, vision = config.get_text_config(), config.vision_config
    token_ids = {t: text.vocab_size - len(SPECIAL_TOKENS) + i for i, t in enumerate(SPECIAL_TOKENS)}
    assert config.video_token_id == token_ids["<|video_pad|>"]
    assert config.image_token_id == token_ids["<|image_pad|>"]
    assert config.vision_start_token_id == token_ids["<|vision_start|>"]
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (64, 4, 2)
    rope = getattr(text, "rope_parameters", None) or text.rope_scaling
    expected_text, expected_vision = family_sizes(family)
    assert list(rope["mrope_section"]) == expected_text["mrope_section"]
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (
        expected_vision["patch_size"],
        2,
        2,
    )
    if family in QWEN3:
        assert text.head_dim == 16 and list(rope["mrope_section"]) == [4, 2, 2]
        assert text.num_hidden_layers == 6 and vision.depth == 3 and vision.patch_size == 16
        side = int(round(vision.num_position_embeddings**0.5))
        assert side * side == vision.num_position_embeddings
        levels = len(vision.deepstack_visual_indexes)
        assert levels == 2 and max(vision.deepstack_visual_indexes) < vision.depth
        # Stage 2/3 at layer M need M >= the number of DeepStack levels (spec: DeepStack).
        assert PruneVidConfig().resolve_pruning_layer(text.num_hidden_layers) >= levels
    if family == "qwen3_vl_moe":
        assert (text.num_experts, text.num_experts_per_tok, text.moe_intermediate_size) == (4, 2, 48)
        mlp = tiny_family_models["sdpa"].model.language_model.layers[0].mlp
        assert hasattr(mlp, "experts") and hasattr(mlp, "gate")
    if family == "qwen2_vl":
        assert vision.embed_dim == 32 and not hasattr(vision, "fullatt_block_indexes")


@pytest.mark.parametrize("family", QWEN3, indirect=True)
def test_qwen3_rotary_interleaves_t_h_w_as_published(tiny_family_models: dict[str, Any]) -> None:
    """head_dim 16 with mrope [4, 2, 2]: frequencies T H W T H W T T (published: THW x 20 then TTTT)."""
    rotary = tiny_family_models["sdpa"].model.language_model.rotary_emb
    x = torch.zeros(1, 1, 64)
    owner = {}
    for row, name in enumerate("THW"):
        positions = torch.zeros(3, 1, 1, dtype=torch.long)
        positions[row] = 7
        cos, sin = rotary(x, positions)
        assert cos.shape == sin.shape == (1, 1, 16)
        assert torch.equal(sin[0, 0, :8], sin[0, 0, 8:])
        for index in torch.nonzero(sin[0, 0, :8]).flatten().tolist():  # the frequencies this row drives
            owner[index] = name
    assert "".join(owner[i] for i in range(8)) == "THWTHWTT"


# ----------------------------------------------------------------------------------------------
# Processor inputs
# ----------------------------------------------------------------------------------------------


def test_processor_class_per_family(family: str, tiny_family_processor: Any) -> None:
    assert type(tiny_family_processor).__name__ == PROCESSORS[family]
    assert processor_family(tiny_family_processor) == ("qwen3_vl" if family in QWEN3 else family)
    video_processor = tiny_family_processor.video_processor
    expected = "Qwen3VLVideoProcessor" if family in QWEN3 else "Qwen2VLVideoProcessor"
    assert type(video_processor).__name__ == expected
    assert video_processor.patch_size == (16 if family in QWEN3 else 14)
    if family in QWEN3:  # published default: samples frames itself; budget over all frames: 768 of 448x448
        assert video_processor.do_sample_frames and video_processor.size["longest_edge"] == 768 * 448 * 448


def _check_video_layout(family: str, processor: Any, inputs: Any, clips: list[Any]) -> None:
    """Per sample: the expected video tokens, where they are, and Qwen3-VL's timestamps."""
    video_id = _token_id(processor, "<|video_pad|>")
    start_id = _token_id(processor, "<|vision_start|>")
    end_id = _token_id(processor, "<|vision_end|>")
    patch = 16 if family in QWEN3 else 14
    grids = inputs["video_grid_thw"].tolist()
    assert len(grids) == len(clips)
    rows = sum(t * h * w for t, h, w in grids)
    assert tuple(inputs["pixel_values_videos"].shape) == (rows, 3 * 2 * patch * patch)
    for b, ((t, h, w), clip) in enumerate(zip(grids, clips, strict=True)):
        frames, height, width = clip.frames.shape[:3]
        assert (t, h, w) == ((frames + 1) // 2, height // patch, width // patch)
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        runs = _runs([i == video_id for i in ids])
        assert sum(e - s for s, e in runs) == t * h * w // 4
        for s, e in runs:
            assert ids[s - 1] == start_id and ids[e] == end_id
        text = processor.tokenizer.decode(ids)
        if family in QWEN3:
            # T' frame groups of h'w' tokens, each after its timestamp: the mean source time of its 2 frames.
            assert [e - s for s, e in runs] == [h * w // 4] * t
            expected = _timestamps(clip)
            assert len(expected) == t and TIMESTAMP.findall(text) == expected
            groups = text.split("<|video_pad|>" * (h * w // 4))
            for k in range(t):
                assert groups[k].endswith(f"<{expected[k]} seconds><|vision_start|>")
        else:
            assert len(runs) == 1 and "seconds" not in text
    if V5:
        assert torch.equal(inputs["mm_token_type_ids"] == 2, inputs["input_ids"] == video_id)
    assert ("second_per_grid_ts" in inputs) == (family == "qwen2_5_vl")


def test_single_clip_batch_one(
    family: str, tiny_family_processor: Any, family_prompts: dict[str, Any]
) -> None:
    inputs = family_prompts["single"]
    clip = family_clip(family, 12, 4, 4, seed=1, scene_cut_at=6)
    assert inputs["input_ids"].shape[0] == 1 and bool(inputs["attention_mask"].all())
    _check_video_layout(family, tiny_family_processor, inputs, [clip])
    assert inputs["video_grid_thw"].tolist() == [[6, 8, 8]]  # 4 x 4 LLM tokens per frame pair


def test_padded_batch_two_clip_sizes(
    family: str, tiny_family_processor: Any, family_prompts: dict[str, Any]
) -> None:
    inputs = family_prompts["padded"]
    clips = [family_clip(family, 12, 4, 4, seed=1, scene_cut_at=6), family_clip(family, 8, 4, 5, seed=2)]
    mask = inputs["attention_mask"]
    assert mask.shape[0] == 2 and bool(mask[:, -1].all())
    short = int(mask.sum(dim=1).argmin())
    assert not bool(mask[short, 0]), "left padding expected"
    pad = _token_id(tiny_family_processor, "<|endoftext|>")
    assert bool((inputs["input_ids"][short][~mask[short].bool()] == pad).all())
    _check_video_layout(family, tiny_family_processor, inputs, clips)
    assert inputs["video_grid_thw"].tolist() == [[6, 8, 8], [4, 8, 10]]


def _timestamps(clip: Any) -> list[str]:
    """Qwen3-VL's timestamp of each frame pair: the mean source time of its two frames (last one repeated)."""
    indices = [int(i) for i in clip.frame_indices]
    indices += indices[-1:] * (len(indices) % 2)
    return [f"{(indices[k] + indices[k + 1]) / 2 / clip.source_fps:.1f}" for k in range(0, len(indices), 2)]


def test_two_videos_in_one_prompt(
    family: str, tiny_family_processor: Any, family_prompts: dict[str, Any]
) -> None:
    inputs = family_prompts["two_videos"]
    clips = [family_clip(family, 12, 4, 4, seed=1, scene_cut_at=6), family_clip(family, 8, 4, 5, seed=2)]
    assert inputs["video_grid_thw"].tolist() == [[6, 8, 8], [4, 8, 10]]
    ids = inputs["input_ids"][0].tolist()
    runs = _runs([i == _token_id(tiny_family_processor, "<|video_pad|>") for i in ids])
    text = tiny_family_processor.tokenizer.decode(ids)
    if family in QWEN3:
        assert [e - s for s, e in runs] == [16] * 6 + [20] * 4
        assert TIMESTAMP.findall(text) == _timestamps(clips[0]) + _timestamps(clips[1])
    else:
        assert [e - s for s, e in runs] == [96, 80] and "seconds" not in text
    question = tiny_family_processor.tokenizer.decode(ids[runs[-1][1] :])
    assert "Which video is longer?" in question  # the question after both videos


def test_an_image_then_a_video(
    family: str, tiny_family_processor: Any, family_prompts: dict[str, Any]
) -> None:
    inputs = family_prompts["image_video"]
    image_id = _token_id(tiny_family_processor, "<|image_pad|>")
    video_id = _token_id(tiny_family_processor, "<|video_pad|>")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]] and inputs["video_grid_thw"].tolist() == [
        [6, 8, 8]
    ]
    ids = inputs["input_ids"][0]
    image_rows = torch.nonzero(ids == image_id).flatten()
    video_rows = torch.nonzero(ids == video_id).flatten()
    assert len(image_rows) == 6 and len(video_rows) == 96 and image_rows.max() < video_rows.min()
    if V5:
        types = inputs["mm_token_type_ids"][0]
        assert torch.equal(types == 1, ids == image_id) and torch.equal(types == 2, ids == video_id)


@pytest.mark.parametrize("family", QWEN3, indirect=True)
@pytest.mark.parametrize(
    ("indices", "fps", "expected"),
    [
        ([0, 6, 12, 18, 24, 30], 10.0, ["0.3", "1.5", "2.7"]),  # every 6th frame of a 10 fps video
        ([30, 90, 150, 210, 270], 30.0, ["2.0", "6.0", "9.0"]),  # odd count: the last frame is repeated
    ],
)
def test_qwen3_timestamps_follow_the_source_time_line(
    tiny_family_processor: Any, indices: list[int], fps: float, expected: list[str]
) -> None:
    frames = family_clip("qwen3_vl", len(indices), 2, 3).frames
    clip = prunevid.VideoClip(frames, fps, 400, np.asarray(indices, dtype=np.int64))
    inputs = build_inputs(tiny_family_processor, clip, "When does it move?")
    text = tiny_family_processor.tokenizer.decode(inputs["input_ids"][0])
    assert TIMESTAMP.findall(text) == expected
    assert inputs["video_grid_thw"].tolist() == [[len(expected), 4, 6]]


def test_frames_are_not_resampled_or_resized(family: str, tiny_family_processor: Any) -> None:
    """32 frames stay 32 (a sampling Qwen3-VL processor without metadata would keep 4 of them)."""
    clip = family_clip(family, 32, 2, 2, source_fps=30.0)
    inputs = build_inputs(tiny_family_processor, clip, "What happens?")
    assert inputs["video_grid_thw"].tolist() == [[16, 4, 4]]


def test_an_unsupported_processor_is_named(tiny_processor: Any) -> None:
    clip = family_clip("qwen2_5_vl", 4, 2, 2)
    with pytest.raises(ValueError, match="unsupported processor .*Qwen3VLProcessor"):
        build_inputs(tiny_processor.tokenizer, clip, "What happens?")


def test_stock_forward_and_generate_on_the_inputs(
    family: str, tiny_family_models: dict[str, Any], family_prompts: dict[str, Any]
) -> None:
    model = tiny_family_models["sdpa"]
    for name, inputs in family_prompts.items():
        with torch.inference_mode():
            logits = model(**inputs).logits
            output = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert logits.shape[:2] == inputs["input_ids"].shape and bool(torch.isfinite(logits).all()), name
        assert output.shape == (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + 2), name


# ----------------------------------------------------------------------------------------------
# Loading and dispatch
# ----------------------------------------------------------------------------------------------


def test_load_model_dispatches_on_model_type(family: str, tiny_family_checkpoint: Path) -> None:
    model, processor = load_model(tiny_family_checkpoint, dtype=torch.float32)
    assert type(model).__name__ == MODEL_CLASSES[family]
    assert type(processor).__name__ == PROCESSORS[family]
    assert not model.training and model.config._attn_implementation == "sdpa"


def test_supported_model_types_are_the_tiny_families() -> None:
    assert set(SUPPORTED_MODEL_TYPES) == set(FAMILIES) == set(MODEL_CLASSES)
    for class_name in MODEL_CLASSES.values():
        assert hasattr(transformers, class_name)


@pytest.mark.parametrize("model_type", ["bert", "qwen3_5", "llava"])
def test_an_unsupported_model_type_names_the_supported_ones(tmp_path: Path, model_type: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if model_type == "qwen3_5" and not V5:
        pytest.skip("transformers 4.57 has no qwen3_5 config")
    pattern = f"'{model_type}' model; prunevid supports .*qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_vl_moe"
    with pytest.raises(ValueError, match=pattern):
        load_model(tmp_path)
    with pytest.raises(ValueError, match=pattern):
        load(tmp_path)


def test_ask_without_a_pruner(family: str, tiny_family_checkpoint: Path, tmp_path: Path) -> None:
    """ask() on every family from a video file: decoded, prompted with timings, answered."""
    model = load_tiny_model(tiny_family_checkpoint, "sdpa")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_family_checkpoint)
    unit = 32 if family in QWEN3 else 28
    video = write_video(family_clip(family, 8, 2, 2).frames, tmp_path / "clip.mp4", fps=4.0)
    answer = ask(
        model, processor, video, "What moves?", num_frames=8, max_pixels=(2 * unit) ** 2, max_new_tokens=2
    )
    assert 1 <= len(answer.token_ids) <= 2 and answer.stats is None and answer.num_frames == 8


def test_load_attaches_the_pruner(
    family: str, tiny_family_checkpoint: Path, family_prompts: dict[str, Any]
) -> None:
    model, processor, pruner = load(tiny_family_checkpoint, dtype=torch.float32)
    try:
        inputs = family_prompts["single"]
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        stats = pruner.last_stats
        assert stats.video_tokens_in == 6 * 4 * 4
        assert stats.video_tokens_after_stage2 < stats.video_tokens_in
    finally:
        pruner.detach()


def test_cli_ask_on_a_family_checkpoint(
    family: str,
    tiny_family_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from prunevid.cli import main

    video = write_video(family_clip(family, 8, 2, 2).frames, tmp_path / "clip.mp4", fps=4.0)
    argv = ["ask", str(video), "What moves?", "--model", str(tiny_family_checkpoint), "--preset", "paper"]
    assert main([*argv, "--frames", "8", "--max-new-tokens", "2", "--json", "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["preset"] == "paper" and record["stats"]["video_tokens_in"] > 0


@pytest.mark.parametrize("family", ["qwen3_vl"], indirect=True)
def test_cli_eval_on_a_family_checkpoint(tiny_family_checkpoint: Path, tmp_path: Path) -> None:
    """prunevid eval loads the family by model_type and answers under baseline and paper without errors."""
    from prunevid.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "synthetic", "--model", str(tiny_family_checkpoint), "--data", str(tmp_path / "data")]
    argv += ["--limit", "1", "--presets", "baseline,paper", "--frames", "4", "--max-pixels", str(64 * 64)]
    assert main([*argv, "--max-new-tokens", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_preset = {row["preset"]: row for row in rows}
    assert sorted(by_preset) == ["baseline", "paper"] and all(row["error"] is None for row in rows)
    baseline, paper = by_preset["baseline"], by_preset["paper"]
    assert baseline["tokens_after_stage2"] == baseline["tokens_in"] == paper["tokens_in"] > 0
    assert paper["tokens_after_stage2"] < paper["tokens_in"]
