"""Readers for the video multiple-choice benchmarks, from the files users download themselves.

Every reader returns a list of :class:`Sample` (one question about one video, options without letters,
the gold letter or None) in a stable order, with stable ids, so an evaluation can be resumed.

Layouts (``DIR`` is the folder given to the reader; field names as published, see each reader):

- EgoSchema, ``lmms-lab/egoschema``: ``DIR/Subset/*.parquet`` (the 500 questions with answers) and
  ``DIR/MC/*.parquet`` (all 5,031, no answers; ``GENERATION`` or ``MC_PPL`` are used if ``MC`` is
  missing); videos ``DIR/videos/<video_idx>.mp4`` (the unzipped ``videos_chunked_*.zip``).
  Or ``egoschema/EgoSchema`` (GitHub): ``DIR/questions.json`` + ``DIR/subset_answers.json``,
  videos ``DIR/videos/<q_uid>.mp4``.
- MVBench, ``OpenGVLab/MVBench``: ``DIR/json/<task>.json`` for the 20 tasks, videos under ``DIR/video/``
  (or ``DIR/videos/``, ``DIR/``) in the task's folder: the pre-cut segments of the dataset's ``video``
  revision (what lmms-eval reads), or the original source folders, whose clips are cut to the JSON's
  ``start``/``end``; ``episodic_reasoning``'s are folders of 3-fps frames,
  ``video/tvqa/frames_fps3_hq/<clip>/00001.jpg ...`` (frame ``k`` of the sorted files at ``k / 3`` s).
- Video-MME, ``lmms-lab/Video-MME``: ``DIR/videomme/test-*.parquet``, videos ``DIR/data/<videoID>.mp4``.
- synthetic (generated here, :func:`prunevid.synthetic_qa.write_eval_set`): ``DIR/synthetic.json``
  (``{"samples": [{"id", "video", "question", "options", "answer", "type"}]}``), videos at the paths it
  names, relative to ``DIR``.

Every table may also be a JSON Lines (``.jsonl``) or JSON (``.json``) export of the same rows (what
``datasets.Dataset.to_json`` writes), which needs no pyarrow.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BENCHMARKS",
    "MVBENCH_TASKS",
    "Sample",
    "gold_letter",
    "read_benchmark",
    "read_egoschema",
    "read_mvbench",
    "read_synthetic",
    "read_table",
    "read_videomme",
    "strip_option_letters",
]

LETTERS = string.ascii_uppercase
BENCHMARKS = ("egoschema", "egoschema-full", "mvbench", "videomme", "synthetic")
TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class Sample:
    """One multiple-choice question about one video.

    Attributes:
        id: unique within its benchmark and stable across reads (EgoSchema ``video_idx``/``q_uid``,
            Video-MME ``question_id``, MVBench ``<task>/<index in the task's JSON>``).
        video: the video file (it may not exist: a missing video is reported when the sample is run).
        question: the question text.
        options: the option texts, without letter prefixes, in letter order (A, B, ...).
        gold: the correct letter, or None where the benchmark does not publish the answer.
        group: the task (MVBench) or duration bucket (Video-MME) accuracy is also reported by; None if none.
        start / end: seconds of the video the question is about (MVBench clips read from the original
            source videos); None for the whole video.
        frame_rate: frames per second of ``video`` when it is a folder of frame images (MVBench's TVQA
            frames: 3); None for a video file.
    """

    id: str
    video: Path
    question: str
    options: tuple[str, ...]
    gold: str | None
    group: str | None = None
    start: float | None = None
    end: float | None = None
    frame_rate: float | None = None


# ------------------------------------------------------------------------------------------------------
# Shared helpers


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``.parquet`` (needs pyarrow), ``.jsonl`` or ``.json`` (a list of objects) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError(
                f"reading {path} needs pyarrow: pip install pyarrow, or convert it to JSON Lines next to it"
            ) from error
        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}: line {number} is not valid JSON ({error})") from error
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from error
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects, got a {type(data).__name__}")
        return data
    raise ValueError(f"{path}: unsupported table format (expected one of {', '.join(TABLE_SUFFIXES)})")


def _table_files(folder: Path, suffixes: Sequence[str] = TABLE_SUFFIXES) -> list[Path]:
    """Table files directly in ``folder``, sorted (``test-00000-of-00002`` before ``-00001-``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _read_tables(files: Iterable[Path]) -> list[tuple[Path, int, dict[str, Any]]]:
    """(file, row number, row) for every row of every file, each checked to be an object."""
    out = []
    for path in files:
        for number, row in enumerate(read_table(path)):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: row {number} is a {type(row).__name__}, expected an object")
            out.append((path, number, row))
    return out


def _field(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    """The first of ``names`` present (and not None) in ``row``; a clear error naming ``where`` if none."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    wanted = " or ".join(repr(n) for n in names)
    present = ", ".join(sorted(map(str, row))) or "none"
    raise ValueError(f"{where}: missing field {wanted} (fields present: {present})")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]\s*(.*)$", re.DOTALL)


def strip_option_letters(options: Sequence[str]) -> tuple[str, ...]:
    """Remove ``"A. "``-style prefixes, but only when every option carries its own letter in order.

    Video-MME and lmms-lab EgoSchema store ``"A. text"``; MVBench stores the bare text. Requiring the
    letters A, B, C... in order keeps a bare option such as ``"C. elegans"`` in third place intact only
    if the others are unprefixed too.
    """
    texts = [str(o) for o in options]
    matches = [_PREFIX.match(t) for t in texts]
    if texts and all(m is not None and m.group(1).upper() == LETTERS[i] for i, m in enumerate(matches)):
        return tuple(m.group(2).strip() for m in matches)
    return tuple(t.strip() for t in texts)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def gold_letter(answer: Any, options: Sequence[str], where: str) -> str | None:
    """The gold answer as a letter, or None when it is missing or empty.

    Read as, in order: the text of one option (MVBench stores the text, and its counting tasks have
    options such as ``"2"``, so the text is tried before an index); a letter (``"B"``, ``"(B)"``,
    ``"B."``, Video-MME); a 0-based index (``1`` or ``"1"``, EgoSchema).
    """
    if _is_missing(answer):
        return None
    count = len(options)
    text = str(answer).strip()
    if not isinstance(answer, (bool, int, float)):
        matches = [i for i, option in enumerate(options) if _normalize(option) == _normalize(text)]
        if len(matches) == 1:
            return LETTERS[matches[0]]
        letter = re.fullmatch(r"\(?([A-Za-z])\)?[.):]?", text)
        if letter and LETTERS.index(letter.group(1).upper()) < count:
            return letter.group(1).upper()
    if isinstance(answer, bool):
        raise ValueError(f"{where}: answer {answer!r} is not a letter, an index or an option")
    if isinstance(answer, (int, float)) and float(answer).is_integer() or text.isdigit():
        index = int(float(text)) if not text.isdigit() else int(text)
        if 0 <= index < count:
            return LETTERS[index]
        raise ValueError(f"{where}: answer index {index} is outside the {count} options")
    raise ValueError(f"{where}: answer {text!r} is neither one of the {count} options, a letter nor an index")


def _options(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or (not isinstance(value, Sequence) and not hasattr(value, "tolist")):
        raise ValueError(f"{where}: options must be a list of strings, got {type(value).__name__}")
    values = value.tolist() if hasattr(value, "tolist") else list(value)
    if not 2 <= len(values) <= len(LETTERS):
        raise ValueError(f"{where}: expected 2..26 options, got {len(values)}")
    return strip_option_letters(values)


def _find_video(roots: Sequence[Path], folders: Sequence[str], name: str) -> Path | None:
    """The first existing ``root/folder/name`` (trying other video extensions of the same stem)."""
    stem = Path(name).stem if Path(name).suffix in VIDEO_SUFFIXES else name
    names = [name] + [stem + s for s in VIDEO_SUFFIXES if stem + s != name]
    for folder in folders:
        for root in roots:
            for candidate in names:
                path = root / folder / candidate
                if path.exists():
                    return path
    return None


def _check_dir(data_dir: str | os.PathLike, benchmark: str) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{benchmark} data folder not found: {str(root)!r}")
    return root


def _check_unique(samples: list[Sample], source: str) -> list[Sample]:
    seen: set[str] = set()
    duplicates = []
    for sample in samples:
        if sample.id in seen:
            duplicates.append(sample.id)
        seen.add(sample.id)
    if duplicates:
        raise ValueError(f"{source}: duplicate sample ids {duplicates[:5]} (ids must be unique to resume)")
    if not samples:
        raise ValueError(f"{source}: no samples")
    return samples


# ------------------------------------------------------------------------------------------------------
# EgoSchema

_EGOSCHEMA_VIDEO_FOLDERS = ("videos", "good_clips_git", ".")


def read_egoschema(data_dir: str | os.PathLike, *, full: bool = False) -> list[Sample]:
    """EgoSchema: the 500-question subset with answers, or (``full=True``) all 5,031 questions.

    The full set's answers are withheld (a submission file is scored by the benchmark's server); gold
    letters are filled in only where the files give them.

    lmms-lab/egoschema fields: ``video_idx`` (id and video name), ``question``, ``option`` (five
    ``"A. ..."`` strings), ``answer`` (0-based index, as a string). egoschema/EgoSchema: ``q_uid``,
    ``question``, ``"option 0"`` .. ``"option 4"``; answers in ``subset_answers.json`` (``{q_uid: index}``).
    """
    root = _check_dir(data_dir, "EgoSchema")
    configs = ("MC", "GENERATION", "MC_PPL") if full else ("Subset",)
    files: list[Path] = []
    for config in configs:
        files = _table_files(root / config)
        if files:
            break
    if files:
        samples = [
            _egoschema_lmms_row(root, path, number, row, full) for path, number, row in _read_tables(files)
        ]
        return _check_unique(samples, str(files[0].parent))
    questions = root / "questions.json"
    if questions.is_file():
        return _check_unique(_read_egoschema_official(root, questions, full), str(questions))
    wanted = "MC/test-*.parquet" if full else "Subset/test-00000-of-00001.parquet"
    raise FileNotFoundError(
        f"no EgoSchema questions under {str(root)!r}: expected {wanted} (lmms-lab/egoschema) or "
        "questions.json + subset_answers.json (egoschema/EgoSchema)"
    )


def _egoschema_video(root: Path, video_id: str) -> Path:
    roots = (root,)
    found = _find_video(roots, _EGOSCHEMA_VIDEO_FOLDERS, video_id + ".mp4")
    return found or root / "videos" / (video_id + ".mp4")


def _egoschema_lmms_row(root: Path, path: Path, number: int, row: dict[str, Any], full: bool) -> Sample:
    where = f"{path}: row {number}"
    video_id = str(_field(row, ("video_idx", "q_uid"), where))
    options = _options(_field(row, ("option", "options"), where), where)
    gold = gold_letter(row.get("answer"), options, where)
    if gold is None and not full:
        raise ValueError(f"{where}: the EgoSchema subset needs field 'answer' (fields: {', '.join(row)})")
    return Sample(
        id=video_id,
        video=_egoschema_video(root, video_id),
        question=str(_field(row, ("question",), where)),
        options=options,
        gold=gold,
    )


def _read_egoschema_official(root: Path, questions_file: Path, full: bool) -> list[Sample]:
    answers_file = root / "subset_answers.json"
    answers: dict[str, Any] = {}
    if answers_file.is_file():
        answers = json.loads(answers_file.read_text(encoding="utf-8"))
        if not isinstance(answers, dict):
            raise ValueError(f"{answers_file}: expected an object {{q_uid: answer index}}")
    elif not full:
        raise FileNotFoundError(f"the EgoSchema subset needs {str(answers_file)!r} next to questions.json")
    samples = []
    for number, row in enumerate(read_table(questions_file)):
        where = f"{questions_file}: item {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is a {type(row).__name__}, expected an object")
        q_uid = str(_field(row, ("q_uid", "video_idx"), where))
        if not full and q_uid not in answers:
            continue
        keys = sorted((k for k in row if re.fullmatch(r"option \d+", k)), key=lambda k: int(k.split()[1]))
        if not keys:
            raise ValueError(f"{where}: missing fields 'option 0' .. 'option 4' (fields: {', '.join(row)})")
        options = _options([row[k] for k in keys], where)
        samples.append(
            Sample(
                id=q_uid,
                video=_egoschema_video(root, q_uid),
                question=str(_field(row, ("question",), where)),
                options=options,
                gold=gold_letter(answers.get(q_uid), options, f"{answers_file}: {q_uid}"),
            )
        )
    return samples


# ------------------------------------------------------------------------------------------------------
# MVBench

_STAR = (("star/Charades_segment", False), ("star/Charades_v1_480", True))
_CLEVRER = (("clevrer/video_validation", False),)
_PERCEPTION = (("perception/videos", False),)

# task -> video folders, each with whether the JSON's start/end still has to be applied. The pre-cut
# segments of the dataset's ``video`` revision come first; then the original release's source folders.
MVBENCH_TASKS: dict[str, tuple[tuple[str, bool], ...]] = {
    "action_sequence": _STAR,
    "action_prediction": _STAR,
    "action_antonym": (("ssv2_video_mp4", False), ("ssv2_video", False)),
    "fine_grained_action": (("Moments_in_Time_Raw/videos", False),),
    "unexpected_action": (("FunQA_test/test", False),),
    "object_existence": _CLEVRER,
    "object_interaction": _STAR,
    "object_shuffle": _PERCEPTION,
    "moving_direction": _CLEVRER,
    "action_localization": (("sta/sta_video_segment", False), ("sta/sta_video", True)),
    "scene_transition": (("scene_qa/video", False),),
    "action_count": _PERCEPTION,
    "moving_count": _CLEVRER,
    "moving_attribute": _CLEVRER,
    "state_change": _PERCEPTION,
    "fine_grained_pose": (("nturgbd_convert", False), ("nturgbd", False)),
    "character_order": _PERCEPTION,
    "egocentric_navigation": (("vlnqa", False),),
    # The original release has this task as folders of 3-fps JPEG frames (00001.jpg, ...), cut to the
    # question's start/end like a source video.
    "episodic_reasoning": (("tvqa/video_fps3_hq_segment", False), ("tvqa/frames_fps3_hq", True)),
    "counterfactual_inference": _CLEVRER,
}


# Folders of frame images and their frame rate (the folder name says it: fps3).
MVBENCH_FRAME_FOLDERS = {"tvqa/frames_fps3_hq": 3.0}


def read_mvbench(data_dir: str | os.PathLike, tasks: Sequence[str] | None = None) -> list[Sample]:
    """MVBench: every task whose JSON is present (or the ``tasks`` named), grouped by task.

    Fields per item of ``json/<task>.json``: ``video`` (file name inside the task's folder), ``question``,
    ``candidates`` (option texts), ``answer`` (the correct candidate's text); ``start``/``end`` (seconds)
    for the tasks cut from longer source videos.
    """
    root = _check_dir(data_dir, "MVBench")
    unknown = sorted(set(tasks or ()) - MVBENCH_TASKS.keys())
    if unknown:
        raise ValueError(f"unknown MVBench task(s) {unknown}: choose from {', '.join(MVBENCH_TASKS)}")
    json_dirs = (root / "json", root)
    # "video/" as on the hub, "videos/" as some guides unpack it, or the folders at the top; lmms-eval
    # also looks in "data0613/".
    video_roots = (root / "video", root / "videos", root, root / "video" / "data0613", root / "data0613")
    samples: list[Sample] = []
    for task in tasks or MVBENCH_TASKS:
        path = next((d / f"{task}.json" for d in json_dirs if (d / f"{task}.json").is_file()), None)
        if path is None:
            if tasks:
                raise FileNotFoundError(
                    f"MVBench task {task!r}: {str(root / 'json' / (task + '.json'))!r} not found"
                )
            continue
        for number, item in enumerate(read_table(path)):
            samples.append(_mvbench_item(task, path, number, item, video_roots))
    if not samples:
        raise FileNotFoundError(
            f"no MVBench task JSON under {str(root)!r}: expected json/<task>.json for tasks such as "
            f"{', '.join(list(MVBENCH_TASKS)[:3])} (OpenGVLab/MVBench)"
        )
    return _check_unique(samples, str(root))


def _mvbench_item(task: str, path: Path, number: int, item: Any, video_roots: Sequence[Path]) -> Sample:
    where = f"{path}: item {number}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} is a {type(item).__name__}, expected an object")
    name = str(_field(item, ("video",), where))
    options = _options(_field(item, ("candidates", "options"), where), where)
    folders = MVBENCH_TASKS[task]
    video, cut, frame_rate = None, False, None
    for folder, needs_cut in folders:
        video = _find_video(video_roots, (folder,), name)
        if video is not None:
            cut = needs_cut
            frame_rate = MVBENCH_FRAME_FOLDERS.get(folder) if video.is_dir() else None
            break
    if video is None:
        base = next((r for r in video_roots[:2] if r.is_dir()), video_roots[2])
        video = base / folders[0][0] / name
    start = end = None
    if cut and item.get("start") is not None and item.get("end") is not None:
        start, end = float(item["start"]), float(item["end"])
    return Sample(
        id=f"{task}/{number}",
        video=video,
        question=str(_field(item, ("question",), where)),
        options=options,
        gold=gold_letter(_field(item, ("answer",), where), options, where),
        group=task,
        start=start,
        end=end,
        frame_rate=frame_rate,
    )


# ------------------------------------------------------------------------------------------------------
# Video-MME


def read_videomme(data_dir: str | os.PathLike) -> list[Sample]:
    """Video-MME, grouped by duration bucket (``short`` / ``medium`` / ``long``).

    Fields (lmms-lab/Video-MME card): ``question_id`` (id), ``videoID`` (YouTube id, the video's file
    name), ``duration``, ``question``, ``options`` (four ``"A. ..."`` strings), ``answer`` (a letter).
    """
    root = _check_dir(data_dir, "Video-MME")
    files = _table_files(root / "videomme") or _table_files(root, (".parquet", ".jsonl"))
    if not files:
        raise FileNotFoundError(
            f"no Video-MME table under {str(root)!r}: expected videomme/test-00000-of-00001.parquet "
            "(lmms-lab/Video-MME)"
        )
    samples = []
    for path, number, row in _read_tables(files):
        where = f"{path}: row {number}"
        video_id = str(_field(row, ("videoID",), where))
        options = _options(_field(row, ("options",), where), where)
        video = _find_video((root,), ("data", "videos", "."), video_id + ".mp4")
        samples.append(
            Sample(
                id=str(_field(row, ("question_id",), where)),
                video=video or root / "data" / (video_id + ".mp4"),
                question=str(_field(row, ("question",), where)),
                options=options,
                gold=gold_letter(row.get("answer"), options, where),
                group=str(_field(row, ("duration",), where)),
            )
        )
    return _check_unique(samples, str(files[0].parent))


# ------------------------------------------------------------------------------------------------------
# Synthetic


def read_synthetic(data_dir: str | os.PathLike) -> list[Sample]:
    """The generated held-out set (:func:`prunevid.synthetic_qa.write_eval_set`), grouped by question type.

    Fields per item of ``DIR/synthetic.json``'s ``samples``: ``id``, ``video`` (path relative to ``DIR``),
    ``question``, ``options`` (four texts), ``answer`` (a letter), ``type`` (colour, shape, direction,
    count, order or end).
    """
    root = _check_dir(data_dir, "synthetic")
    index = root / "synthetic.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"no {str(index)!r}: write the set with prunevid.synthetic_qa.write_eval_set(folder)"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index} is not valid JSON ({error})") from error
    items = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{index}: expected an object with a list 'samples'")
    samples = []
    for number, item in enumerate(items):
        where = f"{index}: sample {number}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is a {type(item).__name__}, expected an object")
        options = _options(_field(item, ("options",), where), where)
        samples.append(
            Sample(
                id=str(_field(item, ("id",), where)),
                video=root / str(_field(item, ("video",), where)),
                question=str(_field(item, ("question",), where)),
                options=options,
                gold=gold_letter(_field(item, ("answer",), where), options, where),
                group=str(_field(item, ("type",), where)),
            )
        )
    return _check_unique(samples, str(index))


def read_benchmark(name: str, data_dir: str | os.PathLike) -> list[Sample]:
    """Samples of benchmark ``name`` (one of :data:`BENCHMARKS`) from ``data_dir``."""
    if name == "egoschema":
        return read_egoschema(data_dir)
    if name == "egoschema-full":
        return read_egoschema(data_dir, full=True)
    if name == "mvbench":
        return read_mvbench(data_dir)
    if name == "videomme":
        return read_videomme(data_dir)
    if name == "synthetic":
        return read_synthetic(data_dir)
    raise ValueError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
