"""The evaluation harness: benchmark readers, prompt and answer extraction, resumable runs, summaries.

Tiny datasets in each published layout are written here (generated clips, a few questions each) and run
end to end with the tiny random model: its answers are arbitrary, so the tests check mechanics (a row per
sample and preset, summary == rows, resume, error rows, submission files), not accuracy.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunevid import PruneVidConfig, attach, evaluation
from prunevid.benchmarks_data import (
    Sample,
    gold_letter,
    read_benchmark,
    read_egoschema,
    read_mvbench,
    read_videomme,
    strip_option_letters,
)
from prunevid.cli import main
from prunevid.evaluation import (
    ANSWER_INSTRUCTION,
    evaluate,
    extract_choice,
    format_prompt,
    load_sample_clip,
    read_rows,
)
from prunevid.pipeline import Answer
from prunevid.qwen2_5_vl import pruner_of
from prunevid.synthetic import make_clip, write_video

try:
    import pyarrow  # noqa: F401

    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False

# Table formats the lmms-lab layouts are written in: parquet as published (needs pyarrow), JSON Lines as
# exported by datasets' to_json.
TABLE_FORMATS = [
    pytest.param("parquet", marks=pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow is not installed")),
    "jsonl",
]
OPTIONS = ("red disc", "blue box", "green triangle", "yellow star")
RUN = dict(num_frames=8, max_new_tokens=3, progress=False, warmup=False)


@pytest.fixture(autouse=True)
def nothing_left_attached(tiny_model: Any) -> None:
    yield
    assert pruner_of(tiny_model) is None, "evaluate() must leave the model as it found it"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three short clips: 16 frames of 56 x 56 at 8 fps (2 s)."""
    folder = tmp_path_factory.mktemp("clips")
    return [write_video(make_clip(16, 56, 56, seed=i), folder / f"clip{i}.mp4", fps=8.0) for i in range(3)]


def _copy(clip: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, path)


def _write_table(rows: list[dict[str, Any]], path: Path, fmt: str) -> None:
    path = path.with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def egoschema_lmms(root: Path, clips: list[Path], fmt: str = "jsonl") -> Path:
    """lmms-lab/egoschema: Subset/ (with answers) and MC/ (without), videos/<video_idx>.mp4."""
    rows = [
        {
            "question_idx": str(i),
            "question": f"What is C doing in part {i}?",
            "video_idx": f"uid-{i}",
            "option": [f"{letter}. C does thing {j}" for j, letter in enumerate("ABCDE")],
            "answer": str(answer),
        }
        for i, answer in enumerate((3, 0, 4))
    ]
    _write_table(rows[:2], root / "Subset" / "test-00000-of-00001", fmt)
    _write_table([{**row, "answer": ""} for row in rows], root / "MC" / "test-00000-of-00001", fmt)
    for i in range(3):
        _copy(clips[i], root / "videos" / f"uid-{i}.mp4")
    return root


def egoschema_official(root: Path, clips: list[Path]) -> Path:
    """egoschema/EgoSchema: questions.json + subset_answers.json, videos/<q_uid>.mp4."""
    questions = [
        {"q_uid": f"uid-{i}", "google_drive_id": "x", "question": f"Why does C move {i}?"}
        | {f"option {j}": f"because of reason {j}" for j in range(5)}
        for i in range(3)
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "subset_answers.json").write_text(json.dumps({"uid-0": 2, "uid-2": 1}))
    for i in range(3):
        _copy(clips[i], root / "videos" / f"uid-{i}.mp4")
    return root


def mvbench(root: Path, clips: list[Path]) -> Path:
    """OpenGVLab/MVBench: json/<task>.json; action_count in a pre-cut folder, action_sequence as an
    original Charades video cut to start/end."""
    count = [
        {
            "video": f"count{i}.mp4",
            "question": f"How many times {i}?",
            "candidates": ["1", "2", "3"],
            "answer": "2",
        }
        for i in range(2)
    ]
    sequence = [
        {
            "video": "CHRD1.mp4",
            "question": "What did the person do first?",
            "candidates": list(OPTIONS),
            "answer": "green triangle",
            "start": 0.5,
            "end": 1.5,
        }
    ]
    (root / "json").mkdir(parents=True)
    (root / "json" / "action_count.json").write_text(json.dumps(count))
    (root / "json" / "action_sequence.json").write_text(json.dumps(sequence))
    _copy(clips[0], root / "video" / "perception" / "videos" / "count0.mp4")
    _copy(clips[1], root / "video" / "perception" / "videos" / "count1.mp4")
    _copy(clips[2], root / "video" / "star" / "Charades_v1_480" / "CHRD1.mp4")
    return root


def videomme(root: Path, clips: list[Path], fmt: str = "jsonl") -> Path:
    """lmms-lab/Video-MME: videomme/test-00000-of-00001.parquet, data/<videoID>.mp4."""
    rows = []
    for i, (duration, answer) in enumerate((("short", "C"), ("medium", "A"), ("long", "D"))):
        rows.append(
            {
                "video_id": f"00{i}",
                "duration": duration,
                "domain": "Knowledge",
                "sub_category": "Astronomy",
                "url": f"https://www.youtube.com/watch?v=yt{i}",
                "videoID": f"yt{i}",
                "question_id": f"00{i}-1",
                "task_type": "Counting Problem",
                "question": f"How many shapes are there in video {i}?",
                "options": [f"{letter}. {text}" for letter, text in zip("ABCD", OPTIONS, strict=True)],
                "answer": answer,
            }
        )
    _write_table(rows, root / "videomme" / "test-00000-of-00001", fmt)
    for i in range(3):
        _copy(clips[i], root / "data" / f"yt{i}.mp4")
    return root


# ------------------------------------------------------------------------------------------------------
# Prompt and answer extraction


def test_prompt_is_question_options_then_instruction() -> None:
    prompt = format_prompt("What moves? ", ["a red disc", "a blue box"])
    assert prompt == "What moves?\nA. a red disc\nB. a blue box\n" + ANSWER_INSTRUCTION
    assert ANSWER_INSTRUCTION == "Answer with the option's letter from the given choices directly."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        (" (B) ", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("**C**", "C"),
        ("B. blue box", "B"),
        ("(C) green triangle", "C"),
        ("D: yellow star", "D"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("The answer is A because the disc moves.", "A"),
        ("Answer: (C)", "C"),
        ("The best option is D", "D"),
        ("I think it is (A), the red one.", "A"),
        ("<answer>C</answer>", "C"),
        ("blue box", "B"),
        ("It is the yellow star.", "D"),
        ("Green triangle", "C"),
        ("green tri", "C"),  # cut by the token limit
        ("I would say B or C", "B"),
        ("A man opens the door.", None),  # an article, not option A
        ("C stops to drink water.", None),  # EgoSchema's camera wearer, not option C
        ("I think D fits best", "D"),
        ("B is right", "B"),
        ("E", None),  # not one of the four options
        ("", None),
        ("no idea at all", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, OPTIONS) == expected


SURROUNDING = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?'-*\n", max_size=40)


@given(
    st.integers(2, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
    SURROUNDING,
    SURROUNDING,
)
def test_a_parenthesised_letter_is_always_extracted(
    choice: tuple[int, int], prefix: str, suffix: str
) -> None:
    count, index = choice
    letter = "ABCDEFGH"[index]
    options = [f"option text {i}" for i in range(count)]
    assert extract_choice(f"{prefix}({letter}){suffix}", options) == letter


def test_option_letters_and_gold_answers() -> None:
    assert strip_option_letters(["A. x", "B. y"]) == ("x", "y")
    assert strip_option_letters(["(A) x", "(B) y"]) == ("x", "y")
    assert strip_option_letters(["x", "C. elegans"]) == ("x", "C. elegans")  # not every option lettered
    assert [gold_letter(a, OPTIONS, "here") for a in (2, "2", "C", "(c)", "green triangle", "", None)] == [
        "C",
        "C",
        "C",
        "C",
        "C",
        None,
        None,
    ]
    with pytest.raises(ValueError, match="here: answer 'purple'"):
        gold_letter("purple", OPTIONS, "here")
    with pytest.raises(ValueError, match="index 7"):
        gold_letter(7, OPTIONS, "here")


# ------------------------------------------------------------------------------------------------------
# Readers


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_read_egoschema_lmms_layout(tmp_path: Path, clips: list[Path], fmt: str) -> None:
    root = egoschema_lmms(tmp_path, clips, fmt)
    subset = read_egoschema(root)
    assert [s.id for s in subset] == ["uid-0", "uid-1"] and [s.gold for s in subset] == ["D", "A"]
    assert subset[0].options == tuple(f"C does thing {j}" for j in range(5))
    assert subset[0].video == root / "videos" / "uid-0.mp4" and subset[0].group is None
    full = read_egoschema(root, full=True)
    assert [s.id for s in full] == ["uid-0", "uid-1", "uid-2"] and {s.gold for s in full} == {None}


def test_read_egoschema_official_layout(tmp_path: Path, clips: list[Path]) -> None:
    root = egoschema_official(tmp_path, clips)
    subset = read_benchmark("egoschema", root)
    assert [(s.id, s.gold) for s in subset] == [("uid-0", "C"), ("uid-2", "B")]
    assert subset[0].options[4] == "because of reason 4" and subset[0].question == "Why does C move 0?"
    full = read_benchmark("egoschema-full", root)
    assert [(s.id, s.gold) for s in full] == [("uid-0", "C"), ("uid-1", None), ("uid-2", "B")]


def test_read_mvbench(tmp_path: Path, clips: list[Path]) -> None:
    root = mvbench(tmp_path, clips)
    samples = read_mvbench(root)
    assert [s.id for s in samples] == ["action_sequence/0", "action_count/0", "action_count/1"]
    sequence, count = samples[0], samples[1]
    assert sequence.group == "action_sequence" and sequence.gold == "C" and sequence.options == OPTIONS
    # The original Charades folder holds whole videos: the question's window applies.
    assert (sequence.start, sequence.end) == (0.5, 1.5)
    assert sequence.video == root / "video" / "star" / "Charades_v1_480" / "CHRD1.mp4"
    assert count.gold == "B" and count.start is None and count.video.exists()
    # The pre-cut segments of the 'video' revision are preferred, and need no window.
    _copy(clips[2], root / "video" / "star" / "Charades_segment" / "CHRD1.mp4")
    cut = read_mvbench(root, tasks=["action_sequence"])[0]
    assert cut.video.parent.name == "Charades_segment" and cut.start is None


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_read_videomme(tmp_path: Path, clips: list[Path], fmt: str) -> None:
    samples = read_videomme(videomme(tmp_path, clips, fmt))
    assert [(s.id, s.group, s.gold) for s in samples] == [
        ("000-1", "short", "C"),
        ("001-1", "medium", "A"),
        ("002-1", "long", "D"),
    ]
    assert samples[0].options == OPTIONS and samples[0].video == tmp_path / "data" / "yt0.mp4"


def test_readers_name_the_file_and_the_missing_field(tmp_path: Path, clips: list[Path]) -> None:
    root = mvbench(tmp_path / "mvbench", clips)
    (root / "json" / "action_count.json").write_text(json.dumps([{"video": "a.mp4", "question": "Q?"}]))
    with pytest.raises(ValueError, match=r"action_count\.json: item 0: missing field 'candidates'"):
        read_mvbench(root)
    root = videomme(tmp_path / "videomme", clips)
    table = root / "videomme" / "test-00000-of-00001.jsonl"
    table.write_text(json.dumps({"question_id": "1", "videoID": "x", "options": ["A. a", "B. b"]}) + "\n")
    with pytest.raises(ValueError, match=r"test-00000-of-00001\.jsonl: row 0: missing field 'question'"):
        read_videomme(root)
    with pytest.raises(FileNotFoundError, match="expected Subset/test-00000-of-00001.parquet"):
        read_egoschema(tmp_path / "videomme")
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        read_videomme(tmp_path / "nowhere")


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "videomme").mkdir()
    (tmp_path / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # the import now fails as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        read_videomme(tmp_path)


def test_a_window_keeps_only_its_frames(clips: list[Path]) -> None:
    sample = Sample("s", clips[0], "Q?", OPTIONS, "A", start=0.5, end=1.5)
    clip = load_sample_clip(sample, num_frames=4)
    assert clip.frame_indices.tolist() == [4, 7, 9, 12]  # 8 fps: frames 4..12 lie in [0.5 s, 1.5 s]
    whole = load_sample_clip(Sample("s", clips[0], "Q?", OPTIONS, "A"), num_frames=4)
    assert whole.frame_indices.tolist() == [0, 5, 10, 15]
    with pytest.raises(ValueError, match="fewer than 2 frames between 5.0 s and 6.0 s"):
        load_sample_clip(Sample("s", clips[0], "Q?", OPTIONS, "A", start=5.0, end=6.0), num_frames=4)


# ------------------------------------------------------------------------------------------------------
# Runs with the tiny model


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the question of every model answer evaluate() asks for."""
    calls: list[str] = []
    real = evaluation.ask

    def counted(model: Any, processor: Any, video: Any, question: str, **kwargs: Any) -> Answer:
        calls.append(question)
        return real(model, processor, video, question, **kwargs)

    monkeypatch.setattr(evaluation, "ask", counted)
    return calls


def _accuracy_from_rows(rows: list[dict[str, Any]], preset: str) -> float | None:
    scored = [r for r in rows if r["preset"] == preset and r["correct"] is not None and not r["error"]]
    return sum(r["correct"] for r in scored) / len(scored) if scored else None


LAYOUTS: dict[str, Callable[[Path, list[Path]], Path]] = {
    "egoschema": egoschema_lmms,
    "mvbench": mvbench,
    "videomme": videomme,
}


@pytest.mark.parametrize("benchmark", list(LAYOUTS))
def test_every_sample_and_preset_gets_a_row_and_the_summary_matches_them(
    benchmark: str, tmp_path: Path, clips: list[Path], tiny_model: Any, tiny_processor: Any
) -> None:
    samples = read_benchmark(benchmark, LAYOUTS[benchmark](tmp_path / "data", clips))
    out = tmp_path / "out"
    summary = evaluate(
        tiny_model, tiny_processor, samples, out, ("baseline", "paper"), benchmark=benchmark, **RUN
    )
    rows = read_rows(out / "predictions.jsonl")
    assert sorted((r["id"], r["preset"]) for r in rows) == sorted(
        (s.id, p) for s in samples for p in ("baseline", "paper")
    )
    assert all(r["error"] is None and r["raw_answer"] is not None for r in rows)
    for row in rows:
        assert row["correct"] == (row["prediction"] == row["gold"])
        assert row["tokens_in"] >= row["tokens_after_stage1"] >= row["tokens_after_stage2"] > 0
        assert row["retention"] == pytest.approx(row["tokens_after_stage2"] / row["tokens_in"])
        assert row["ttft_s"] > 0 and row["latency_s"] >= row["ttft_s"] and row["num_frames"] == 8
        if row["preset"] == "baseline":
            assert row["retention"] == 1.0
    for preset in ("baseline", "paper"):
        entry = summary["presets"][preset]
        assert entry["accuracy"] == _accuracy_from_rows(rows, preset)
        assert entry["scored"] == len(samples) and entry["errors"] == 0
        for group, counts in entry["groups"].items():
            assert counts["accuracy"] == _accuracy_from_rows([r for r in rows if r["group"] == group], preset)
    assert summary["presets"]["paper"]["mean_retention"] < 1.0
    assert summary["presets"]["baseline"]["speedup_ttft"] == 1.0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert "| paper |" in (out / "summary.md").read_text()


def test_scoring_uses_the_extracted_letter(
    tmp_path: Path, clips: list[Path], tiny_model: Any, tiny_processor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With answers fixed, accuracy per preset and group is exactly known."""
    samples = read_videomme(videomme(tmp_path / "data", clips))  # gold C, A, D

    def fixed(model: Any, processor: Any, video: Any, question: str, **kwargs: Any) -> Answer:
        pruned = pruner_of(model).config.enabled
        text = "The answer is (A)." if pruned else "C. green triangle"
        return Answer(text, [1], None, {"ttft": 0.5 if pruned else 1.0, "total": 2.0}, 8)

    monkeypatch.setattr(evaluation, "ask", fixed)
    summary = evaluate(tiny_model, tiny_processor, samples, tmp_path / "out", ("baseline", "paper"), **RUN)
    baseline, paper = summary["presets"]["baseline"], summary["presets"]["paper"]
    assert baseline["accuracy"] == pytest.approx(1 / 3) and baseline["groups"]["short"]["accuracy"] == 1.0
    assert paper["accuracy"] == pytest.approx(1 / 3) and paper["groups"]["medium"]["accuracy"] == 1.0
    assert paper["speedup_ttft"] == pytest.approx(2.0) and paper["speedup_latency"] == pytest.approx(1.0)


def test_a_rerun_skips_what_is_done_and_a_crash_loses_nothing_written(
    tmp_path: Path, clips: list[Path], tiny_model: Any, tiny_processor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = read_mvbench(mvbench(tmp_path / "data", clips))
    out = tmp_path / "out"
    calls = _count_calls(monkeypatch)
    real = evaluation.ask

    def crash_on_fourth(*args: Any, **kwargs: Any) -> Answer:
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies in the fourth answer
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "ask", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), **RUN)
    assert len(read_rows(out / "predictions.jsonl")) == 3

    monkeypatch.setattr(evaluation, "ask", real)
    evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), **RUN)
    assert len(calls) == 3 + 3  # only the 3 pairs missing
    evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), **RUN)
    assert len(calls) == 6  # all done: no model call
    assert len(read_rows(out / "predictions.jsonl")) == 6

    # A crash mid-write leaves a cut last line: dropped, and only that pair is redone.
    path = out / "predictions.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.warns(UserWarning, match="truncated last line"):
        evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), **RUN)
    assert len(calls) == 7 and len(read_rows(path)) == 6

    # A new preset on the same output runs only the new pairs.
    evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper", "stage1_only"), **RUN)
    assert len(calls) == 10


def test_a_corrupt_video_is_an_error_row_and_the_run_goes_on(
    tmp_path: Path, clips: list[Path], tiny_model: Any, tiny_processor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = videomme(tmp_path / "data", clips)
    (root / "data" / "yt1.mp4").write_bytes(bytes(range(256)) * 16)
    (root / "data" / "yt2.mp4").unlink()
    samples = read_videomme(root)
    out = tmp_path / "out"
    calls = _count_calls(monkeypatch)
    summary = evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), **RUN)
    rows = {(r["id"], r["preset"]): r for r in read_rows(out / "predictions.jsonl")}
    assert len(rows) == 6 and len(calls) == 2  # only the good video reached the model
    assert "could not decode" in rows[("001-1", "paper")]["error"]
    assert rows[("002-1", "baseline")]["error"].startswith("FileNotFoundError: video file not found")
    assert rows[("000-1", "paper")]["error"] is None
    assert summary["presets"]["paper"]["errors"] == 2 and summary["presets"]["paper"]["scored"] == 1
    assert summary["presets"]["paper"]["groups"]["long"]["errors"] == 1

    _copy(clips[2], root / "data" / "yt2.mp4")  # the missing video arrives: its rows are retried
    evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), retry_errors=False, **RUN)
    assert len(calls) == 2
    summary = evaluate(tiny_model, tiny_processor, samples, out, ("baseline", "paper"), **RUN)
    assert len(calls) == 4 and summary["presets"]["paper"]["errors"] == 1


def test_many_failures_in_a_row_stop_the_run(tmp_path: Path, tiny_model: Any, tiny_processor: Any) -> None:
    samples = [Sample(f"s{i}", tmp_path / f"missing{i}.mp4", "Q?", OPTIONS, "A") for i in range(5)]
    with pytest.raises(RuntimeError, match="3 samples in a row failed.*video file not found"):
        evaluate(tiny_model, tiny_processor, samples, tmp_path / "out", max_consecutive_errors=3, **RUN)
    assert len(read_rows(tmp_path / "out" / "predictions.jsonl")) == 3 * 2


@pytest.mark.parametrize("layout", ["lmms", "official"])
def test_egoschema_without_answers_writes_the_submission_file(
    layout: str, tmp_path: Path, clips: list[Path], tiny_model: Any, tiny_processor: Any
) -> None:
    make = egoschema_lmms if layout == "lmms" else egoschema_official
    samples = read_egoschema(make(tmp_path / "data", clips), full=True)
    out = tmp_path / "out"
    summary = evaluate(
        tiny_model, tiny_processor, samples, out, ("baseline", "paper"), benchmark="egoschema-full", **RUN
    )
    rows = read_rows(out / "predictions.jsonl")
    for preset in ("baseline", "paper"):
        submission = json.loads((out / f"submission_{preset}.json").read_text())
        assert list(submission) == ["uid-0", "uid-1", "uid-2"]
        for row in (r for r in rows if r["preset"] == preset):
            index = submission[row["id"]]
            assert index == ("ABCDE".index(row["prediction"]) if row["prediction"] else -1)
    if layout == "lmms":  # no answers at all: nothing is scored
        assert summary["presets"]["paper"]["accuracy"] is None and {r["correct"] for r in rows} == {None}


def test_a_different_setting_is_refused_and_limit_spreads_over_groups(
    tmp_path: Path, clips: list[Path], tiny_model: Any, tiny_processor: Any
) -> None:
    samples = read_videomme(videomme(tmp_path / "data", clips))
    out = tmp_path / "out"
    summary = evaluate(tiny_model, tiny_processor, samples, out, ["paper"], limit=2, **RUN)
    assert summary["samples"] == 2
    assert {r["group"] for r in read_rows(out / "predictions.jsonl")} == {"short", "medium"}
    with pytest.raises(ValueError, match="other settings.*num_frames: 8 -> 4"):
        evaluate(tiny_model, tiny_processor, samples, out, ["paper"], **{**RUN, "num_frames": 4})
    custom = {"paper": PruneVidConfig.preset("paper").replace(keep_ratio=0.2)}
    with pytest.raises(ValueError, match="preset 'paper' config changed"):
        evaluate(tiny_model, tiny_processor, samples, out, custom, **RUN)
    with pytest.raises(ValueError, match="unknown preset"):
        evaluate(tiny_model, tiny_processor, samples, tmp_path / "other", ["papr"], **RUN)


def test_an_attached_pruner_is_restored_and_progress_is_reported(
    tmp_path: Path,
    clips: list[Path],
    tiny_model: Any,
    tiny_processor: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    samples = read_videomme(videomme(tmp_path / "data", clips))
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # no tqdm: a plain line per sample
    attach(tiny_model, PruneVidConfig.preset("aggressive"))
    try:
        evaluate(
            tiny_model, tiny_processor, samples, tmp_path / "out", **{**RUN, "progress": True, "warmup": True}
        )
        assert pruner_of(tiny_model).config == PruneVidConfig.preset("aggressive")
    finally:
        pruner_of(tiny_model).detach()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[1/3] 000-1: ")
    assert "acc baseline" in lines[-1] and "| paper" in lines[-1]


def test_cli_eval(
    tmp_path: Path, clips: list[Path], tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    data = egoschema_official(tmp_path / "data", clips)
    out = tmp_path / "out"
    argv = ["eval", "egoschema", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(out)]
    assert main([*argv, "--presets", "baseline,aggressive", "--frames", "8", "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| aggressive |" in printed and "predictions.jsonl" in printed
    assert len(read_rows(out / "predictions.jsonl")) == 2 * 2
    assert (out / "submission_aggressive.json").exists()
    assert main([*argv, "--presets", "nonsense"]) == 2
    assert "unknown preset 'nonsense'" in capsys.readouterr().err
    assert main(["eval", "videomme", "--data", str(tmp_path / "nowhere")]) == 2
    assert "Video-MME data folder not found" in capsys.readouterr().err


def test_cli_eval_compares_reference_methods_at_paper_retention(
    tmp_path: Path, clips: list[Path], tiny_checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    data = egoschema_official(tmp_path / "data", clips)
    out = tmp_path / "out"
    argv = ["eval", "egoschema", "--data", str(data), "--model", str(tiny_checkpoint), "--out", str(out)]
    presets = "paper,random,uniform_frames,evs,fastv"
    assert main([*argv, "--presets", presets, "--frames", "8", "--max-new-tokens", "1"]) == 0
    rows = read_rows(out / "predictions.jsonl")
    assert sorted({r["preset"] for r in rows}) == sorted(presets.split(","))
    paper = [r["retention"] for r in rows if r["preset"] == "paper"]
    stored = json.loads((out / "run.json").read_text())["presets"]
    assert stored["random"]["retention"] == pytest.approx(sum(paper) / len(paper))
    assert stored["fastv"]["method"] == "fastv" and stored["paper"]["enable_stage1"]
    capsys.readouterr()
    assert main([*argv, "--presets", "baseline,random"]) == 2
    assert "add paper to --presets" in capsys.readouterr().err
