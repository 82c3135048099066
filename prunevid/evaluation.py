"""Accuracy and speed of PruneVid presets on video multiple-choice benchmarks: resumable, one model load.

``evaluate(model, processor, samples, out_dir, presets)`` asks every sample's question under every preset
(the pruner is attached and detached around each answer, so the model is loaded once and the presets see
the same decoded frames) and appends one JSON line per (sample, preset) to ``out_dir/predictions.jsonl``:

    id, preset, group, video, prediction (letter or null), raw_answer, gold, correct,
    num_frames, tokens_in, tokens_after_stage1, tokens_after_stage2, retention, kv_cache_bytes,
    ttft_s, latency_s, video_load_s, error, sample_hash

Resuming: a rerun skips the (id, preset) pairs the file already holds for the same question (by
``sample_hash``); rows that record an error are run again unless ``retry_errors=False``; the newest row of
a pair wins. Each row is flushed and synced before the next answer, and a truncated last line (a crash
mid-write) is dropped, so a crash loses at most the answer being written. ``out_dir/run.json`` keeps the
settings and preset configs; a rerun with different ones is refused rather than mixing results.

At the end ``summary.json`` and ``summary.md`` give accuracy per preset and per group (task or duration
bucket), mean retention, mean TTFT and latency, and the speedup over ``baseline`` on the same samples;
EgoSchema runs also get ``submission_<preset>.json`` (``{id: option index}``, the benchmark server's format).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import string
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from prunevid.benchmarks_data import Sample, read_benchmark
from prunevid.config import PRESETS, PruneVidConfig
from prunevid.pipeline import DEFAULT_MAX_PIXELS, Answer, _FirstTokenClock, _synchronize, ask
from prunevid.prompt import build_inputs
from prunevid.qwen2_5_vl import attach, pruner_of
from prunevid.video import FrameSamplingWarning, VideoClip, load_video

__all__ = [
    "ANSWER_INSTRUCTION",
    "DEFAULT_FRAMES",
    "evaluate",
    "extract_choice",
    "format_prompt",
    "init_distributed",
    "load_sample_clip",
    "predictions_path",
    "read_rows",
    "run_benchmark",
    "summarize",
    "summary_markdown",
]

LETTERS = string.ascii_uppercase
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# Bump when format_prompt changes: rows written with another prompt must not be resumed.
PROMPT_VERSION = 1
# Frames per video when neither fps nor a count is given: long videos (EgoSchema 3 min, Video-MME up to an
# hour) at the 2-fps default of `ask` would not fit in memory.
DEFAULT_FRAMES = 32
DEFAULT_MAX_NEW_TOKENS = 16  # a letter, with room for "The answer is (B)."
PREDICTIONS = "predictions.jsonl"
_PREDICTIONS_GLOB = "predictions*.jsonl"


# ------------------------------------------------------------------------------------------------------
# Prompt and answer extraction (pure)


def format_prompt(question: str, options: Sequence[str]) -> str:
    """The question, one ``"A. text"`` line per option, then :data:`ANSWER_INSTRUCTION`."""
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {str(option).strip()}" for i, option in enumerate(options)]
    lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_WHOLE = re.compile(r"^[\W_]*([A-Za-z])[\W_]*$")
_LEADING = re.compile(r"^\W*([A-Z])(?:[.):\]*,]|$)")
# The keyword is case-insensitive, the letter is not: "the answer is a man" is not option A.
_PHRASE = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)(?:\s+(?i:is|would be|should be))?"
    r"\s*[:\-]?\s*[(\[*]*([A-Z])(?![A-Za-z])"
)
_PAREN = re.compile(r"\(([A-Z])\)")
_TOKEN = re.compile(r"(?<![A-Za-z0-9_'])([A-Z])(?![A-Za-z0-9_'])")
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
# A lone capital followed by a lowercase word is usually a word itself ("A man ...", "I think ...", and
# EgoSchema's camera wearer "C stops ..."), unless the word is one that follows a named option.
_AFTER_A_LETTER = frozenset(
    {"is", "or", "and", "because", "seems", "would", "should", "looks", "fits", "matches"}
)


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter a free-form answer chose, or None if it names none.

    Tried in order, each accepting only letters of the given options: the whole answer is one letter
    (``"b"``, ``"(B)"``, ``"B."``); it starts with a letter and a delimiter (``"B. apples"``,
    ``"B) apples"``); a phrase (``"The answer is B"``, ``"Answer: (C)"``, ``"option D"``); a
    parenthesised letter anywhere (``"... (C) ..."``); the text of an option (exact, contained, or a
    truncated start of one); finally a capital letter standing alone (``"I think B"``, ``"B is right"``),
    but not one followed by a lowercase word other than a few such as "is" ("A man ..." is no answer).
    The first match of a rule wins.
    """
    letters = LETTERS[: len(options)]
    text = text.strip()
    tagged = _TAGGED.search(text)
    if tagged:
        text = tagged.group(1).strip()
    whole = _WHOLE.match(text)
    if whole and whole.group(1).upper() in letters:
        return whole.group(1).upper()
    leading = _LEADING.match(text)
    if leading and leading.group(1) in letters:
        return leading.group(1)
    for pattern in (_PHRASE, _PAREN):
        for match in pattern.finditer(text):
            if match.group(1) in letters:
                return match.group(1)
    by_text = _match_option_text(text, options)
    if by_text is not None:
        return LETTERS[by_text]
    for match in _TOKEN.finditer(text):
        following = _NEXT_WORD.match(text, match.end())
        if following and following.group(1) not in _AFTER_A_LETTER:
            continue
        if match.group(1) in letters:
            return match.group(1)
    return None


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _match_option_text(text: str, options: Sequence[str]) -> int | None:
    """Index of the option the answer quotes: equal, else the longest option it contains (unique), else
    the only option it is the start of (an answer cut by the token limit)."""
    answer = _normalize(text)
    if not answer:
        return None
    normalized = [_normalize(str(o)) for o in options]
    equal = [i for i, o in enumerate(normalized) if o == answer]
    if len(equal) == 1:
        return equal[0]
    contained = [i for i, o in enumerate(normalized) if o and f" {o} " in f" {answer} "]
    if contained:
        longest = max(len(normalized[i]) for i in contained)
        best = [i for i in contained if len(normalized[i]) == longest]
        if len(best) == 1:
            return best[0]
    if len(answer) >= 4:
        starts = [i for i, o in enumerate(normalized) if o.startswith(answer)]
        if len(starts) == 1:
            return starts[0]
    return None


# ------------------------------------------------------------------------------------------------------
# Frames of one sample


def load_sample_clip(
    sample: Sample,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> VideoClip:
    """Decode and sample the frames of ``sample.video`` (only ``[start, end]`` when the sample has one).

    :func:`~prunevid.video.load_video` with the sample's window (qwen-vl-utils' ``video_start`` /
    ``video_end``: source frames ``ceil(start * fps) .. floor(end * fps)``); a folder of frame images
    (MVBench's TVQA frames) is read at the sample's ``frame_rate``.

    Raises:
        FileNotFoundError / ValueError: as :func:`~prunevid.video.load_video`, e.g. fewer than 2 frames
            inside the window.
    """
    with warnings.catch_warnings():
        # Not one warning per video: each row records its frame count, and the summary what was used.
        warnings.simplefilter("ignore", FrameSamplingWarning)
        return load_video(
            sample.video,
            fps=fps,
            num_frames=num_frames,
            max_pixels=max_pixels,
            start=sample.start,
            end=sample.end,
            frame_rate=sample.frame_rate,
        )


# ------------------------------------------------------------------------------------------------------
# The results file


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a predictions file, in file order; unreadable lines are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            # The last line may be cut by a crash mid-write; anything else is damage worth reporting.
            if number < len(lines):
                warnings.warn(
                    f"{path}: line {number} is not valid JSON; its answer will be redone", stacklevel=2
                )
            continue
        if isinstance(row, dict) and "id" in row and "preset" in row:
            rows.append(row)
    return rows


class _Results:
    """Append-only JSON Lines files; the newest row of each (id, preset) counts.

    This process appends to ``path``; rows are read from it and from every other ``predictions*.jsonl``
    beside it (the per-rank files of a data-parallel run, with any world size), so a run resumes from
    whatever any earlier run wrote. Across files the row written last (``written_at``) wins.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._drop_partial_last_line()
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        others = sorted(p for p in path.parent.glob(_PREDICTIONS_GLOB) if p != path)
        for file in [*others, path]:
            for row in read_rows(file):
                key = (str(row["id"]), str(row["preset"]))
                held = self.latest.get(key)
                if held is None or row.get("written_at", 0.0) >= held.get("written_at", 0.0):
                    self.latest[key] = row

    def _drop_partial_last_line(self) -> None:
        # Appending after a cut line would glue the next row to it; the cut answer is redone instead.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            warnings.warn(
                f"{self.path}: dropping a truncated last line ({len(data) - keep} bytes)", stacklevel=3
            )
            with self.path.open("r+b") as file:
                file.truncate(keep)

    def append(self, row: dict[str, Any]) -> None:
        row = {**row, "written_at": time.time()}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self.latest[(row["id"], row["preset"])] = row


def predictions_path(out_dir: str | os.PathLike, rank: int = 0, world_size: int = 1) -> Path:
    """The file a process appends its rows to: ``predictions.jsonl`` for a single process, else
    ``predictions.rank<r>-of-<n>.jsonl`` (one per rank, so ranks never write the same file)."""
    if world_size == 1:
        return Path(out_dir) / PREDICTIONS
    return Path(out_dir) / f"predictions.rank{rank}-of-{world_size}.jsonl"


def _sample_hash(sample: Sample) -> str:
    """What a row's answer depends on in the sample; a changed question or video name reruns it."""
    key = [sample.video.name, sample.question, list(sample.options), sample.gold, sample.start, sample.end]
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------
# Evaluation


def run_benchmark(
    benchmark: str,
    data_dir: str | os.PathLike,
    model: Any,
    processor: Any,
    out_dir: str | os.PathLike,
    **kwargs: Any,
) -> dict[str, Any]:
    """Read ``benchmark`` from ``data_dir`` (see :mod:`prunevid.benchmarks_data`) and :func:`evaluate` it."""
    return evaluate(
        model, processor, read_benchmark(benchmark, data_dir), out_dir, benchmark=benchmark, **kwargs
    )


def evaluate(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    out_dir: str | os.PathLike,
    presets: Sequence[str] | Mapping[str, PruneVidConfig] = ("baseline", "paper"),
    *,
    benchmark: str = "custom",
    fps: float | None = None,
    num_frames: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    limit: int | None = None,
    retry_errors: bool = True,
    warmup: bool = True,
    progress: bool = True,
    max_consecutive_errors: int | None = 20,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Answer every sample under every preset, appending rows to ``out_dir/predictions.jsonl``.

    Data parallel: when ``torch.distributed`` is initialized (``prunevid eval`` under ``torchrun`` or
    ``accelerate launch`` does it, :func:`init_distributed`), every rank must call this with the same
    arguments (it waits at barriers for all of them); rank ``r`` of ``n`` answers samples
    ``r, r + n, ...`` of the planned order with its own model, appends to
    ``predictions.rank<r>-of-<n>.jsonl``, and after a barrier every rank merges all the files; rank 0
    writes the summary. Resuming reads every ``predictions*.jsonl`` in ``out_dir``, so a rerun with
    another number of processes (or one) does only what is missing.

    Args:
        model / processor: a loaded Qwen2.5-VL and its processor. A pruner already attached is detached
            for the run and an equal one attached again at the end (a new handle: use ``pruner_of(model)``).
        samples: from :mod:`prunevid.benchmarks_data` (or your own :class:`Sample` list); ids unique.
        out_dir: created if needed; an existing run there is resumed (same settings only).
        presets: names from :data:`~prunevid.config.PRESETS`, or ``{name: PruneVidConfig}``.
        benchmark: its name, recorded; ``egoschema*`` also writes the submission files.
        fps / num_frames: frame sampling (at most one); default :data:`DEFAULT_FRAMES` frames.
        max_pixels: pixel budget per frame. max_new_tokens: generation limit.
        limit: run only this many samples, taken round-robin over the groups (a small run still covers
            every task / duration bucket), in a fixed order.
        retry_errors: run again the pairs whose stored row records an error (the video may be fixed).
        warmup: before timing, answer the first pending sample once per preset (not recorded), so one-off
            costs (CUDA context, kernel selection) do not land in the first row's TTFT.
        progress: a tqdm bar (a plain line per sample without tqdm) on stderr, with running accuracy.
        max_consecutive_errors: stop (RuntimeError) when this many samples in a row fail under every
            preset; a wrong video folder then costs seconds, not a pass over the whole benchmark.
        batch_size: samples answered by one ``generate`` per preset (left padding; each sample keeps its
            own frame size and pruned length). Rows of a batch share its TTFT and latency; the summary's
            ``samples_per_s`` counts a batch's latency once. ``1`` asks one sample at a time.

    Returns:
        The summary (also in ``summary.json`` / ``summary.md``), see :func:`summarize`.
    """
    if fps is not None and num_frames is not None:
        raise ValueError(f"give fps or num_frames, not both (got fps={fps}, num_frames={num_frames})")
    if fps is None and num_frames is None:
        num_frames = DEFAULT_FRAMES
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    configs = _preset_configs(presets)
    samples = list(samples)
    if len({s.id for s in samples}) != len(samples):
        raise ValueError("sample ids must be unique: they key the rows a rerun resumes from")
    planned = _spread(samples, limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "benchmark": benchmark,
        "model": str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "dtype": str(model.dtype),
        "fps": fps,
        "num_frames": num_frames,
        "max_pixels": max_pixels,
        "max_new_tokens": max_new_tokens,
        "prompt_version": PROMPT_VERSION,
    }
    rank, world_size = _process_group()
    record = _check_run_file(out / "run.json", settings, configs)
    _barrier(world_size)  # every rank has read run.json before rank 0 rewrites it
    if rank == 0:
        (out / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    own_file = predictions_path(out, rank, world_size)
    results = _Results(own_file)

    previous = pruner_of(model)
    previous_config = previous.config if previous is not None else None
    if previous is not None:
        previous.detach()
    try:
        for config in configs.values():
            attach(model, config).detach()  # a bad preset fails here, not as one error row per sample
        runner = _Runner(
            model, processor, configs, results, fps, num_frames, max_pixels, max_new_tokens, batch_size
        )
        shard = planned[rank::world_size]
        runner.run(shard, retry_errors, warmup, progress and rank == 0, max_consecutive_errors, benchmark)
    finally:
        if pruner_of(model) is not None:
            pruner_of(model).detach()
        if previous_config is not None:
            attach(model, previous_config)

    if world_size > 1:
        _barrier(world_size)  # every rank's rows are written
        results = _Results(own_file)  # all ranks' files, merged
    rows = _current_rows(results, planned, configs)
    run_info = {**settings, "batch_size": batch_size, "world_size": world_size}
    summary = summarize(rows, list(configs), settings=run_info, samples=len(planned))
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
        if benchmark.startswith("egoschema"):
            _write_submissions(out, rows, planned, list(configs))
    return summary


def init_distributed() -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT`` (set by both
    launchers). The group is gloo: :func:`evaluate` only needs barriers, on CPUs and GPUs alike, and
    a rank that finishes early may wait long for the others (12 hour timeout).

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` for a process started on its own.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _process_group() -> tuple[int, int]:
    """(rank, world size) of torch.distributed's default group; (0, 1) when none is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _preset_configs(presets: Sequence[str] | Mapping[str, PruneVidConfig]) -> dict[str, PruneVidConfig]:
    if isinstance(presets, Mapping):
        configs = dict(presets)
        for name, config in configs.items():
            if not isinstance(config, PruneVidConfig):
                raise TypeError(f"preset {name!r}: expected a PruneVidConfig, got {type(config).__name__}")
    else:
        if isinstance(presets, str):
            presets = [presets]
        configs = {name: PruneVidConfig.preset(name) for name in dict.fromkeys(presets)}
    if not configs:
        raise ValueError(f"no presets given: choose from {', '.join(PRESETS)}")
    return configs


def _spread(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples taken round-robin over groups (all samples if ``limit`` is None)."""
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    groups: dict[str | None, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.group, []).append(sample)
    order = []
    for rank in range(max(len(g) for g in groups.values())):
        order += [g[rank] for g in groups.values() if rank < len(g)]
    return order[:limit]


def _check_run_file(
    path: Path, settings: dict[str, Any], configs: dict[str, PruneVidConfig]
) -> dict[str, Any]:
    """Refuse to resume a run made with other settings or preset configs; return the record to write."""
    preset_dicts = {name: dataclasses.asdict(config) for name, config in configs.items()}
    stored: dict[str, Any] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        old = stored.get("settings", {})
        changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        old_presets = stored.get("presets", {})
        changed += [
            f"preset {name!r} config changed"
            for name, config in preset_dicts.items()
            if name in old_presets and old_presets[name] != config
        ]
        if changed:
            raise ValueError(
                f"{path.parent} holds a run with other settings ({'; '.join(changed)}): "
                "choose another output folder, or delete it to start over"
            )
    record = {
        "settings": settings,
        "presets": {**stored.get("presets", {}), **preset_dicts},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return record


class _Runner:
    """The per-sample loop: decode once, answer under each preset, write each row as soon as it exists."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        configs: dict[str, PruneVidConfig],
        results: _Results,
        fps: float | None,
        num_frames: int | None,
        max_pixels: int | None,
        max_new_tokens: int,
        batch_size: int = 1,
    ) -> None:
        self.model = model
        self.processor = processor
        self.configs = configs
        self.results = results
        self.sampling = {"fps": fps, "num_frames": num_frames, "max_pixels": max_pixels}
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def pending(self, sample: Sample, retry_errors: bool) -> list[str]:
        todo = []
        for name in self.configs:
            row = self.results.latest.get((sample.id, name))
            if (
                row is None
                or row.get("sample_hash") != _sample_hash(sample)
                or (retry_errors and row.get("error"))
            ):
                todo.append(name)
        return todo

    def run(
        self,
        planned: list[Sample],
        retry_errors: bool,
        warmup: bool,
        progress: bool,
        max_consecutive_errors: int | None,
        benchmark: str,
    ) -> None:
        work = [(s, self.pending(s, retry_errors)) for s in planned]
        work = [(s, todo) for s, todo in work if todo]
        if not work:
            return
        if warmup:
            self._warmup(work[0][0])
        tally = _Tally(self.configs)
        redo = {(s.id, name) for s, todo in work for name in todo}
        for row in _current_rows(self.results, planned, self.configs):
            if (row["id"], row["preset"]) not in redo:
                tally.add(row)
        bar = _Progress(len(work), benchmark, progress)
        failures = 0
        try:
            for number, start in enumerate(range(0, len(work), self.batch_size)):
                chunk = work[start : start + self.batch_size]
                if self.batch_size == 1:
                    sample, todo = chunk[0]
                    # Rotate the preset order per sample so no preset always runs first (caches, clocks).
                    shift = number % len(todo)
                    answered = [(sample, self._answer(sample, todo[shift:] + todo[:shift]))]
                else:
                    answered = self._answer_batch(chunk, number)
                for sample, rows in answered:
                    for row in rows:
                        tally.add(row)
                    failures = failures + 1 if all(r["error"] for r in rows) else 0
                    bar.step(sample, rows, tally)
                    if max_consecutive_errors is not None and failures >= max_consecutive_errors:
                        raise RuntimeError(
                            f"{failures} samples in a row failed under every preset; last error: "
                            f"{rows[-1]['error']} (rows so far are saved in {self.results.path})"
                        )
        finally:
            bar.close()

    def _warmup(self, sample: Sample) -> None:
        try:
            clip = load_sample_clip(sample, **self.sampling)
        except Exception:  # the real pass records this sample's error
            return
        prompt = format_prompt(sample.question, sample.options)
        for config in self.configs.values():
            try:
                with attach(self.model, config):
                    ask(self.model, self.processor, clip, prompt, max_new_tokens=2)
            except Exception:  # likewise recorded by the real pass
                _release_memory(self.model)

    def _answer(self, sample: Sample, todo: list[str]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        clip, load_error = None, None
        try:
            clip = load_sample_clip(sample, **self.sampling)
        except Exception as error:  # a bad video is a row; the run goes on
            load_error = _describe(error)
        load_seconds = time.perf_counter() - started
        prompt = format_prompt(sample.question, sample.options)
        rows = []
        for name in todo:
            if clip is None:
                row = _row(sample, name, error=load_error)
            else:
                try:
                    with attach(self.model, self.configs[name]):
                        answer = ask(
                            self.model, self.processor, clip, prompt, max_new_tokens=self.max_new_tokens
                        )
                    row = _row(sample, name, answer=answer, video_load_s=load_seconds)
                except Exception as error:  # e.g. out of memory on one long video: a row too
                    _release_memory(self.model)
                    row = _row(sample, name, error=_describe(error), video_load_s=load_seconds)
            self.results.append(row)
            rows.append(row)
        return rows

    def _answer_batch(
        self, chunk: list[tuple[Sample, list[str]]], number: int
    ) -> list[tuple[Sample, list[dict[str, Any]]]]:
        """Decode the chunk's videos, then per preset answer all its samples that need it in one
        ``generate``; a batch that fails is answered again one sample at a time (one bad sample, e.g. out
        of memory on a long video, costs its own row only)."""
        clips: dict[str, VideoClip] = {}
        load_errors: dict[str, str] = {}
        load_seconds: dict[str, float] = {}
        for sample, _ in chunk:
            started = time.perf_counter()
            try:
                clips[sample.id] = load_sample_clip(sample, **self.sampling)
            except Exception as error:  # a bad video is a row; the run goes on
                load_errors[sample.id] = _describe(error)
            load_seconds[sample.id] = time.perf_counter() - started
        names = list(dict.fromkeys(name for _, todo in chunk for name in todo))
        shift = number % len(names)  # rotate the preset order per batch, as per sample at batch size 1
        rows: dict[str, list[dict[str, Any]]] = {sample.id: [] for sample, _ in chunk}
        for name in names[shift:] + names[:shift]:
            members = [sample for sample, todo in chunk if name in todo]
            for sample in members:
                if sample.id in load_errors:
                    rows[sample.id].append(self._store(_row(sample, name, error=load_errors[sample.id])))
            ready = [sample for sample in members if sample.id in clips]
            for sample, answer, error, batch in self._generate_batch(ready, clips, name):
                row = _row(
                    sample,
                    name,
                    answer=answer,
                    error=error,
                    video_load_s=load_seconds[sample.id],
                    batch_size=batch,
                )
                rows[sample.id].append(self._store(row))
        return [(sample, rows[sample.id]) for sample, _ in chunk]

    def _generate_batch(
        self, samples: list[Sample], clips: dict[str, VideoClip], name: str
    ) -> list[tuple[Sample, Answer | None, str | None, int]]:
        """``(sample, answer, error, size of the batch that answered it)`` for each sample, answered
        together under preset ``name``."""
        if not samples:
            return []
        prompts = [format_prompt(s.question, s.options) for s in samples]
        try:
            with attach(self.model, self.configs[name]):
                answers = ask_batch(
                    self.model,
                    self.processor,
                    [clips[s.id] for s in samples],
                    prompts,
                    max_new_tokens=self.max_new_tokens,
                )
            return [(s, a, None, len(samples)) for s, a in zip(samples, answers, strict=True)]
        except Exception as error:
            _release_memory(self.model)
            if len(samples) == 1:
                return [(samples[0], None, _describe(error), 1)]
        return [result for s in samples for result in self._generate_batch([s], clips, name)]

    def _store(self, row: dict[str, Any]) -> dict[str, Any]:
        self.results.append(row)
        return row


def ask_batch(
    model: Any,
    processor: Any,
    clips: Sequence[VideoClip],
    prompts: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[Answer]:
    """Greedy answers to B (clip, prompt) pairs from one ``generate`` (:func:`~prunevid.pipeline.ask`
    for a batch): prompts padded on the left, each clip at its own size.

    Args:
        model: a Qwen2.5-VL, with or without a pruner attached.
        processor: its processor.
        clips: B sampled clips, frames ``uint8 [T_b, H_b, W_b, 3]``.
        prompts: B non-empty prompts.
        max_new_tokens: generation limit.

    Returns:
        B :class:`~prunevid.pipeline.Answer`: text and tokens of each row (up to its end-of-sequence
        token); ``stats`` holds that row's sample of the pruner's statistics, with the batch's KV-cache
        bytes divided by B; ``timings`` (``ttft``, ``decode``, ``total``, ``preprocess``) are the batch's.
    """
    started = time.perf_counter()
    inputs = build_inputs(processor, list(clips), list(prompts)).to(model.device)
    preprocessed = _synchronize(model)
    streamer = _FirstTokenClock(model)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
    finished = _synchronize(model)
    first_token = streamer.first_token_at or finished
    timings = {
        "preprocess": preprocessed - started,
        "ttft": first_token - preprocessed,
        "decode": finished - first_token,
        "total": finished - started,
    }
    pruner = pruner_of(model)
    stats = None if pruner is None else pruner.last_stats
    generated = output[:, inputs["input_ids"].shape[1] :]
    stop_ids = _stop_token_ids(model)
    answers = []
    for row, clip in enumerate(clips):
        tokens = generated[row].tolist()
        # Finished rows are padded to the longest; ask() on its own would have stopped at the stop token.
        for index, token in enumerate(tokens):
            if token in stop_ids:
                tokens = tokens[: index + 1]
                break
        row_stats = None
        if stats is not None:
            row_stats = dataclasses.replace(
                stats,
                samples=[stats.samples[row]],
                kv_cache_bytes=stats.kv_cache_bytes // len(clips),
                kv_cache_bytes_unpruned=stats.kv_cache_bytes_unpruned // len(clips),
            )
        text = processor.batch_decode([tokens], skip_special_tokens=True)[0]
        answers.append(
            Answer(
                text=text.strip(),
                token_ids=tokens,
                stats=row_stats,
                timings=dict(timings),
                num_frames=int(np.asarray(clip.frames).shape[0]),
            )
        )
    return answers


def _stop_token_ids(model: Any) -> set[int]:
    """The ids ``generate`` stops a row at (the generation config's ``eos_token_id``, one or several)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _release_memory(model: Any) -> None:
    if getattr(model, "device", torch.device("cpu")).type == "cuda":
        torch.cuda.empty_cache()


def _row(
    sample: Sample,
    preset: str,
    *,
    answer: Any = None,
    error: str | None = None,
    video_load_s: float | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": sample.id,
        "preset": preset,
        "group": sample.group,
        "video": str(sample.video),
        "prediction": None,
        "raw_answer": None,
        "gold": sample.gold,
        "correct": None,
        "num_frames": None,
        "tokens_in": None,
        "tokens_after_stage1": None,
        "tokens_after_stage2": None,
        "retention": None,
        "kv_cache_bytes": None,
        "ttft_s": None,
        "latency_s": None,
        "video_load_s": video_load_s,
        "error": error,
        "sample_hash": _sample_hash(sample),
        "batch_size": batch_size,
    }
    if answer is not None:
        prediction = extract_choice(answer.text, sample.options)
        stats = answer.stats
        row.update(
            prediction=prediction,
            raw_answer=answer.text,
            correct=None if sample.gold is None else prediction == sample.gold,
            num_frames=answer.num_frames,
            ttft_s=answer.timings["ttft"],
            # With the frames already decoded, `total` is the chat template + processor + generate().
            latency_s=answer.timings["total"],
        )
        if stats is not None:
            row.update(
                tokens_in=stats.video_tokens_in,
                tokens_after_stage1=stats.video_tokens_after_stage1,
                tokens_after_stage2=stats.video_tokens_after_stage2,
                retention=stats.retention,
                kv_cache_bytes=stats.kv_cache_bytes,
            )
    return row


def _current_rows(
    results: _Results, planned: list[Sample], configs: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The newest row of each planned (sample, preset) that matches the sample as it is now."""
    rows = []
    for sample in planned:
        for name in configs:
            row = results.latest.get((sample.id, name))
            if row is not None and row.get("sample_hash") == _sample_hash(sample):
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------
# Progress


class _Tally:
    """Running accuracy per preset."""

    def __init__(self, names: Iterable[str]) -> None:
        self.scored = dict.fromkeys(names, 0)
        self.correct = dict.fromkeys(names, 0)

    def add(self, row: dict[str, Any]) -> None:
        if row.get("correct") is not None and not row.get("error"):
            self.scored[row["preset"]] += 1
            self.correct[row["preset"]] += bool(row["correct"])

    def text(self) -> str:
        parts = []
        for name, scored in self.scored.items():
            parts.append(f"{name} {self.correct[name] / scored:.1%}" if scored else f"{name} -")
        return " | ".join(parts)


class _Progress:
    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.total = total
        self.count = 0
        self.enabled = enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total, desc=description, unit="sample", file=sys.stderr, dynamic_ncols=True
                )

    def step(self, sample: Sample, rows: list[dict[str, Any]], tally: _Tally) -> None:
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(tally.text(), refresh=False)
            self.bar.update(1)
            return
        answers = " ".join(
            f"{r['preset']}=ERROR" if r["error"] else f"{r['preset']}={r['prediction'] or '?'}" for r in rows
        )
        print(
            f"[{self.count}/{self.total}] {sample.id}: {answers} | acc {tally.text()}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------------
# Summary


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if r.get("correct") is not None and not r.get("error")]
    correct = sum(bool(r["correct"]) for r in scored)
    return {
        "rows": len(rows),
        "scored": len(scored),
        "correct": correct,
        "accuracy": correct / len(scored) if scored else None,
        "errors": sum(bool(r.get("error")) for r in rows),
    }


def summarize(
    rows: Sequence[dict[str, Any]],
    presets: Sequence[str],
    *,
    settings: dict[str, Any] | None = None,
    samples: int | None = None,
    baseline: str = "baseline",
) -> dict[str, Any]:
    """Per preset: accuracy (correct / scored, where scored rows have a gold letter and no error), errors,
    unparsed answers, mean tokens per stage and retention, mean TTFT and latency, the speedup over
    ``baseline`` (ratio of its mean to the preset's, over the samples both answered), and ``samples_per_s``
    (answered rows over their summed latency, a batch counted once: one process's throughput, decoding
    excluded); per group the same accuracy counts."""
    by_preset = {name: [r for r in rows if r["preset"] == name] for name in presets}
    answered = {name: {r["id"]: r for r in rs if not r.get("error")} for name, rs in by_preset.items()}
    summary: dict[str, Any] = {**(settings or {}), "samples": samples, "presets": {}}
    # What the rows used, which can be fewer frames than asked for (short videos, caps).
    used = [r["num_frames"] for r in rows if r.get("num_frames") and not r.get("error")]
    summary["frames_used"] = [min(used), max(used)] if used else None
    for name, preset_rows in by_preset.items():
        ok = list(answered[name].values())
        entry = _accuracy(preset_rows)
        entry["unparsed"] = sum(r.get("prediction") is None for r in ok)
        for key in (
            "tokens_in",
            "tokens_after_stage1",
            "tokens_after_stage2",
            "retention",
            "ttft_s",
            "latency_s",
        ):
            entry[f"mean_{key}"] = _mean(r.get(key) for r in ok)
        for key in ("ttft_s", "latency_s"):
            entry[f"speedup_{key.removesuffix('_s')}"] = _speedup(answered.get(baseline), answered[name], key)
        # A batch's latency is shared by its rows: each row costs latency / batch size.
        seconds = [r["latency_s"] / (r.get("batch_size") or 1) for r in ok if r.get("latency_s")]
        entry["samples_per_s"] = len(seconds) / sum(seconds) if seconds else None
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in preset_rows:
            if row.get("group") is not None:
                groups.setdefault(str(row["group"]), []).append(row)
        entry["groups"] = {group: _accuracy(group_rows) for group, group_rows in groups.items()}
        summary["presets"][name] = entry
    return summary


def _speedup(base: dict[str, dict] | None, other: dict[str, dict], key: str) -> float | None:
    if base is None:
        return None
    shared = [i for i in other if i in base and base[i].get(key) and other[i].get(key)]
    if not shared:
        return None
    return sum(base[i][key] for i in shared) / sum(other[i][key] for i in shared)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables: one row per preset, then accuracy per group and preset."""
    presets = summary["presets"]
    sampling = (
        f"{summary.get('num_frames')} frames" if summary.get("num_frames") else f"{summary.get('fps')} fps"
    )
    used = summary.get("frames_used")
    if used and not (summary.get("num_frames") and used == [summary["num_frames"]] * 2):
        counts = f"{used[0]}" if used[0] == used[1] else f"{used[0]}-{used[1]}"
        sampling = f"{sampling} asked, {counts} frames used"
    header = (
        "preset",
        "accuracy %",
        "scored",
        "errors",
        "unparsed",
        "video tokens in -> stage 1 -> stage 2",
        "retention %",
        "TTFT s",
        "TTFT speedup",
        "latency s",
        "latency speedup",
        "samples/s",
    )
    lines = [
        f"# {summary.get('benchmark', 'evaluation')}: {summary.get('model', '')}",
        "",
        f"{summary.get('samples')} samples, {sampling}, at most {summary.get('max_pixels')} pixels a frame, "
        f"{summary.get('dtype')}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, e in presets.items():
        stages = ("tokens_in", "tokens_after_stage1", "tokens_after_stage2")
        cells = (
            name,
            _percent(e["accuracy"]),
            str(e["scored"]),
            str(e["errors"]),
            str(e["unparsed"]),
            " -> ".join(_number(e[f"mean_{k}"], 0) for k in stages),
            _percent(e["mean_retention"]),
            _number(e["mean_ttft_s"]),
            _number(e["speedup_ttft"], 2),
            _number(e["mean_latency_s"]),
            _number(e["speedup_latency"], 2),
            _number(e.get("samples_per_s"), 2),
        )
        lines.append("| " + " | ".join(cells) + " |")
    groups = list(dict.fromkeys(g for e in presets.values() for g in e["groups"]))
    if groups:
        lines += ["", "Accuracy % by group:", "", "| group | " + " | ".join(presets) + " |"]
        lines.append("|---|" + "---|" * len(presets))
        for group in groups:
            cells = [_percent(e["groups"].get(group, {}).get("accuracy")) for e in presets.values()]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_submissions(
    out: Path, rows: list[dict[str, Any]], planned: list[Sample], presets: list[str]
) -> None:
    """EgoSchema server format ``{q_uid: option index}``; -1 for an answer naming no option (lmms-eval's
    convention); samples whose row is an error are left out (and counted in the summary's errors)."""
    for name in presets:
        latest = {r["id"]: r for r in rows if r["preset"] == name and not r.get("error")}
        answers = {
            s.id: (LETTERS.index(latest[s.id]["prediction"]) if latest[s.id]["prediction"] else -1)
            for s in planned
            if s.id in latest
        }
        (out / f"submission_{name}.json").write_text(json.dumps(answers, indent=1) + "\n", encoding="utf-8")
