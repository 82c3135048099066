"""Batched and data-parallel ``prunevid eval``: the same predictions as one process asking one at a time.

Batches: B samples per generate (left padding, each clip its own size and pruned length) give the rows
of B = 1 in float32 on the CPU. Data parallel: two processes (``torch.distributed.run``, gloo) split the
samples, each appending to its own file; the merged rows equal a single-process run's, and a rerun with
another number of processes does only what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prunevid import evaluation
from prunevid.benchmarks_data import Sample, read_benchmark
from prunevid.evaluation import evaluate, read_rows
from prunevid.synthetic import make_clip, write_video

# Frame sizes (height, width) per sample: different token grids, so batches need padding.
SIZES = [(56, 56), (84, 112), (112, 84), (56, 112), (112, 112)]
OPTIONS = ["red disc", "blue box", "green triangle", "yellow star"]
RUN = dict(num_frames=8, max_new_tokens=4, progress=False, warmup=False, benchmark="synthetic")
PRESETS = ("baseline", "paper")
# What a row's answer is; timings, batch size and write time differ between runs by design.
ANSWER_FIELDS = (
    "prediction",
    "raw_answer",
    "correct",
    "num_frames",
    "tokens_in",
    "tokens_after_stage1",
    "tokens_after_stage2",
    "retention",
    "error",
)


@pytest.fixture(autouse=True)
def nothing_left_attached(tiny_model: Any) -> Any:
    from prunevid.qwen2_5_vl import pruner_of

    yield
    assert pruner_of(tiny_model) is None, "evaluate() must leave the model as it found it"


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark in the ``synthetic`` layout: one question per generated clip, clips of 5 sizes."""
    root = tmp_path_factory.mktemp("parallel-data")
    samples = []
    for index, (height, width) in enumerate(SIZES):
        write_video(make_clip(8, height, width, seed=index), root / f"clip{index}.mp4", fps=4.0)
        samples.append(
            {
                "id": f"q{index}",
                "video": f"clip{index}.mp4",
                "question": f"Which shape moves first in clip {index}?",
                "options": OPTIONS,
                "answer": "ABCD"[index % 4],
                "type": ["motion", "colour"][index % 2],
            }
        )
    (root / "synthetic.json").write_text(json.dumps({"samples": samples}))
    return root


@pytest.fixture(scope="module")
def samples(synthetic_dir: Path) -> list[Sample]:
    return read_benchmark("synthetic", synthetic_dir)


def _answers(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple]:
    return {(r["id"], r["preset"]): tuple(r[k] for k in ANSWER_FIELDS) for r in rows}


def _merged_rows(out: Path) -> list[dict[str, Any]]:
    """The newest row per (id, preset) over every predictions file in ``out``."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(out.glob("predictions*.jsonl")):
        for row in read_rows(path):
            key = (row["id"], row["preset"])
            if key not in rows or row["written_at"] >= rows[key]["written_at"]:
                rows[key] = row
    return list(rows.values())


@pytest.fixture(scope="module")
def single_process_rows(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tiny_processor: Any, samples: list[Sample]
) -> list[dict[str, Any]]:
    """The reference: one process, one sample at a time."""
    out = tmp_path_factory.mktemp("single")
    evaluate(tiny_model, tiny_processor, samples, out, PRESETS, **RUN)
    return read_rows(out / "predictions.jsonl")


def test_batches_answer_as_one_at_a_time(
    tmp_path: Path,
    tiny_model: Any,
    tiny_processor: Any,
    samples: list[Sample],
    single_process_rows: list[dict[str, Any]],
) -> None:
    summary = evaluate(tiny_model, tiny_processor, samples, tmp_path, PRESETS, batch_size=3, **RUN)
    rows = read_rows(tmp_path / "predictions.jsonl")
    assert _answers(rows) == _answers(single_process_rows)
    assert len(_answers(rows)) == len(samples) * len(PRESETS)
    # 5 samples in batches of 3: one batch of 3, one of 2, per preset.
    assert sorted(r["batch_size"] for r in rows if r["preset"] == "paper") == [2, 2, 3, 3, 3]
    paper = [r for r in rows if r["preset"] == "paper"]
    assert len({r["tokens_after_stage2"] for r in paper}) > 1, "the batch must mix pruned lengths"
    assert summary["batch_size"] == 3
    for name in PRESETS:
        entry = summary["presets"][name]
        seconds = sum(r["latency_s"] / r["batch_size"] for r in rows if r["preset"] == name)
        assert entry["samples_per_s"] == pytest.approx(len(samples) / seconds)
    assert "samples/s" in (tmp_path / "summary.md").read_text()


def test_a_failing_batch_is_answered_one_sample_at_a_time(
    tmp_path: Path,
    tiny_model: Any,
    tiny_processor: Any,
    samples: list[Sample],
    single_process_rows: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = evaluation.ask_batch

    def no_batches(model: Any, processor: Any, clips: list, prompts: list, **kwargs: Any) -> list:
        if len(clips) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, processor, clips, prompts, **kwargs)

    monkeypatch.setattr(evaluation, "ask_batch", no_batches)
    evaluate(tiny_model, tiny_processor, samples, tmp_path, PRESETS, batch_size=4, **RUN)
    rows = read_rows(tmp_path / "predictions.jsonl")
    assert _answers(rows) == _answers(single_process_rows)
    assert {r["batch_size"] for r in rows} == {1}


def _launch_two_processes(synthetic_dir: Path, checkpoint: Path, out: Path, *extra: str) -> None:
    """``python -m torch.distributed.run --nproc_per_node 2 -m prunevid eval synthetic ...`` on the CPU."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "prunevid",
        "eval",
        "synthetic",
        "--data",
        str(synthetic_dir),
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--presets",
        ",".join(PRESETS),
        "--frames",
        str(RUN["num_frames"]),
        "--max-new-tokens",
        str(RUN["max_new_tokens"]),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_split_the_samples_and_resume_per_rank_and_after_a_change_of_world_size(
    tmp_path: Path,
    tiny_checkpoint: Path,
    tiny_model: Any,
    tiny_processor: Any,
    synthetic_dir: Path,
    samples: list[Sample],
    single_process_rows: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    rank_files = [out / "predictions.rank0-of-2.jsonl", out / "predictions.rank1-of-2.jsonl"]
    # One process answers the first 2 planned samples (q0, q1: round-robin over the question types)...
    evaluate(tiny_model, tiny_processor, samples, out, PRESETS, limit=2, **RUN)
    # ...then two processes the first 4 (q0..q3): rank 0 owns q0 and q2, rank 1 q1 and q3; q0 and q1
    # are done, so each rank answers one (in batches of 2: a batch of one here).
    _launch_two_processes(synthetic_dir, tiny_checkpoint, out, "--limit", "4", "--batch-size", "2")
    assert [{r["id"] for r in read_rows(path)} for path in rank_files] == [{"q2"}, {"q3"}]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples"] == 4
    assert summary["presets"]["paper"]["scored"] == 4  # the summary merges every file

    # Two processes again on all 5 (q0..q4): each rank resumes from its own file; only q4 (rank 0) is new.
    _launch_two_processes(synthetic_dir, tiny_checkpoint, out)
    rows = [read_rows(path) for path in rank_files]
    assert [[r["id"] for r in file] for file in rows] == [["q2"] * 2 + ["q4"] * 2, ["q3"] * 2]

    # Back to one process: everything is in the files of the other world sizes, nothing is asked.
    calls: list[str] = []
    real = evaluation.ask

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "ask", counted)
    summary = evaluate(tiny_model, tiny_processor, samples, out, PRESETS, **RUN)
    assert calls == []
    assert _answers(_merged_rows(out)) == _answers(single_process_rows)
    assert summary["presets"]["paper"]["scored"] == len(samples) and summary["world_size"] == 1
