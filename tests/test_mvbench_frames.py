"""MVBench's episodic_reasoning: folders of 3-fps JPEG frames (TVQA), cut to the question's start/end.

A fixture in the published layout (``json/episodic_reasoning.json``, ``video/tvqa/frames_fps3_hq/<clip>/
00001.jpg ...``) is read, decoded and answered end to end: no error row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prunevid.benchmarks_data import read_mvbench
from prunevid.evaluation import evaluate, load_sample_clip, read_rows
from prunevid.synthetic import make_clip

pytestmark = pytest.mark.usefixtures("stock_models")
FRAMES = 30  # 10 s at 3 fps


@pytest.fixture(scope="module")
def mvbench_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cv2 = pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("mvbench")
    clip = root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s01e01_seg01_clip_00"
    clip.mkdir(parents=True)
    frames = make_clip(FRAMES, 56, 84, seed=4)
    for i, frame in enumerate(frames):
        # Frame i is marked by its mean brightness so the test can tell which frames were read.
        marked = frame.copy()
        marked[:8] = i * 8
        cv2.imwrite(str(clip / f"{i + 1:05d}.jpg"), cv2.cvtColor(marked, cv2.COLOR_RGB2BGR))
    items = [
        {
            "video": clip.name,
            "question": "What does Castle do?",
            "candidates": ["He sits.", "He runs.", "He sings."],
            "answer": "He runs.",
            "start": 2.0,
            "end": 6.5,
        }
    ]
    (root / "json").mkdir()
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(items))
    return root


def test_frame_folders_are_read_with_their_window(mvbench_frames: Path) -> None:
    (sample,) = read_mvbench(mvbench_frames)
    assert sample.id == "episodic_reasoning/0" and sample.video.is_dir()
    assert (sample.frame_rate, sample.start, sample.end) == (3.0, 2.0, 6.5)
    clip = load_sample_clip(sample, num_frames=4)
    # [2 s, 6.5 s] at 3 fps: frames ceil(6) = 6 .. floor(19.5) = 19, 4 of them evenly: 6, 10, 15, 19.
    assert clip.frame_indices.tolist() == [6, 10, 15, 19]
    marks = np.round(clip.frames[:, :8].astype(float).mean(axis=(1, 2, 3)) / 8).astype(int)
    assert marks.tolist() == [6, 10, 15, 19]  # the pixels are those files' (00007.jpg ...)
    assert clip.source_fps == 3.0 and clip.total_num_frames == FRAMES


def test_an_mvbench_run_with_frame_folders_has_no_error_row(
    mvbench_frames: Path, tmp_path: Path, tiny_model: Any, tiny_processor: Any
) -> None:
    samples = read_mvbench(mvbench_frames)
    evaluate(
        tiny_model,
        tiny_processor,
        samples,
        tmp_path / "out",
        ["baseline", "paper"],
        num_frames=4,
        max_new_tokens=2,
        progress=False,
        warmup=False,
    )
    rows = read_rows(tmp_path / "out" / "predictions.jsonl")
    assert len(rows) == 2 and all(row["error"] is None for row in rows)
    assert all(row["num_frames"] == 4 for row in rows)
