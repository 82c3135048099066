"""load() / ask() / the CLI on a real local checkpoint and real video files; bad input gets clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from prunevid import PruneVidConfig, ask, attach, load
from prunevid.cli import main
from prunevid.qwen2_5_vl import pruner_of
from prunevid.synthetic import make_clip, write_video

# Every test here starts and ends with the shared tiny models stock (see conftest.stock_models).
pytestmark = pytest.mark.usefixtures("stock_models")


@pytest.fixture(scope="module")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = make_clip(16, 112, 112, seed=3, scene_cut_at=8)
    return write_video(frames, tmp_path_factory.mktemp("video") / "clip.mp4", fps=8.0)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> Any:
    model, processor, pruner = load(tiny_checkpoint, dtype=torch.float32)
    yield model, processor, pruner
    pruner.detach()


def test_load_attaches_the_paper_preset(loaded: Any) -> None:
    model, processor, pruner = loaded
    assert pruner_of(model) is pruner and pruner.config == PruneVidConfig.preset("paper")
    assert not model.training and model.dtype == torch.float32
    assert pruner.pruning_layer == 1  # layer 10 of 28 scaled to the tiny model's 4 layers


def test_ask_answers_from_a_video_file(loaded: Any, video_file: Path) -> None:
    model, processor, _ = loaded
    answer = ask(model, processor, video_file, "What moves in the video?", num_frames=16, max_new_tokens=4)
    assert isinstance(answer.text, str) and 1 <= len(answer.token_ids) <= 4
    assert answer.num_frames == 16
    stats = answer.stats
    assert stats.video_tokens_in == 8 * 4 * 4  # 16 frames of 112 x 112: 8 x 4 x 4 LLM tokens
    assert stats.video_tokens_after_stage2 < stats.video_tokens_after_stage1 < stats.video_tokens_in
    assert set(answer.timings) == {"load_video", "preprocess", "ttft", "decode", "total"}
    assert all(value >= 0 for value in answer.timings.values())
    assert json.loads(json.dumps(answer.to_dict()))["stats"]["retention"] == pytest.approx(stats.retention)


def test_ask_samples_by_fps_and_respects_the_pixel_budget(loaded: Any, video_file: Path) -> None:
    model, processor, _ = loaded
    answer = ask(model, processor, video_file, "Colour?", fps=4.0, max_pixels=56 * 56, max_new_tokens=1)
    assert answer.num_frames == 8  # 16 frames at 8 fps sampled at 4 fps
    assert answer.stats.video_tokens_in == 4 * 2 * 2


def test_ask_matches_generate_on_the_same_clip(loaded: Any, video_file: Path) -> None:
    """ask() is a thin wrapper: the same tokens as the user's own generate() call."""
    from prunevid.prompt import build_inputs
    from prunevid.video import load_video

    model, processor, _ = loaded
    clip = load_video(video_file, num_frames=8, max_pixels=112 * 112)
    answer = ask(model, processor, clip, "What moves?", max_new_tokens=4)
    inputs = build_inputs(processor, clip, "What moves?")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert answer.token_ids == generated[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize(
    ("make_file", "error", "message"),
    [
        (lambda folder: folder / "missing.mp4", FileNotFoundError, "not found"),
        (lambda folder: _write(folder / "empty.mp4", b""), ValueError, "could not decode"),
        (lambda folder: _write(folder / "noise.mp4", bytes(range(256)) * 64), ValueError, "could not decode"),
        (lambda folder: write_video(make_clip(1, 56, 56), folder / "one.mp4"), ValueError, "at least"),
    ],
)
def test_bad_videos_get_clear_errors(
    loaded: Any, tmp_path: Path, make_file: Any, error: type, message: str
) -> None:
    model, processor, _ = loaded
    with pytest.raises(error, match=message):
        ask(model, processor, make_file(tmp_path), "What moves?")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_empty_question_is_refused(loaded: Any, video_file: Path) -> None:
    model, processor, _ = loaded
    with pytest.raises(ValueError, match="question"):
        ask(model, processor, video_file, "   ")


def test_load_refuses_an_unsupported_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model; prunevid supports"):
        load(tmp_path)


def test_attach_refuses_other_models_and_bad_layers(models: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="Qwen2_5_VLForConditionalGeneration"):
        attach(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pruning_layer=4 is outside the model"):
        attach(models["sdpa"], PruneVidConfig.preset("paper").replace(pruning_layer=4))
    with attach(models["sdpa"]):
        with pytest.raises(RuntimeError, match="already attached"):
            attach(models["sdpa"])


def test_static_cache_is_refused(models: dict[str, Any], prompts: dict[str, Any]) -> None:
    with attach(models["sdpa"]):
        with pytest.raises(ValueError, match="DynamicCache"):
            models["sdpa"].generate(**prompts["single"], max_new_tokens=2, cache_implementation="static")


def test_unsupported_attention_is_refused(models: dict[str, Any]) -> None:
    model = models["sdpa"]
    text_config = model.model.language_model.config
    original = text_config._attn_implementation
    text_config._attn_implementation = "flex_attention"
    try:
        with pytest.raises(ValueError, match="attn_implementation"):
            attach(model)
    finally:
        text_config._attn_implementation = original


def test_image_only_prompt_is_a_recorded_skip(models: dict[str, Any], tiny_processor: Any) -> None:
    model = models["sdpa"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = tiny_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tiny_processor(text=[text], images=[make_clip(1, 56, 56)[0]], return_tensors="pt")
    with torch.no_grad():
        stock = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        with attach(model) as pruner:
            ours = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(ours, stock)
    sample = pruner.last_stats.samples[0]
    assert sample.videos == [] and sample.stage2_skipped == "no video in this sample"


def test_video_with_no_text_after_it_skips_stage2(models: dict[str, Any], tiny_processor: Any) -> None:
    from prunevid.video import VideoClip

    model = models["sdpa"]
    frames = make_clip(4, 56, 56)
    clip = VideoClip(frames, 4.0, 4, np.arange(4))
    kwargs = {"video_metadata": [clip.metadata]} if transformers.__version__ >= "5" else {}
    inputs = tiny_processor(
        text=["<|im_start|>user\n<|vision_start|><|video_pad|>"],
        videos=[frames],
        return_tensors="pt",
        **kwargs,
    )
    with attach(model, PruneVidConfig.preset("stage2_only")) as pruner:
        with torch.no_grad():
            model(**inputs)
    assert pruner.last_stats.samples[0].stage2_skipped == "no question text in the turn of the video"
    assert pruner.last_stats.retention == 1.0


def test_cli_demo_runs_offline(capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # Each long step says what it is doing as it starts, and its time when it ends.
    steps = [line.split(" ...")[0] for line in captured.err.splitlines()]
    assert steps == [
        "prunevid: loading the bundled small model",
        "prunevid: generating clip and question 0",
        "prunevid: decoding it",
        "prunevid: warming up (a first generate pays one-off costs; not compared)",
        "prunevid: stock answer (baseline)",
        "prunevid: pruned answer (paper)",
    ]
    assert all(line.endswith(" s") for line in captured.err.splitlines())
    stock, paper = result["results"]["baseline"], result["results"]["paper"]
    assert result["gold"] in "ABCD" and "A. " in result["question"]
    assert stock["stats"]["retention"] == 1.0 and paper["stats"]["retention"] < 0.5
    assert stock["choice"] in ("A", "B", "C", "D"), stock["text"]  # the trained model names an option
    assert main(["demo", "--preset", "stage1_only", "--sample", "3", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "correct answer: " in out and "[stage1_only] answer: " in out and "after stage 1" in out
    assert main(["demo", "--sample", "-1"]) == 2


def test_cli_ask_with_a_local_checkpoint(
    capsys: pytest.CaptureFixture, tiny_checkpoint: Path, video_file: Path
) -> None:
    argv = ["ask", str(video_file), "What moves?", "--model", str(tiny_checkpoint), "--frames", "8"]
    assert main([*argv, "--max-new-tokens", "2", "--json", "--preset", "aggressive"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "aggressive" and result["num_frames"] == 8


def test_cli_reports_bad_input_without_a_traceback(
    capsys: pytest.CaptureFixture, tiny_checkpoint: Path
) -> None:
    assert main(["ask", "/no/such/video.mp4", "What?", "--model", str(tiny_checkpoint)]) == 2
    assert "prunevid: error: video file not found" in capsys.readouterr().err


def test_transformers_native_inputs_are_pruned_like_prunevids_own(tmp_path: Path) -> None:
    """processor.apply_chat_template(video path, tokenize=True) then generate() with the pruner attached: the
    same tensors as prunevid's own decoding + build_inputs (bit for bit), so the same pruning and tokens."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from prunevid import build_inputs, load_video
    from prunevid.synthetic_qa import MODEL_DIR, demo_clip

    video, question = demo_clip(tmp_path / "clip.mp4")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    messages = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": question}],
        }
    ]
    try:
        native = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
    except ImportError as error:
        pytest.fail(f"the [video] extra is needed (pip install '.[video]' and FFmpeg's libraries): {error}")
    ours = build_inputs(processor, load_video(video), question)
    assert set(native) == set(ours)
    for key in native:
        assert torch.equal(native[key], ours[key]), key
    runs = {}
    for name, inputs in (("native", native), ("ours", ours)):
        with attach(model, PruneVidConfig.preset("paper")) as pruner:
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        runs[name] = (output, pruner.last_stats)
    assert torch.equal(runs["native"][0], runs["ours"][0])
    stats = runs["native"][1]
    assert stats.to_dict(per_token=True) == runs["ours"][1].to_dict(per_token=True)
    assert stats.video_tokens_in == 512 and stats.retention < 0.5


def test_stats_print_one_line_per_video_and_per_token_lists_on_request() -> None:
    from prunevid.stats import PruneStats, SampleStats, VideoStats

    video = VideoStats(512, 94, 35, kept_indices=list(range(35)), merged_into=list(range(512)))
    one = PruneStats(
        samples=[SampleStats(600, [video])], kv_cache_bytes=2**20, kv_cache_bytes_unpruned=3 * 2**20
    )
    assert (
        str(one)
        == one.summary()
        == (
            "video: 512 tokens -> 94 after stage 1 -> 35 after stage 2 (6.8% kept); "
            "KV cache 1.00 MiB (unpruned 3.00 MiB)"
        )
    )
    two = PruneStats(samples=[SampleStats(600, [video]), SampleStats(600, [video, video])])
    assert two.summary().splitlines()[1:3] == [
        "sample 1 video 0: 512 tokens -> 94 after stage 1 -> 35 after stage 2 (6.8% kept)",
        "sample 1 video 1: 512 tokens -> 94 after stage 1 -> 35 after stage 2 (6.8% kept)",
    ]
    assert len(two.summary().splitlines()) == 4 and two.summary().endswith("(unpruned 0.00 MiB)")
    compact = one.to_dict()
    assert "kept_indices" not in compact["samples"][0]["videos"][0] and compact["retention"] == 35 / 512
    assert len(json.dumps(compact)) < 600
    full = one.to_dict(per_token=True)
    assert full["samples"][0]["videos"][0]["merged_into"] == list(range(512))
