"""prunevid explain: the drawn token states are exactly the stats' (a bright cell is a kept token), the
counts in explain.json are the bright cells per frame, and the command writes its files offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import prunevid
from prunevid import pipeline
from prunevid.cli import main
from prunevid.explain import (
    DROPPED,
    KEPT,
    MERGED,
    VideoTokens,
    overlay_frame,
    overlay_frames,
    read_video_tokens,
    token_map,
)
from prunevid.qwen2_5_vl import pruner_of
from prunevid.stats import VideoStats
from prunevid.synthetic import make_clip, write_video

explain_module = sys.modules["prunevid.explain"]

ROOT = Path(__file__).resolve().parents[1]


def bright_cells(original: np.ndarray, drawn: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """``bool [rows, columns]``: cells whose every pixel is the frame's own (drawn at full brightness)."""
    same = np.all(original == drawn, axis=-1)
    # Cell r holds the pixels y with floor(y * rows / H) == r.
    row_edges = -(-(np.arange(rows + 1) * original.shape[0]) // rows)
    col_edges = -(-(np.arange(columns + 1) * original.shape[1]) // columns)
    return np.array(
        [
            [
                same[row_edges[r] : row_edges[r + 1], col_edges[c] : col_edges[c + 1]].all()
                for c in range(columns)
            ]
            for r in range(rows)
        ]
    )


@st.composite
def pruned_videos(draw: st.DrawFn) -> tuple[VideoStats, VideoTokens, np.ndarray, set[int]]:
    """A random Stage-1 merge (and pre-LLM drops) and Stage-2 selection of a random grid, as stats."""
    grid = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    n = grid[0] * grid[1] * grid[2]
    start = draw(st.integers(0, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    is_rep = rng.random(n) < draw(st.floats(0.1, 1.0))
    is_rep[rng.integers(n)] = True
    reps = np.flatnonzero(is_rep)
    representative = np.where(is_rep, np.arange(n), rng.choice(reps, n))
    representative[(~is_rep) & (rng.random(n) < 0.2)] = -1  # dropped before the LLM
    kept = {int(r) for r in reps if rng.random() < 0.5}
    stats = VideoStats(
        tokens_in=n,
        tokens_after_stage1=len(reps),
        tokens_after_stage2=len(kept),
        kept_indices=sorted(start + r for r in kept),
        merged_into=[start + int(r) if r >= 0 else -1 for r in representative],
    )
    return stats, VideoTokens(grid, np.arange(start, start + n), 2), representative, kept


@settings(max_examples=60, deadline=None)
@given(pruned_videos(), st.integers(1, 6))
def test_bright_cells_are_exactly_the_kept_tokens(case: tuple, cell: int) -> None:
    stats, tokens, representative, kept = case
    frames_t, rows, columns = tokens.grid
    tokens_map = token_map(stats, tokens)
    flat_state = tokens_map.state.reshape(-1)
    for i in range(len(flat_state)):
        if i in kept:
            assert flat_state[i] == KEPT
        elif representative[i] in kept:
            assert flat_state[i] == MERGED
        else:
            assert flat_state[i] == DROPPED
    counts = tokens_map.counts()
    assert sum(c["after_stage2"] for c in counts) == stats.tokens_after_stage2
    assert sum(c["after_stage1"] for c in counts) == stats.tokens_after_stage1
    # Pixels in 40..215: a tint (one channel at 255) or a dimmed cell never equals the frame.
    rng = np.random.default_rng(0)
    frame = rng.integers(40, 216, size=(rows * cell + 1, columns * cell + 2, 3), dtype=np.uint8)
    for t in range(frames_t):
        drawn = overlay_frame(frame, tokens_map.state[t], tokens_map.representative[t])
        bright = bright_cells(frame, drawn, rows, columns)
        assert np.array_equal(bright, tokens_map.state[t] == KEPT)
        assert int(bright.sum()) == counts[t]["after_stage2"]


def test_inconsistent_stats_are_refused() -> None:
    tokens = VideoTokens((1, 2, 2), np.arange(10, 14), 2)
    with pytest.raises(ValueError, match="the stats describe 5 video tokens but the grid"):
        token_map(VideoStats(5, 5, 5), tokens)
    with pytest.raises(ValueError, match="prompt position 3 is not one of this video's tokens"):
        token_map(VideoStats(4, 4, 1, kept_indices=[3], merged_into=[10, 11, 12, 13]), tokens)
    with pytest.raises(ValueError, match="not its own representative"):
        token_map(VideoStats(4, 1, 1, kept_indices=[11], merged_into=[10, 10, 10, 10]), tokens)


def test_video_token_runs_one_per_video_or_one_per_frame_group() -> None:
    from types import SimpleNamespace

    config = SimpleNamespace(
        model_type="any",
        video_token_id=9,
        vision_config=SimpleNamespace(spatial_merge_size=2, temporal_patch_size=2),
    )
    # Qwen3-VL's layout: a video is T' runs of h' * w' tokens between timestamp texts (5 here).
    ids = np.array([[1, 5, 9, 9, 5, 9, 9, 5, 9, 9, 2, 5, 9, 5, 9, 3]])
    grids = np.array([[3, 2, 4], [2, 2, 2]])  # (T', h', w') = (3, 1, 2) and (2, 1, 1)
    first, second = explain_module.video_token_runs(
        config, {"input_ids": ids, "video_grid_thw": grids}, frame_groups=True
    )[0]
    assert first.grid == (3, 1, 2) and first.positions.tolist() == [2, 3, 5, 6, 8, 9]
    assert second.grid == (2, 1, 1) and second.positions.tolist() == [12, 14]
    # Qwen2.5-VL's layout: one run per video.
    ids = np.array([[1, 9, 9, 9, 9, 9, 9, 2, 9, 9, 3]])
    first, second = explain_module.video_token_runs(config, {"input_ids": ids, "video_grid_thw": grids})[0]
    assert first.positions.tolist() == [1, 2, 3, 4, 5, 6] and second.positions.tolist() == [8, 9]
    with pytest.raises(ValueError, match="do not match the video grid"):
        explain_module.video_token_runs(
            config, {"input_ids": ids, "video_grid_thw": grids}, frame_groups=True
        )
    with pytest.raises(ValueError, match="3 runs of video tokens but video_grid_thw describes 2"):
        explain_module.video_token_runs(
            config, {"input_ids": np.array([[*ids[0], 9]]), "video_grid_thw": grids}
        )


def test_restated_reference_methods_agree() -> None:
    from prunevid import cli, reference_methods

    assert explain_module.REFERENCE_METHOD_NAMES == reference_methods.METHODS == cli.REFERENCE_METHODS


def test_an_unknown_model_family_names_the_supported_ones() -> None:
    class Config:
        model_type = "llava"

    with pytest.raises(
        ValueError, match="grid of a 'llava' model; supported: qwen2_5_vl, qwen2_vl, qwen3_vl"
    ):
        read_video_tokens(Config(), {})


def test_prunevid_explain_calls_the_function_even_where_it_names_the_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert prunevid.explain is explain_module.explain or prunevid.explain is explain_module
    # What `import prunevid.explain` leaves in the package when it runs before `prunevid.explain` is read.
    monkeypatch.setattr(prunevid, "explain", explain_module)
    with pytest.raises(ValueError, match="no video to explain"):
        prunevid.explain(None, None, [], "What?")


# ----------------------------------------------------------------------------------------------
# On the tiny model


@pytest.fixture
def stock_tiny(tiny_model: Any) -> Any:
    assert pruner_of(tiny_model) is None
    yield tiny_model
    pruner = pruner_of(tiny_model)
    if pruner is not None:
        pruner.detach()


def _video_positions(model: Any, processor: Any, explanation: Any) -> list[np.ndarray]:
    """Prompt positions of each video's tokens in grid order, read from the prompt itself: a prompt's video
    tokens, in order, are its videos' tokens in grid order on every family (Qwen3-VL's timestamps between
    frame groups are text)."""
    inputs = explain_module.build_video_inputs(processor, explanation.clips, explanation.question)
    positions = np.flatnonzero(inputs["input_ids"][0].numpy() == model.config.video_token_id)
    sizes = [int(np.prod(tokens.grid)) for tokens in explanation.methods[0].token_maps]
    assert sum(sizes) == len(positions)
    return np.split(positions, np.cumsum(sizes)[:-1])


def _check_against_stats(explanation: Any, record: dict, positions: list[np.ndarray]) -> None:
    """Overlays, JSON counts and the pruner's stats agree, per method, video and token frame."""
    for method in explanation.methods:
        videos = method.stats.samples[0].videos
        assert len(videos) == len(explanation.clips) == len(record["methods"][method.name]["videos"])
        for v, (clip, stats, tokens) in enumerate(
            zip(explanation.clips, videos, method.token_maps, strict=True)
        ):
            saved = record["methods"][method.name]["videos"][v]
            assert saved["tokens_after_stage2"] == stats.tokens_after_stage2
            assert sum(f["after_stage2"] for f in saved["token_frames"]) == stats.tokens_after_stage2
            assert sum(f["after_stage1"] for f in saved["token_frames"]) == stats.tokens_after_stage1
            frames_t, rows, columns = tokens.grid
            grid_index = {int(p): i for i, p in enumerate(positions[v])}
            kept = {grid_index[p] for p in stats.kept_indices}
            drawn = overlay_frames(clip.frames, tokens)
            for f in range(len(clip.frames)):
                t = f // 2
                bright = bright_cells(clip.frames[f], drawn[f], rows, columns)
                expected = np.array([t * rows * columns + i in kept for i in range(rows * columns)])
                assert np.array_equal(bright.reshape(-1), expected)
                assert int(bright.sum()) == saved["token_frames"][t]["after_stage2"]
                assert f in saved["token_frames"][t]["frames"]


def _mid_tones(clip: Any) -> Any:
    """The clip with pixels in 40..215: a tint (a channel at 255) or a dimmed cell never equals the frame."""
    return type(clip)(
        np.clip(clip.frames, 40, 215), clip.source_fps, clip.total_num_frames, clip.frame_indices
    )


def test_explain_draws_what_the_stats_say(
    stock_tiny: Any, tiny_processor: Any, make_video_clip: Any, tmp_path: Path
) -> None:
    # Pixels the overlay cannot reproduce by chance (a tint has a channel at 255, dimming lowers them).
    clip = make_video_clip(8, 112, 112, seed=1, scene_cut_at=4)
    clip = type(clip)(
        np.clip(clip.frames, 40, 215), clip.source_fps, clip.total_num_frames, clip.frame_indices
    )
    result = prunevid.explain(
        stock_tiny,
        tiny_processor,
        clip,
        "What moves in the video?",
        tmp_path / "out",
        methods=["paper", "random", "stage1_only"],
        max_new_tokens=2,
        video=True,
    )
    assert pruner_of(stock_tiny) is None  # each method was detached after its run
    record = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert list(record["methods"]) == ["paper", "random", "stage1_only"]
    _check_against_stats(result, record, _video_positions(stock_tiny, tiny_processor, result))
    paper, random = result.methods[0].stats, result.methods[1].stats
    assert 0 < paper.retention < 1
    # random ran at the retention paper reached on this prompt.
    assert random.video_tokens_after_stage2 == max(1, round(paper.retention * random.video_tokens_in))
    assert (
        result.methods[2].stats.video_tokens_after_stage2 == result.methods[2].stats.video_tokens_after_stage1
    )
    sheet = Image.open(tmp_path / "out" / "video0.png")
    assert sheet.mode == "RGB" and sheet.width > 8 * 160
    movie = cv2.VideoCapture(str(tmp_path / "out" / "video0.mp4"))
    assert int(movie.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    assert int(movie.get(cv2.CAP_PROP_FRAME_WIDTH)) == 3 * 112  # the three methods side by side
    movie.release()


def test_two_videos_in_one_prompt_get_one_sheet_each(
    stock_tiny: Any, tiny_processor: Any, make_video_clip: Any, tmp_path: Path
) -> None:
    first = make_video_clip(8, 112, 112, seed=1)
    second = make_video_clip(4, 56, 84, seed=2)
    clips = [_mid_tones(first), _mid_tones(second)]
    result = prunevid.explain(
        stock_tiny,
        tiny_processor,
        clips,
        "Which colour is the disc?",
        tmp_path,
        methods=["paper"],
        max_new_tokens=2,
    )
    record = json.loads((tmp_path / "explain.json").read_text())
    assert [v["token_grid"] for v in record["videos"]] == [[4, 4, 4], [2, 2, 3]]
    assert [p.name for p in result.files["sheets"]] == ["video0.png", "video1.png"]
    assert all(p.is_file() for p in result.files["sheets"])
    _check_against_stats(result, record, _video_positions(stock_tiny, tiny_processor, result))


def test_every_family(
    family: str, tiny_family_models: dict, tiny_family_processor: Any, tmp_path: Path
) -> None:
    from conftest import family_clip

    model = tiny_family_models["sdpa"]
    clips = [
        _mid_tones(family_clip(family, 8, 4, 4, seed=1, scene_cut_at=4)),
        _mid_tones(family_clip(family, 4, 2, 3)),
    ]
    result = prunevid.explain(
        model,
        tiny_family_processor,
        clips,
        "What moves?",
        tmp_path,
        methods=["paper", "evs"],
        max_new_tokens=1,
    )
    assert pruner_of(model) is None
    record = json.loads((tmp_path / "explain.json").read_text())
    assert [v["token_grid"] for v in record["videos"]] == [[4, 4, 4], [2, 2, 3]]
    assert 0 < result.methods[0].stats.retention < 1
    _check_against_stats(result, record, _video_positions(model, tiny_family_processor, result))


def test_explain_uses_the_attached_pruner_or_attaches_each_method(
    stock_tiny: Any, tiny_processor: Any, make_video_clip: Any
) -> None:
    clip = make_video_clip(4, 56, 56)
    with pytest.raises(ValueError, match="no pruner is attached to the model"):
        prunevid.explain(stock_tiny, tiny_processor, clip, "What?")
    with prunevid.attach(stock_tiny, prunevid.PruneVidConfig.preset("paper")) as pruner:
        with pytest.raises(ValueError, match="a pruner is attached to the model: call pruner.detach"):
            prunevid.explain(stock_tiny, tiny_processor, clip, "What?", methods=["paper"])
        result = prunevid.explain(stock_tiny, tiny_processor, clip, "What?", max_new_tokens=1)
        assert [m.name for m in result.methods] == ["paper"]
        assert result.methods[0].stats is pruner.last_stats
    with pytest.raises(ValueError, match="the question must be a non-empty string"):
        prunevid.explain(stock_tiny, tiny_processor, clip, "  ", methods=["paper"])
    with pytest.raises(ValueError, match="give a retention"):
        prunevid.explain(stock_tiny, tiny_processor, clip, "What?", methods=["baseline", "random"])


# ----------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        make_clip(8, 224, 224, seed=5), tmp_path_factory.mktemp("explain") / "clip.mp4", fps=4.0
    )


def test_the_command_writes_the_files_offline_with_the_bundled_model(
    clip_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "explained"
    argv = ["explain", str(clip_file), "What moves?", "--model", "bundled", "--out", str(out)]
    assert main([*argv, "--compare", "random", "--video", "--frames", "4", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "[paper] answer:" in captured.out and "[random] answer:" in captured.out
    assert f"wrote {out / 'video0.png'}, {out / 'video0.mp4'}, {out / 'explain.json'}" in captured.out
    assert "prunevid: answering (paper)" in captured.err and "prunevid: answering (random)" in captured.err
    record = json.loads((out / "explain.json").read_text())
    assert record["videos"][0]["source"] == str(clip_file) and record["videos"][0]["num_frames"] == 4
    assert record["videos"][0]["token_grid"] == [2, 8, 8]
    for method in record["methods"].values():
        (video,) = method["videos"]
        assert sum(f["after_stage2"] for f in video["token_frames"]) == video["tokens_after_stage2"]
    assert Image.open(out / "video0.png").size[0] > 0
    movie = cv2.VideoCapture(str(out / "video0.mp4"))
    assert int(movie.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    movie.release()
    # Two videos in one prompt, --json
    assert (
        main(
            ["explain", str(clip_file), str(clip_file), "What moves?", "--model", "bundled"]
            + ["--out", str(out), "--frames", "4", "--max-new-tokens", "2", "--json", "--quiet"]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err == ""
    assert len(json.loads(captured.out)["videos"]) == 2 and (out / "video1.png").is_file()


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make any model load fail the test (a bad input must be reported before it)."""
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load", refuse)
    return calls


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/video.mp4", "What?", "--model", "x"], "video file not found: '/no/such/video.mp4'"),
        (
            ["CLIP", "What?", "--model", "/no/such/model"],
            "no such model folder, and not a hub id: '/no/such/model'",
        ),
        (["CLIP", " ", "--model", "bundled"], "the question must be a non-empty string"),
        (["CLIP", "What?", "--compare", "paper,magic"], "unknown method 'magic'"),
        (["CLIP", "What?", "--preset", "baseline", "--compare", "random"], "give a retention"),
        (["CLIP", "What?", "--compare", "random", "--retention", "2"], "retention=2.0 is invalid"),
        (["CLIP", "What?", "--frames", "1"], "num_frames must be an integer >= 2"),
        (["CLIP", "What?", "--out", "CLIP"], "is a file: give a folder"),
    ],
)
def test_bad_inputs_fail_clearly_before_the_model_loads(
    no_model_load: list[Any], clip_file: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    argv = [str(clip_file) if a == "CLIP" else a for a in argv]
    if "--model" not in argv:
        argv += ["--model", "bundled"]
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("prunevid: error: ") and message in err.splitlines()[-1]
    assert no_model_load == []


def test_the_same_errors_as_ask(
    no_model_load: list[Any], clip_file: Path, capsys: pytest.CaptureFixture
) -> None:
    for argv in (
        ["/no/such/video.mp4", "What?", "--model", "x"],
        [str(clip_file), "What?", "--model", "/no/m"],
    ):
        assert main(["ask", *argv]) == 2
        ask_error = capsys.readouterr().err.splitlines()[-1]
        assert main(["explain", *argv]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == ask_error


def test_explain_help_imports_no_torch() -> None:
    code = (
        "import sys\nfrom prunevid.cli import main\n"
        "try:\n    main(['explain', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'cv2', 'PIL') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert "usage: prunevid explain" in result.stdout and "--compare" in result.stdout
    assert result.stdout.rsplit("HEAVY=", 1)[1].strip() == ""
