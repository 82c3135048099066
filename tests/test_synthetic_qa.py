"""The synthetic video QA generator, its held-out set on disk, and the training script (CPU smoke).

Accuracy is never asserted here (the smoke run trains a dozen steps): the tests check determinism,
balance, answerability, the round trip through real video files, that the training path computes
exactly what the processor + stock model compute, and that the trained checkpoint loads and answers.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from prunevid import synthetic_qa as qa
from prunevid.benchmarks_data import BENCHMARKS, read_benchmark, read_synthetic
from prunevid.video import load_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"size": 112, "num_frames": 8}


def _load_script(name: str = "train_synthetic") -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) under a private module name."""
    spec = importlib.util.spec_from_file_location(f"_prunevid_{name}", ROOT / f"benchmarks/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 held-out questions of 112x112x8 clips written as real video files."""
    return qa.write_eval_set(tmp_path_factory.mktemp("synthetic"), 12, seed=7, workers=1, **SMALL)


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory: pytest.TempPathFactory, eval_set: Path) -> Path:
    """The training script's CPU smoke run, as a user runs it (a subprocess)."""
    out = tmp_path_factory.mktemp("smoke") / "synthetic-model"
    command = [sys.executable, str(ROOT / "benchmarks/train_synthetic.py"), "--smoke", "--out", str(out)]
    command += ["--eval-dir", str(eval_set), "--steps", "6"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------------------------------
# Generator


def test_same_seed_same_sample() -> None:
    for index in range(12):
        a, b = qa.make_sample(3, index), qa.make_sample(3, index)
        assert np.array_equal(a.frames, b.frames)
        assert (a.question, a.options, a.answer, a.question_type) == (
            b.question,
            b.options,
            b.answer,
            b.question_type,
        )
        assert a.frames.shape == (16, 224, 224, 3) and a.frames.dtype == np.uint8
        assert a.clip.sampled_fps == qa.FPS and list(a.clip.frame_indices) == list(range(16))
    other = qa.make_sample(4, 0)
    assert not np.array_equal(other.frames, qa.make_sample(3, 0).frames)
    buffer = np.zeros((16, 224, 224, 3), np.uint8)
    drawn = qa.make_sample(3, 5, out=buffer)
    assert drawn.frames is buffer and np.array_equal(buffer, qa.make_sample(3, 5).frames)


def test_types_and_letters_are_balanced() -> None:
    samples = [qa.make_sample(11, i, **SMALL) for i in range(480)]
    pairs = collections.Counter((s.question_type, s.answer) for s in samples)
    assert set(pairs) == {(t, letter) for t in qa.QUESTION_TYPES for letter in "ABCD"}
    assert set(pairs.values()) == {480 // 24}
    # The correct option's text is spread too (not always the same colour, direction, count...).
    for kind in ("colour", "shape", "direction", "count"):
        golds = collections.Counter(
            s.options["ABCD".index(s.answer)] for s in samples if s.question_type == kind
        )
        assert len(golds) >= 4 and max(golds.values()) <= 0.5 * sum(golds.values()), (kind, golds)


@pytest.mark.parametrize(("size", "frames"), [(224, 16), (112, 8), (168, 32)])
def test_every_sample_is_answerable(size: int, frames: int) -> None:
    for index in range(60):
        sample = qa.make_sample(21, index, size=size, num_frames=frames)
        qa.check_answerable(sample)
        assert len(sample.options) == 4 and sample.answer in "ABCD"
        if sample.question_type in ("order", "end"):
            assert len(sample.events) == 4


def test_check_answerable_catches_wrong_answers() -> None:
    for index in range(24):
        sample = qa.make_sample(5, index)
        wrong = "ABCD"[("ABCD".index(sample.answer) + 1) % 4]
        with pytest.raises(AssertionError):
            qa.check_answerable(dataclasses.replace(sample, answer=wrong))


def test_check_answerable_catches_ambiguous_scenes() -> None:
    sample = next(s for s in (qa.make_sample(5, i) for i in range(0, 60, 6)) if len(s.scene.shapes) >= 2)
    target = sample.question.split("the ")[1].rstrip("?")
    twin = next(o for o in sample.scene.shapes if o.shape != target)
    twin.shape = target  # now two shapes answer to the question
    with pytest.raises(AssertionError, match="not unique"):
        qa.check_answerable(sample)


def test_shapes_are_drawn_in_their_colour_and_backgrounds_are_greyish() -> None:
    for index in range(0, 48, 6):  # colour questions
        sample = qa.make_sample(8, index)
        target = next(o for o in sample.scene.shapes if o.shape in sample.question)
        y, x = target.box(target.on)
        centre = sample.frames[target.on, y + target.size // 2, x + target.size // 2]
        assert tuple(centre) == qa.COLOURS[target.colour]
    background = qa._background(3, 224).astype(int)
    assert (background.max(-1) - background.min(-1)).max() < 50  # palette colours: > 120
    for rgb in qa.COLOURS.values():
        assert max(rgb) - min(rgb) > 120


def test_object_map_marks_exactly_the_pixels_drawn_in_each_object_colour() -> None:
    for index in range(12):
        sample = qa.make_sample(4, index, **SMALL)
        ids = qa.object_map(sample.scene)
        assert ids.shape == sample.frames.shape[:3]
        for number, obj in enumerate(sample.scene.shapes):
            for t in range(sample.scene.num_frames):
                drawn = ids[t] == number
                assert drawn.any() == (obj.on <= t < obj.off)
                if drawn.any():
                    assert (sample.frames[t][drawn] == qa.COLOURS[obj.colour_at(t)]).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        qa.make_sample(0, 0, size=100)
    with pytest.raises(ValueError):
        qa.make_sample(0, 0, num_frames=7)
    with pytest.raises(ValueError):
        qa.make_sample(0, -1)


# ------------------------------------------------------------------------------------------------------
# Held-out set on disk


def test_eval_set_round_trip(eval_set: Path) -> None:
    assert "synthetic" in BENCHMARKS
    samples = read_benchmark("synthetic", eval_set)
    index = json.loads((eval_set / qa.INDEX_FILE).read_text())
    assert index["seed"] == 7 and index["fps"] == qa.FPS and len(samples) == 12
    assert [s.group for s in samples] == [qa.QUESTION_TYPES[i % 6] for i in range(12)]
    for i, sample in enumerate(samples):
        original = qa.make_sample(7, i, **SMALL)
        assert (sample.question, sample.options, sample.gold) == (
            original.question,
            original.options,
            original.answer,
        )
        clip = load_video(sample.video, num_frames=32)  # the harness's default count, capped at the file's
        assert clip.frames.shape == original.frames.shape and clip.sampled_fps == pytest.approx(qa.FPS)
        error = np.abs(clip.frames.astype(int) - original.frames.astype(int))
        assert error.mean() < 6, (sample.id, error.mean())  # MPEG-4 is lossy, but close


def test_eval_set_is_the_same_with_worker_processes(tmp_path: Path, eval_set: Path) -> None:
    folder = qa.write_eval_set(tmp_path, 4, seed=7, workers=2, **SMALL)
    one = json.loads((eval_set / qa.INDEX_FILE).read_text())["samples"][:4]
    assert json.loads((folder / qa.INDEX_FILE).read_text())["samples"] == one


def test_read_synthetic_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_synthetic(tmp_path)
    (tmp_path / "synthetic.json").write_text('{"samples": 3}')
    with pytest.raises(ValueError, match="samples"):
        read_synthetic(tmp_path)


# ------------------------------------------------------------------------------------------------------
# Regimes


def _digest(samples: list[qa.QASample]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(sample.frames.tobytes())
        digest.update(repr((sample.question, sample.options, sample.answer, sample.question_type)).encode())
    return digest.hexdigest()


def test_original_regime_is_unchanged() -> None:
    # Digests computed on main before the realistic regime was added (commit e7848f7): the committed
    # held-out set and the shipped model's training stream stay bit for bit the same.
    held_out = [qa.make_sample(qa.EVAL_SEED, i) for i in (0, 1, 2, 3, 4, 5, 7, 23)]
    assert _digest(held_out) == "a931e816197a1bdaee09754cf5e45183a86006161b05e9e5245838e47ea227ad"
    small = [qa.make_sample(3, i, size=112, num_frames=8) for i in range(6)]
    assert _digest(small) == "0e2a25748da4556bc47fbfb02c71b9bf09135ee6cdcaed1aa97df2ae1d63b06c"
    explicit = [qa.make_sample(qa.EVAL_SEED, i, regime="original") for i in (0, 1, 2, 3, 4, 5, 7, 23)]
    assert _digest(explicit) == _digest(held_out)


def test_realistic_regime_sizes_tokens_and_determinism() -> None:
    buffer = np.empty((32, 448, 448, 3), np.uint8)
    for index in range(6):  # one of each question type
        sample = qa.make_sample(3, index, regime="realistic")
        assert sample.frames.shape == (32, 448, 448, 3) and sample.frames.dtype == np.uint8
        assert sample.clip.sampled_fps == qa.FPS and list(sample.clip.frame_indices) == list(range(32))
        t, s = sample.frames.shape[:2]
        assert (t // 2) * (s // 28) ** 2 == 4096  # video tokens of Qwen2.5-VL (14 px patches, 2x2 merge)
        assert sample.scene.regime == "realistic" and sample.question_type == qa.QUESTION_TYPES[index]
        assert all(56 <= o.size <= 112 for o in sample.scene.shapes)
        again = qa.make_sample(3, index, regime="realistic", out=buffer)
        assert again.frames is buffer and np.array_equal(again.frames, sample.frames)
        assert (again.question, again.options, again.answer) == (
            sample.question,
            sample.options,
            sample.answer,
        )
        qa.check_answerable(again)
    # Not the original regime's clip of the same index.
    assert qa.make_sample(3, 0).frames.shape == (16, 224, 224, 3)


def test_realistic_regime_is_balanced_and_answerable_at_test_sizes() -> None:
    samples = [qa.make_sample(13, i, regime="realistic", size=112, num_frames=24) for i in range(48)]
    pairs = collections.Counter((s.question_type, s.answer) for s in samples)
    assert set(pairs.values()) == {2} and len(pairs) == 24
    for sample in samples:
        qa.check_answerable(sample)
        for obj in sample.scene.shapes:  # every state lasts at least 3 frame pairs
            assert obj.off - obj.on >= 6
            if obj.change_at is not None:
                assert obj.change_at - obj.on >= 6 and obj.off - obj.change_at >= 6
    events = [s for s in samples if s.question_type in ("order", "end")]
    assert any(s.scene.cut is not None for s in events) and all(len(s.events) == 4 for s in events)
    with pytest.raises(ValueError, match="realistic regime"):
        qa.make_sample(1, 0, regime="realistic", num_frames=16)
    with pytest.raises(ValueError, match="unknown regime"):
        qa.make_sample(1, 0, regime="real")


def test_check_answerable_catches_a_state_too_short_for_the_realistic_regime() -> None:
    sample = qa.make_sample(4, 3, regime="realistic", size=112, num_frames=24)  # a count question
    qa.check_answerable(sample)
    obj = sample.scene.shapes[0]
    unused = next(c for c in qa.COLOURS if c not in {o.colour for o in sample.scene.shapes})
    obj.colour2, obj.change_at = unused, 20  # its second colour would last 4 frames of 24
    with pytest.raises(AssertionError, match="changes within 6 frames"):
        qa.check_answerable(sample)


def test_panning_backgrounds_move_and_static_ones_do_not() -> None:
    samples = [qa.make_sample(17, i, regime="realistic", size=224, num_frames=24) for i in range(0, 36, 6)]
    panning = [s for s in samples if s.scene.cut is None and s.scene.pan(0) != (0.0, 0.0)]
    static = [s for s in samples if s.scene.cut is None and s.scene.pan(0) == (0.0, 0.0)]
    assert panning and static
    for sample in panning + static:
        frames, ids, scene = sample.frames, qa.object_map(sample.scene), sample.scene
        background = (ids[0] < 0) & (ids[-1] < 0)
        y0, x0 = scene.background_offset(0, 0)
        y1, x1 = scene.background_offset(0, scene.num_frames - 1)
        moved = abs(y1 - y0) + abs(x1 - x0)
        if sample in static:
            assert moved == 0 and np.array_equal(frames[0][background], frames[-1][background])
            continue
        assert moved >= 20  # 1-3 px per frame over 23 frames
        assert not np.array_equal(frames[0][background], frames[-1][background])
        # The last frame shows the first frame's canvas shifted by the offsets: compare where both
        # frames show background and the shifted window overlaps.
        dy, dx = y1 - y0, x1 - x0
        size = scene.size
        last = frames[-1][max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)]
        first = frames[0][max(0, dy) : size - max(0, -dy), max(0, dx) : size - max(0, -dx)]
        shown = (ids[-1] < 0)[max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)]
        shown &= (ids[0] < 0)[max(0, dy) : size - max(0, -dy), max(0, dx) : size - max(0, -dx)]
        assert shown.sum() > 0.3 * size * size and np.array_equal(last[shown], first[shown])


def test_cell_counts_match_the_object_map() -> None:
    for regime, size, frames in (("original", 112, 8), ("realistic", 112, 24)):
        for index in range(6):
            scene = qa.make_sample(19, index, regime=regime, size=size, num_frames=frames).scene
            ids = qa.object_map(scene).reshape(frames, size // 28, 28, size // 28, 28)
            expected = np.stack([(ids == k).sum((2, 4)) for k in range(len(scene.shapes))])
            assert np.array_equal(qa.cell_counts(scene), expected)


def test_eval_sets_of_the_two_regimes_never_mix(tmp_path: Path) -> None:
    realistic = tmp_path / "realistic"
    qa.write_eval_set(realistic, 2, seed=5, regime="realistic", size=112, num_frames=24, workers=1)
    index = json.loads((realistic / qa.INDEX_FILE).read_text())
    assert (index["regime"], index["seed"], index["size"], index["num_frames"]) == ("realistic", 5, 112, 24)
    samples = read_benchmark("synthetic", realistic)
    assert [s.id for s in samples] == ["5-0", "5-1"]
    assert load_video(str(samples[0].video), num_frames=24).frames.shape == (24, 112, 112, 3)
    with pytest.raises(ValueError, match="realistic regime's synthetic set, not the original"):
        qa.write_eval_set(realistic, 3, seed=5, size=112, num_frames=24, workers=1)
    with pytest.raises(ValueError, match="--regime realistic"):
        qa.check_eval_set(realistic, "original")
    with pytest.raises(ValueError, match="not of seed 6"):
        qa.check_eval_set(realistic, "realistic", seed=6)
    qa.check_eval_set(realistic, "realistic", seed=5)
    qa.check_eval_set(tmp_path / "empty", "realistic")  # nothing written yet: nothing to mix
    # An index written before regimes existed (no "regime" key) holds the original regime.
    original = qa.write_eval_set(tmp_path / "original", 1, seed=5, workers=1, **SMALL)
    index = json.loads((original / qa.INDEX_FILE).read_text())
    del index["regime"]
    (original / qa.INDEX_FILE).write_text(json.dumps(index))
    qa.check_eval_set(original, "original", seed=5)
    with pytest.raises(ValueError, match="original regime's synthetic set, not the realistic"):
        qa.write_eval_set(original, 2, seed=5, regime="realistic", size=112, num_frames=24, workers=1)


# ------------------------------------------------------------------------------------------------------
# The training path computes what the processor and the stock model compute


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, script: ModuleType) -> Path:
    out = tmp_path_factory.mktemp("files")
    script.write_processor_files(out)
    return out


def test_vocabulary_covers_the_prompts(files: Path, script: ModuleType) -> None:
    from transformers import AutoProcessor

    from prunevid.evaluation import format_prompt

    tokenizer = AutoProcessor.from_pretrained(files).tokenizer
    words = [*qa.COLOURS, *qa.SHAPES, *qa.DIRECTIONS, *qa.NUMBERS, "appears", "disappears", "turns"]
    for word in words:
        assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    sample = qa.make_sample(2, 4)
    ids = tokenizer(format_prompt(sample.question, sample.options), add_special_tokens=False)["input_ids"]
    assert len(ids) < 60


@pytest.mark.parametrize(("size", "frames", "count"), [(112, 8, 6), (224, 16, 2)])
def test_patchify_prompt_ids_and_forward_match_the_processor(
    files: Path, script: ModuleType, monkeypatch: pytest.MonkeyPatch, size: int, frames: int, count: int
) -> None:
    from transformers import AutoProcessor
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    from prunevid.evaluation import format_prompt
    from prunevid.prompt import build_inputs

    processor = AutoProcessor.from_pretrained(files)
    samples = [qa.make_sample(9, i, size=size, num_frames=frames) for i in range(count)]
    prompts = [format_prompt(s.question, s.options) for s in samples]
    reference = build_inputs(processor, [s.clip for s in samples], prompts)
    pixels = torch.from_numpy(np.stack([s.frames for s in samples]))
    assert torch.allclose(script.patchify(pixels), reference["pixel_values_videos"], atol=1e-6, rtol=0)

    prompt_ids = script.PromptIds(processor, frames // 2 * (size // 28) ** 2)
    tokenizer = processor.tokenizer
    ids, mask, lengths = prompt_ids.batch(
        [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts], None
    )
    assert torch.equal(ids, reference["input_ids"]) and torch.equal(mask, reference["attention_mask"])

    model = script.build_model(files, seed=0).eval()
    longest = prompt_ids.prefix + [prompt_ids.pad] * script.MAX_PROMPT_TOKENS + prompt_ids.suffix + [0, 0]
    grid = torch.tensor([frames // 2, size // 14, size // 14])
    canonical = script.canonical_positions(model, torch.tensor(longest), grid, 1.0)
    with torch.no_grad():
        stock = model(**reference).logits
        fast, features = script.forward_batch(model, pixels, ids, mask, lengths, canonical, ids.shape[1])
        stock_forward = Qwen2_5_VLVisionAttention.forward

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the batched attention fell back to the stock loop")

        monkeypatch.setattr(Qwen2_5_VLVisionAttention, "forward", refuse)
        with script.batched_vision_attention(model):
            batched, _ = script.forward_batch(model, pixels, ids, mask, lengths, canonical, ids.shape[1])
        monkeypatch.setattr(Qwen2_5_VLVisionAttention, "forward", stock_forward)
    assert torch.allclose(fast, stock, atol=1e-5, rtol=0)
    assert features.shape == (
        count * frames // 2 * (size // 28) ** 2,
        model.get_input_embeddings().embedding_dim,
    )
    assert torch.allclose(batched, stock, atol=1e-5, rtol=0)
    assert not any("forward" in vars(m) for m in model.modules()), "the attention patch was not removed"


def test_training_batches(files: Path, script: ModuleType) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoProcessor

    from prunevid.evaluation import extract_choice

    tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
    stream = script.TrainStream(
        1, 12, 112, 8, str(files / "tokenizer.json"), open_fraction=0.3, copy_fraction=0.3
    )
    first, again, other = stream.batch(3, tokenizer), stream.batch(3, tokenizer), stream.batch(4, tokenizer)
    for key in first:
        assert torch.equal(first[key], again[key]), key  # batch k depends only on (seed, k)
    assert not torch.equal(first["frames"], other["frames"])
    assert first["frames"].shape == (12, 8, 112, 112, 3) and first["frames"].is_shared()

    processor = AutoProcessor.from_pretrained(files)
    prompt_ids = script.PromptIds(processor, 4 * 4 * 4)
    prompts = [first["prompt_ids"][i, :n].tolist() for i, n in enumerate(first["prompt_lengths"].tolist())]
    answers = [first["answer_ids"][i, :n].tolist() for i, n in enumerate(first["answer_lengths"].tolist())]
    ids, mask, lengths = prompt_ids.batch(prompts, answers)
    targets = script.answer_targets(answers, prompt_ids.im_end)
    k = targets.shape[1]
    assert k == max(map(len, answers)) + 1
    for i, answer in enumerate(answers):
        kept = targets[i] != -100
        assert torch.equal(ids[i, -k:][kept], targets[i][kept]) and int(kept.sum()) == len(answer) + 1
        text = processor.tokenizer.decode(prompts[i])
        letter = int(first["letters"][i])
        decoded = processor.tokenizer.decode(answer)
        if letter >= 0:  # multiple choice: the harness's prompt, the answer ends "option (letter)"
            assert text.endswith(script.ANSWER_INSTRUCTION) and f"{'ABCD'[letter]}. " in text
            option = text.split(f"{'ABCD'[letter]}. ")[1].split("\n")[0]
            assert decoded.endswith(f"{option} ({'ABCD'[letter]})")
            assert extract_choice(decoded, text.split("\n")[1:5]) == "ABCD"[letter]
        elif letter == -2:  # "Which option says X?": X and its letter
            assert text.startswith("Which option says ") and text.endswith(script.ANSWER_INSTRUCTION)
            option = text.removeprefix("Which option says ").split("?\n")[0]
            assert f"\n{decoded[-2]}. {option}\n" in text and decoded == f"{option} ({decoded[-2]})"
        else:  # open: no options, the answer without a letter
            assert text.endswith(script.OPEN_INSTRUCTION) and "A. " not in text
            assert "(" not in decoded and decoded
    assert {-2, -1} < set(first["letters"].tolist()) and (first["letters"] >= 0).any()


def test_token_targets_name_what_each_token_shows(script: ModuleType) -> None:
    for index in range(12):
        sample = qa.make_sample(6, index)
        labels = script.token_targets(sample.scene)  # [T/2, 8, 8, 3]
        assert labels.shape == (8, 8, 8, 3)
        for pair in range(8):
            cells = sample.frames[2 * pair : 2 * pair + 2].reshape(2, 8, 28, 8, 28, 3)
            for gy, gx in zip(*np.nonzero(labels[pair, :, :, 0]), strict=True):
                colour, shape, motion = (int(v) for v in labels[pair, gy, gx])
                rgb = np.array(qa.COLOURS[script.COLOUR_CLASSES[colour]])
                share = (cells[:, gy, :, gx, :] == rgb).all(-1).mean()
                assert share >= 0.15  # the named colour covers the token
                obj = next(
                    o for o in sample.scene.shapes if o.colour_at(2 * pair) == script.COLOUR_CLASSES[colour]
                )
                assert script.SHAPE_CLASSES[shape] == obj.shape
                moving = script.MOTION_CLASSES[motion]
                assert (moving == "still") == (obj.velocity == (0.0, 0.0))
        # every object on screen in a frame pair shows in at least one token of it
        for obj in sample.scene.shapes:
            for pair in range(obj.on // 2, (obj.off + 1) // 2):
                assert (labels[pair, :, :, 1] == script.SHAPE_CLASSES.index(obj.shape)).any()


@pytest.mark.parametrize("index", range(24))
def test_training_answers_restate_the_question_and_the_harness_reads_their_letter(
    script: ModuleType, index: int
) -> None:
    from prunevid.evaluation import extract_choice

    sample = qa.make_sample(3, index)
    answer = script.answer_text(sample, letter=True)
    gold_text = sample.options["ABCD".index(sample.answer)]
    assert answer.endswith(f"{gold_text} ({sample.answer})")
    assert extract_choice(answer, sample.options) == sample.answer
    assert script.answer_text(sample, letter=False) == answer.removesuffix(f" ({sample.answer})")
    if sample.question_type in ("colour", "direction"):
        assert sample.question.split("the ")[1].split(" move")[0].rstrip("?") in answer


def test_degrade_only_touches_the_chosen_clips(script: ModuleType) -> None:
    frames = torch.from_numpy(np.stack([qa.make_sample(1, i, **SMALL).frames for i in range(8)]))
    generator = torch.Generator().manual_seed(0)
    out = script.degrade(frames, generator, fraction=0.5)
    changed = [(out[i] - frames[i].float()).abs().max() > 0 for i in range(8)]
    assert 0 < sum(changed) < 8
    assert (out - frames.float()).abs().mean() < 4 and out.min() >= 0 and out.max() <= 255
    assert torch.equal(script.degrade(frames, generator, fraction=0.0), frames.float())


def test_token_dropout_hides_video_tokens_as_if_they_were_removed(files: Path, script: ModuleType) -> None:
    video_id = 7
    ids = torch.tensor([[1, 2] + [video_id] * 40 + [3, 4]] * 6)
    mask = torch.ones_like(ids)
    mask[1, :1] = 0  # left padding stays hidden
    dropped = script.drop_video_tokens(ids, mask, video_id, torch.Generator().manual_seed(0), fraction=0.5)
    changed = (dropped != mask).any(-1)
    assert 0 < int(changed.sum()) < 6  # about half the rows
    assert torch.equal(dropped[ids != video_id], mask[ids != video_id])  # text and padding untouched
    assert bool((dropped <= mask).all())
    again = script.drop_video_tokens(ids, mask, video_id, torch.Generator().manual_seed(0), fraction=0.5)
    assert torch.equal(again, dropped)
    none = script.drop_video_tokens(ids, mask, video_id, torch.Generator().manual_seed(0), fraction=0.0)
    assert torch.equal(none, mask)

    # With explicit positions, a hidden key is a removed token: the rows after it do not change.
    model = script.build_model(files, seed=0).eval()
    language_model = model.model.language_model
    length = ids.shape[1]
    embeds = torch.randn(
        1, length, language_model.config.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    positions = torch.arange(length).expand(3, 1, length)
    hidden = torch.ones(1, length, dtype=torch.long)
    hidden[0, 5:30:3] = 0
    keep = hidden[0].bool()
    with torch.no_grad():
        masked = language_model(inputs_embeds=embeds, attention_mask=hidden, position_ids=positions)
        removed = language_model(inputs_embeds=embeds[:, keep], position_ids=positions[:, :, keep])
    torch.testing.assert_close(
        masked.last_hidden_state[:, keep][:, -4:], removed.last_hidden_state[:, -4:], atol=1e-5, rtol=1e-5
    )


def test_kept_token_maps_count_the_objects_the_llm_still_sees() -> None:
    maps = _load_script("kept_token_maps")
    sample = qa.make_sample(1, 3, **SMALL)
    n = 4 * 4 * 4  # 8 frames of 112x112: 4 frame pairs of 4x4 tokens
    identity = np.arange(n)
    unpruned = maps.survival(sample.scene, identity, set(range(n)))
    survived, total = unpruned["stage1"]
    assert survived == total > 0 and unpruned["stage2"] == unpruned["stage1"]
    objects = len(sample.scene.shapes)
    assert unpruned["stage1_objects"] == unpruned["stage2_objects"] == (objects, objects)
    # Everything averaged into one token: the objects are diluted into the background.
    one_token = maps.survival(sample.scene, np.zeros(n, dtype=np.int64), {0})
    assert one_token["stage1"][0] < total and one_token["stage1"][1] == total
    # Stage 2 dropping every token: seen after Stage 1, gone after Stage 2.
    dropped = maps.survival(sample.scene, identity, set())
    assert dropped["stage1"] == unpruned["stage1"] and dropped["stage2"] == (0, total)
    assert dropped["stage2_objects"] == (0, objects)

    colours = maps.token_colours(sample.frames)
    assert colours.shape == (n, 3)
    image = maps.paint(colours, identity, None, (4, 4, 4))
    assert image.shape == (4, 112, 112, 3)
    expected = sample.frames[0:2, 28:56, 56:84].reshape(-1, 3).mean(0)  # frame pair 0, row 1, column 2
    assert np.abs(image[0, 28:56, 56:84].astype(float) - expected).max() <= 1.0
    assert not maps.paint(colours, identity, set(), (4, 4, 4)).any()  # nothing kept: black


# ------------------------------------------------------------------------------------------------------
# The smoke run's checkpoint


def test_smoke_checkpoint_loads_and_answers(smoke_checkpoint: Path, eval_set: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from prunevid import PruneVidConfig, ask, attach

    names = {p.name for p in smoke_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.json"} <= names
    assert {"generation_config.json", "video_preprocessor_config.json", "training_log.json"} <= names
    assert (smoke_checkpoint / "model.safetensors").stat().st_size <= 20 * 2**20
    log = json.loads((smoke_checkpoint / "training_log.json").read_text())
    assert log["steps"] == 6 and log["seed"] == qa.TRAIN_SEED and log["loss_curve"]
    assert log["held_out"]["count"] == 12 and len(log["held_out"]["examples"]) == 12
    assert set(log["held_out"]["by_type"]) == set(qa.QUESTION_TYPES)
    assert log["loss_curve"][-1]["probe_loss"] > 0

    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        smoke_checkpoint, dtype="auto", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.bfloat16
    assert 4e6 < sum(p.numel() for p in model.parameters()) < 9e6
    vision = model.config.vision_config
    assert vision.fullatt_block_indexes and len(vision.fullatt_block_indexes) < vision.depth
    model = model.float().eval()
    processor = AutoProcessor.from_pretrained(smoke_checkpoint)
    sample = read_benchmark("synthetic", eval_set)[0]
    from prunevid.evaluation import format_prompt

    question = format_prompt(sample.question, sample.options)
    plain = ask(model, processor, sample.video, question, num_frames=8, max_new_tokens=3)
    assert isinstance(plain.text, str) and plain.num_frames == 8
    with attach(model, PruneVidConfig.preset("paper")):
        pruned = ask(model, processor, sample.video, question, num_frames=8, max_new_tokens=3)
    assert pruned.stats is not None and pruned.stats.video_tokens_in == 64


def test_eval_command_on_the_synthetic_benchmark(
    smoke_checkpoint: Path, eval_set: Path, tmp_path: Path
) -> None:
    from prunevid.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "synthetic", "--data", str(eval_set), "--model", str(smoke_checkpoint), "--out", str(out)]
    assert main([*argv, "--presets", "baseline", "--limit", "6", "--max-new-tokens", "2"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["error"] is None and r["num_frames"] == 8 for r in rows)
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert set(summary["presets"]["baseline"]["groups"]) == set(qa.QUESTION_TYPES)


def test_the_shipped_model_loads_and_answers_with_an_option(eval_set: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from prunevid import ask
    from prunevid.evaluation import extract_choice, format_prompt

    assert (qa.MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2**20
    log = json.loads((qa.MODEL_DIR / "training_log.json").read_text())
    assert log["held_out"]["count"] == 1000 and log["eval_seed"] == qa.EVAL_SEED
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        qa.MODEL_DIR, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    processor = AutoProcessor.from_pretrained(qa.MODEL_DIR)
    for sample in read_benchmark("synthetic", eval_set)[:3]:
        answer = ask(model.eval(), processor, sample.video, format_prompt(sample.question, sample.options))
        assert extract_choice(answer.text, sample.options) is not None, answer.text


@pytest.mark.parametrize(
    ("folder", "dropout"), [(qa.MODEL_DIR_REALISTIC, 0.0), (qa.MODEL_DIR_REALISTIC_DROPOUT, 0.5)]
)
def test_the_realistic_models_load_answer_and_ship(folder: Path, dropout: float, tmp_path: Path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from prunevid import ask
    from prunevid.evaluation import extract_choice, format_prompt

    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    log = json.loads((folder / "training_log.json").read_text())
    assert (log["regime"], log["seed"], log["settings"]["token_dropout"]) == ("realistic", 3, dropout)
    assert log["settings"]["init"] == "prunevid/data/synthetic-model"
    assert log["eval_seed"] not in (7001, 7002, 20_261_130)  # never scored on the protocol's seeds
    assert f'"data/{folder.name}/*"' in (ROOT / "pyproject.toml").read_text()  # installed with the package
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    processor = AutoProcessor.from_pretrained(folder)
    # Half the regime's frame side (1024 video tokens: seconds on a CPU); a 112-pixel frame would show
    # objects of 14-28 px, smaller than any the models were trained on.
    data = qa.write_eval_set(tmp_path, 1, seed=5, regime="realistic", size=224, num_frames=32, workers=1)
    for sample in read_benchmark("synthetic", data):
        answer = ask(model.eval(), processor, sample.video, format_prompt(sample.question, sample.options))
        assert extract_choice(answer.text, sample.options) is not None, answer.text


def test_eval_synthetic_defaults_to_the_shipped_model_and_needs_data_elsewhere(
    eval_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from prunevid.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "synthetic", "--data", str(eval_set), "--out", str(out), "--presets", "baseline,paper"]
    assert main([*argv, "--limit", "4"]) == 0
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(qa.MODEL_DIR) and summary["presets"]["paper"]["scored"] == 4
    assert main(["eval", "mvbench", "--presets", "baseline"]) == 2
    assert "--data is required for mvbench" in capsys.readouterr().err


def test_eval_synthetic_reproduces_the_committed_answers(tmp_path: Path) -> None:
    """The first questions of the committed method comparison, rerun here: the same letters per preset."""
    from prunevid.cli import main

    committed = json.loads((ROOT / "benchmarks/results/synthetic_eval.json").read_text())
    data = qa.write_eval_set(tmp_path / "data", 6, workers=1)
    out = tmp_path / "eval"
    presets = ("baseline", "paper", "stage1_only", "stage2_only")
    assert (
        main(["eval", "synthetic", "--data", str(data), "--out", str(out), "--presets", ",".join(presets)])
        == 0
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for preset in presets:
        mine = sorted(
            (r for r in rows if r["preset"] == preset), key=lambda r: int(r["id"].rsplit("-", 1)[1])
        )
        assert "".join(r["prediction"] or "-" for r in mine) == committed["answers"][preset][:6], preset


def test_realistic_training_stream_and_arguments(files: Path, script: ModuleType) -> None:
    from tokenizers import Tokenizer

    args = script.parse_args(["--regime", "realistic", "--out", "unused"])
    assert (args.size, args.frames, args.eval_seed) == (448, 32, script.REALISTIC_PROGRESS_SEED)
    assert args.eval_seed not in (7002, 20_261_130)  # the accuracy protocol's seeds are never scored
    smoke = script.parse_args(["--regime", "realistic", "--smoke", "--out", "unused"])
    assert (smoke.size, smoke.frames) == (112, 24)
    assert script.parse_args(["--out", "unused"]).eval_seed == qa.EVAL_SEED
    with pytest.raises(SystemExit):
        script.parse_args(["--regime", "realistic", "--frames", "16", "--out", "unused"])

    tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
    stream = script.TrainStream(3, 4, 112, 24, str(files / "tokenizer.json"), 0.0, regime="realistic")
    batch = stream.batch(0, tokenizer)
    assert batch["frames"].shape == (4, 24, 112, 112, 3) and batch["token_labels"].shape == (4, 12, 4, 4, 3)
    rng = np.random.default_rng([3, 0])
    first = qa.make_sample(
        3, int(rng.integers(0, 2**62, size=4)[0]), regime="realistic", size=112, num_frames=24
    )
    assert torch.equal(batch["frames"][0], torch.from_numpy(first.frames))
    assert torch.equal(batch["token_labels"][0], torch.from_numpy(script.token_targets(first.scene)))
