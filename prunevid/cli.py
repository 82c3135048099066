"""The prunevid command: ask a question about a video, run the offline demo, or evaluate presets.

Only light modules are imported here; torch and transformers load inside the commands, so that
`prunevid --help` and `prunevid --version` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prunevid import __version__
from prunevid.benchmarks_data import BENCHMARKS
from prunevid.config import PRESETS, PruneVidConfig
from prunevid.pipeline import DEFAULT_MODEL, Answer
from prunevid.video import DEFAULT_MAX_PIXELS, MAX_FRAMES, FrameSamplingWarning

if TYPE_CHECKING:
    from prunevid.video import VideoClip

# Where `prunevid eval synthetic` writes the held-out set when no --data is given (the original regime's
# default seed; other regimes and seeds get their own folders: _synthetic_data_folder).
SYNTHETIC_DATA = Path("prunevid-eval") / "synthetic-data"
SYNTHETIC_REGIMES = ("original", "realistic")  # prunevid.synthetic_qa.REGIMES
# Values of modules that import torch, restated for the help text (tests/test_cli.py checks they agree).
REFERENCE_METHODS = ("random", "uniform_frames", "evs", "fastv")  # prunevid.reference_methods.METHODS
EVAL_DEFAULT_FRAMES = 32  # prunevid.evaluation.DEFAULT_FRAMES
EVAL_DEFAULT_MAX_NEW_TOKENS = 16  # prunevid.evaluation.DEFAULT_MAX_NEW_TOKENS
SYNTHETIC_HELD_OUT = 1000  # questions in the synthetic held-out set
BUNDLED = (
    "bundled"  # --model name of the small model that ships with prunevid (prunevid/data/synthetic-model)
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunevid`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # Frame caps are printed as notes by the commands; library chatter is not the answer.
            warnings.simplefilter("ignore", FrameSamplingWarning)
            return args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError, ImportError) as error:
        print(f"prunevid: error: {error}", file=sys.stderr)
        return 2


DESCRIPTION = """\
Training-free video token pruning (PruneVid) for Qwen2.5-VL, Qwen2-VL, Qwen3-VL and Qwen3-VL-MoE on stock
transformers.

examples:
  prunevid demo                                  offline: the bundled small model, stock vs paper
  prunevid ask clip.mp4 "What happens?" --model Qwen/Qwen2.5-VL-7B-Instruct
  prunevid ask clip.mp4 "What happens?" --model Qwen/Qwen3-VL-8B-Instruct
  prunevid eval synthetic --limit 20             offline accuracy of presets on generated clips
  prunevid explain clip.mp4 "What happens?" --model bundled --out explained
                                                 what the model still sees, drawn per frame
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunevid", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"prunevid {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    ask_cmd = commands.add_parser(
        "ask",
        help="answer a question about a video",
        description="Answer a question about a video with a Qwen2.5-VL, Qwen2-VL, Qwen3-VL or Qwen3-VL-MoE "
        "checkpoint and a PruneVid preset. "
        "The video is decoded (and checked) before the model loads.",
    )
    ask_cmd.add_argument("video", help="path of a video file")
    ask_cmd.add_argument("question")
    ask_cmd.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local checkpoint folder, or {BUNDLED!r}: the small model that ships with prunevid, "
        f"trained on generated clips (default {DEFAULT_MODEL})",
    )
    _add_common(ask_cmd)
    _add_frame_options(ask_cmd)
    ask_cmd.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode on static KV buffers, the step replayed from a CUDA graph (PruneVidConfig.fast_decode)",
    )
    ask_cmd.set_defaults(run=_run_ask)

    demo = commands.add_parser(
        "demo",
        help="offline: a generated clip, a question about it and the small model trained on such clips, "
        "stock vs a preset side by side",
        description="Offline: generate a clip, ask a multiple-choice question about it, and answer it with "
        "the small Qwen2.5-VL that ships with prunevid, stock and pruned side by side.",
    )
    _add_common(demo)
    demo.add_argument(
        "--sample", type=int, default=0, help="which held-out question of the synthetic benchmark (default 0)"
    )
    demo.add_argument("--save-clip", type=Path, help="also keep the generated clip as this video file")
    demo.set_defaults(run=_run_demo, max_new_tokens=16)
    _add_eval(commands)
    _add_explain(commands)
    return parser


def _add_eval(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "eval",
        help="accuracy and speed of presets on a benchmark (EgoSchema, MVBench, Video-MME, synthetic)",
        description="Answer every question of a locally downloaded benchmark under each preset with one "
        "model load; rows go to OUT/predictions.jsonl as they are made (a rerun resumes), the summary to "
        "OUT/summary.json and OUT/summary.md.",
    )
    command.add_argument(
        "benchmark", choices=BENCHMARKS, help="egoschema is the 500-question subset with answers"
    )
    command.add_argument(
        "--data",
        type=Path,
        help="the benchmark's folder, as downloaded from the hub (synthetic: what the run needs is written "
        f"there; default {SYNTHETIC_DATA}, or prunevid-eval/synthetic-realistic-data for --regime realistic)",
    )
    command.add_argument(
        "--regime",
        choices=SYNTHETIC_REGIMES,
        default="original",
        help="synthetic only: original (224x224x16 clips, 512 video tokens) or realistic (448x448x32, 4096 "
        "video tokens, panning backgrounds); each regime has its own held-out set and bundled model",
    )
    command.add_argument(
        "--seed",
        type=int,
        help="synthetic only: the generator stream of the held-out set (default: the regime's held-out "
        "seed, 20261127 original, 20261130 realistic)",
    )
    command.add_argument(
        "--model",
        help=f"hub id, local checkpoint folder or {BUNDLED!r} (default {DEFAULT_MODEL}; for synthetic, "
        "the bundled small model trained on the regime: prunevid/data/synthetic-model or "
        "synthetic-model-realistic, whose sibling synthetic-model-realistic-dropout was trained with token "
        "dropout)",
    )
    command.add_argument(
        "--presets",
        default="baseline,paper",
        help=f"comma-separated presets ({', '.join(PRESETS)}), each also at another strength as "
        "NAME@k<keep_ratio>[c<cluster_ratio>][+<static_time>] (e.g. coverage@k0.2c1+ends), and reference "
        f"methods to compare with ({', '.join(REFERENCE_METHODS)}); default baseline,paper",
    )
    command.add_argument(
        "--retention",
        default="auto",
        help="video-token retention of the reference methods: a fraction, or auto (default): the mean "
        "retention paper reached on the same samples",
    )
    command.add_argument("--limit", type=int, help="only N samples, spread over the tasks / duration buckets")
    sampling = command.add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames", type=int, help=f"frames sampled evenly per video (default {EVAL_DEFAULT_FRAMES})"
    )
    sampling.add_argument("--fps", type=float, help="frames sampled per second of video instead")
    command.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget per frame")
    command.add_argument("--max-new-tokens", type=int, default=EVAL_DEFAULT_MAX_NEW_TOKENS)
    command.add_argument("--out", type=Path, help="output folder (default prunevid-eval/BENCHMARK-MODEL)")
    command.add_argument(
        "--fast-decode",
        action="store_true",
        help="the presets decode on static KV buffers with a CUDA-graph step (PruneVidConfig.fast_decode)",
    )
    command.add_argument(
        "--no-retry-errors", action="store_true", help="on a rerun, keep rows that recorded an error"
    )
    command.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="samples per generate() for each preset (default 1); on several GPUs launch with "
        "`torchrun --nproc_per_node N -m prunevid eval ...` or `accelerate launch -m prunevid eval ...`: "
        "each process takes every N-th sample with its own model",
    )
    command.set_defaults(run=_run_eval)


def _quiet_libraries() -> None:
    """The answer, not weight-loading bars and processor deprecation chatter."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def preset_config(name: str) -> PruneVidConfig:
    """A preset by name, or at another strength: ``NAME@k<keep_ratio>[c<cluster_ratio>][+<static_time>]``,
    the point names of ``benchmarks/accuracy_study.py``'s tables (e.g. ``coverage@k0.2c1`` or
    ``coverage@k0.2c1+ends``), so that ``prunevid eval`` reproduces every row of them.

    Raises:
        ValueError: an unknown preset, a strength not written that way, a strength the preset has no stage
            for (``keep_ratio`` needs Stage 2, ``cluster_ratio`` and ``static_time`` Stage 1), or an invalid
            value.
    """
    base, at, strength = name.partition("@")
    config = PruneVidConfig.preset(base)
    if not at:
        return config
    match = re.fullmatch(r"k(\d+(?:\.\d+)?)(?:c(\d+(?:\.\d+)?))?(?:\+(\w+))?", strength)
    if match is None:
        raise ValueError(
            f"{name!r}: a preset's strength is written NAME@k<keep_ratio>, optionally followed by "
            "c<cluster_ratio> and +<static_time>, e.g. coverage@k0.2c1 or coverage@k0.2c1+ends"
        )
    if not config.enable_stage2:
        raise ValueError(f"{name!r}: {base} has no Stage 2, so no keep_ratio to set")
    changes: dict[str, object] = {"keep_ratio": float(match[1])}
    stage1 = {"cluster_ratio": None if match[2] is None else float(match[2]), "static_time": match[3]}
    for field, value in stage1.items():
        if value is not None:
            if not config.enable_stage1:
                raise ValueError(f"{name!r}: {base} has no Stage 1, so no {field} to set")
            changes[field] = value
    return config.replace(**changes)


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from prunevid import synthetic_qa
    from prunevid.benchmarks_data import read_benchmark
    from prunevid.evaluation import PREDICTIONS, evaluate, init_distributed, summary_markdown
    from prunevid.pipeline import load
    from prunevid.reference_methods import METHODS, reference_config

    _quiet_libraries()
    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    methods = [name for name in names if name in METHODS]
    # Unknown names and a bad --retention fail before the model loads.
    configs = {
        name: preset_config(name).replace(fast_decode=args.fast_decode)
        for name in names
        if name not in METHODS
    }
    if methods and args.retention == "auto" and "paper" not in configs:
        raise ValueError(
            "--retention auto matches paper's retention: add paper to --presets or give a number"
        )
    retention = None if args.retention == "auto" else float(args.retention)
    synthetic = args.benchmark == "synthetic"
    if args.data is None and not synthetic:
        raise ValueError(f"--data is required for {args.benchmark}: the benchmark's downloaded folder")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if not synthetic and (args.regime != "original" or args.seed is not None):
        raise ValueError(
            f"--regime and --seed choose the synthetic benchmark's questions, not {args.benchmark}'s"
        )
    regime = synthetic_qa.REGIMES[args.regime]
    seed = regime.eval_seed if args.seed is None else args.seed
    data = args.data or _synthetic_data_folder(args.regime, seed, regime.eval_seed)
    if synthetic and args.data is not None:  # a folder of the other regime (or another --seed) is refused
        synthetic_qa.check_eval_set(data, args.regime, args.seed)
    rank, world_size, local_rank = init_distributed()  # one process per GPU under torchrun / accelerate
    writes = synthetic and (args.data is None or not (data / synthetic_qa.INDEX_FILE).is_file())
    if writes and rank == 0:  # one writer; the other ranks wait below
        # Only the questions this run asks (the first N: --limit takes them in order over the types); the
        # default folder grows as later runs ask for more. A --data folder that holds a set is used as is.
        wanted = min(args.limit or SYNTHETIC_HELD_OUT, SYNTHETIC_HELD_OUT)
        synthetic_qa.write_eval_set(data, wanted, seed, progress=True, regime=args.regime)
    if world_size > 1:
        torch.distributed.barrier()
    bundled = synthetic_qa.MODEL_DIR_REALISTIC if args.regime == "realistic" else synthetic_qa.MODEL_DIR
    model_id = (
        (bundled if args.model == BUNDLED else _model_path(args.model))
        if args.model
        else (bundled if synthetic else DEFAULT_MODEL)
    )
    samples = read_benchmark(args.benchmark, data)  # bad data fails before the model loads
    # The realistic regime's rows are labelled apart, so a run folder never mixes the two regimes.
    label = "synthetic-realistic" if synthetic and args.regime == "realistic" else args.benchmark
    suffix = f"-seed{seed}" if synthetic and seed != regime.eval_seed else ""
    out = args.out or Path("prunevid-eval") / f"{label}-{Path(str(model_id).rstrip('/')).name}{suffix}"
    kwargs: dict = {"device_map": "auto"} if torch.cuda.is_available() else {}
    if world_size > 1 and torch.cuda.is_available():
        kwargs["device_map"] = {"": local_rank}
    if synthetic and not torch.cuda.is_available():
        kwargs["dtype"] = torch.float32  # the small model in float32: faster than bfloat16 on a CPU
    with _step(f"loading {model_id}"):
        model, processor, pruner = load(model_id, PruneVidConfig.preset("baseline"), **kwargs)
    pruner.detach()  # evaluate() attaches each preset in turn
    run = functools.partial(
        evaluate,
        model,
        processor,
        samples,
        out,
        benchmark=label,
        fps=args.fps,
        num_frames=args.frames,
        max_pixels=args.max_pixels,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        retry_errors=not args.no_retry_errors,
        batch_size=args.batch_size,
    )
    summary = run(configs) if configs else None
    if methods:
        if retention is None:
            retention = summary["presets"]["paper"]["mean_retention"]
        configs.update({name: reference_config(name, retention) for name in methods})
        summary = run(configs)  # resumes: only the reference methods' rows are new
    if rank > 0:
        return 0  # rank 0 prints the merged summary
    print(summary_markdown(summary))
    rows = out / (PREDICTIONS if world_size == 1 else f"predictions.rank*-of-{world_size}.jsonl")
    print(f"rows: {rows}; summary: {out / 'summary.json'}, {out / 'summary.md'}")
    return 0


def _add_explain(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "explain",
        help="draw which parts of a video reached the model's last layer after pruning",
        description="Answer a question about one or more videos (all in one prompt) under a preset and draw, "
        "per video, a contact sheet OUT/video<i>.png: each sampled frame with the tokens that reached the "
        "last layer at full brightness, tokens merged into another one tinted with that token's colour, "
        "dropped tokens dimmed, and a bar of the tokens left after each stage; the counts per frame and "
        "stage go to OUT/explain.json. The videos are decoded (and checked) before the model loads.",
    )
    command.add_argument(
        "videos", nargs="+", metavar="VIDEO", help="path of a video file (two or more: all in one prompt)"
    )
    command.add_argument("question")
    command.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local checkpoint folder, or {BUNDLED!r}: the small model that ships with prunevid "
        f"(default {DEFAULT_MODEL})",
    )
    command.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="what to prune (default paper)"
    )
    command.add_argument(
        "--compare",
        default="",
        help="comma-separated presets and reference methods drawn beside --preset on the same frames "
        f"({', '.join(REFERENCE_METHODS)} keep the retention --preset reached, or --retention)",
    )
    command.add_argument("--retention", type=float, help="video-token retention of the reference methods")
    command.add_argument(
        "--out", type=Path, default=Path("prunevid-explain"), help="output folder (default prunevid-explain)"
    )
    command.add_argument(
        "--video",
        action="store_true",
        help="also write OUT/video<i>.mp4: the overlay at the sampled frame rate",
    )
    _add_frame_options(command)
    command.add_argument("--max-new-tokens", type=int, default=32)
    command.add_argument("--json", action="store_true", help="print explain.json's record instead of text")
    command.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    command.set_defaults(run=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from prunevid.explain import check_methods, explain
    from prunevid.pipeline import check_model_source
    from prunevid.video import load_video

    compare = [name.strip() for name in args.compare.split(",") if name.strip()]
    methods = check_methods([args.preset, *compare], args.retention)  # fails before anything loads
    if not args.question.strip():
        raise ValueError("the question must be a non-empty string: PruneVid selects tokens by the question")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file: give a folder")
    synthetic = args.model == BUNDLED
    args.model = _model_path(args.model)
    check_model_source(args.model)  # a typo fails now, not after decoding
    clips = []
    for path in args.videos:  # decoded and checked before the model loads
        with _step(f"decoding {path}", args.quiet) as details:
            clip = load_video(
                path,
                fps=args.fps,
                num_frames=args.frames,
                max_frames=args.max_frames,
                max_pixels=args.max_pixels,
            )
            details.append(_describe_clip(clip))
        _print_notes(clip, args.quiet)
        clips.append(clip)
    import torch

    from prunevid.pipeline import load

    _quiet_libraries()
    kwargs: dict = {"device_map": "auto"} if torch.cuda.is_available() else {}
    if synthetic and not torch.cuda.is_available():
        kwargs["dtype"] = torch.float32  # the small model in float32: faster than bfloat16 on a CPU
    with _step(f"loading {args.model}", args.quiet):
        model, processor, pruner = load(args.model, PruneVidConfig.preset("baseline"), **kwargs)
    pruner.detach()  # explain attaches each method in turn
    result = explain(
        model,
        processor,
        clips,
        args.question,
        args.out,
        methods=methods,
        retention=args.retention,
        video=args.video,
        max_new_tokens=args.max_new_tokens,
        sources=[str(path) for path in args.videos],
        progress=None if args.quiet else lambda line: print(f"prunevid: {line}", file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    for method in result.methods:
        print(f"[{method.name}] answer: {method.answer!r}")
        print(f"  {method.stats.summary()}".replace("\n", "\n  "))
    files = [*result.files["sheets"], *result.files.get("videos", []), result.files["json"]]
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _add_frame_options(command: argparse.ArgumentParser) -> None:
    """How ``ask`` and ``explain`` sample and size a video's frames."""
    sampling = command.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, help="frames sampled per second of video (default 2)")
    sampling.add_argument("--frames", type=int, help="number of frames sampled evenly over the video")
    command.add_argument(
        "--max-frames", type=int, default=MAX_FRAMES, help=f"at most this many frames (default {MAX_FRAMES})"
    )
    command.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"pixel budget per frame (default {DEFAULT_MAX_PIXELS}, 448x448)",
    )


def _add_common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="what to prune (default paper)"
    )
    command.add_argument("--max-new-tokens", type=int, default=128)
    command.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    command.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


@contextlib.contextmanager
def _step(what: str, quiet: bool = False) -> Iterator[list[str]]:
    """Print ``prunevid: <what> ...`` on stderr as a step starts and its time (and any detail the block
    appends to the yielded list) when it ends."""
    details: list[str] = []
    if not quiet:
        print(f"prunevid: {what} ...", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        yield details
    except BaseException:
        if not quiet:
            print(" failed", file=sys.stderr, flush=True)
        raise
    if not quiet:
        extra = "".join(f" {d};" for d in details)
        print(f"{extra} {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _print_notes(clip: VideoClip, quiet: bool) -> None:
    for note in clip.notes:
        print(f"prunevid: note: {note}", file=sys.stderr)


def _synthetic_data_folder(regime: str, seed: int, default_seed: int) -> Path:
    """Default held-out folder of the synthetic ``regime`` and ``seed``: :data:`SYNTHETIC_DATA` for the
    original regime's default seed, ``prunevid-eval/synthetic-realistic-data`` for the realistic one's, and
    ``...-seed<seed>-data`` for any other seed (sets never mix)."""
    name = "synthetic" if regime == "original" else f"synthetic-{regime}"
    if seed != default_seed:
        name += f"-seed{seed}"
    return SYNTHETIC_DATA.with_name(f"{name}-data")


def _model_path(model: str) -> str | Path:
    """``--model`` as given, or the bundled model's folder for :data:`BUNDLED`."""
    if model == BUNDLED:
        from prunevid.synthetic_qa import MODEL_DIR

        return MODEL_DIR
    return model


def _describe_clip(clip: VideoClip) -> str:
    frames, height, width = clip.frames.shape[:3]
    return f"{frames} frames of {width}x{height}"


def _run_ask(args: argparse.Namespace) -> int:
    from prunevid.pipeline import ask, check_model_source, load
    from prunevid.video import load_video

    args.model = _model_path(args.model)
    check_model_source(args.model)  # a typo fails now, not after decoding
    # The video is decoded (exists, decodes, has >= 2 frames) before the model loads: a wrong path must
    # not cost a 7B model load.
    with _step(f"decoding {args.video}", args.quiet) as details:
        clip = load_video(
            args.video,
            fps=args.fps,
            num_frames=args.frames,
            max_frames=args.max_frames,
            max_pixels=args.max_pixels,
        )
        details.append(_describe_clip(clip))
    _print_notes(clip, args.quiet)
    import torch

    _quiet_libraries()
    kwargs = {"device_map": "auto"} if torch.cuda.is_available() else {}
    with _step(f"loading {args.model}", args.quiet):
        config = PruneVidConfig.preset(args.preset).replace(fast_decode=args.fast_decode)
        model, processor, _ = load(args.model, config, **kwargs)
    with _step(f"answering ({args.preset})", args.quiet):
        answer = ask(model, processor, clip, args.question, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"preset": args.preset, **answer.to_dict(), "notes": list(clip.notes)}))
    else:
        print(answer.text)
        print(summary(args.preset, answer))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from prunevid import synthetic_qa
    from prunevid.evaluation import extract_choice, format_prompt
    from prunevid.pipeline import ask, load
    from prunevid.qwen2_5_vl import attach, pruner_of
    from prunevid.synthetic import write_video
    from prunevid.video import load_video

    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0, got {args.sample}")
    _quiet_libraries()
    checkpoint = synthetic_qa.MODEL_DIR
    with _step("loading the bundled small model", args.quiet):
        model, processor, _ = load(checkpoint, PruneVidConfig.preset("baseline"), dtype=torch.float32)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        with _step(f"generating clip and question {args.sample}", args.quiet):
            sample = synthetic_qa.make_sample(synthetic_qa.EVAL_SEED, args.sample)
            question = format_prompt(sample.question, sample.options)
            video = write_video(
                sample.frames, args.save_clip or Path(folder) / "demo.mp4", fps=synthetic_qa.FPS
            )
        with _step("decoding it", args.quiet) as details:
            clip = load_video(video)
            details.append(_describe_clip(clip))
        with _step("warming up (a first generate pays one-off costs; not compared)", args.quiet):
            ask(model, processor, clip, question, max_new_tokens=1)
        for name in ("baseline", args.preset):
            pruner = pruner_of(model)
            if pruner is not None:
                pruner.detach()
            attach(model, PruneVidConfig.preset(name))
            label = "stock answer (baseline)" if name == "baseline" else f"pruned answer ({name})"
            with _step(label, args.quiet):
                results[name] = ask(model, processor, clip, question, max_new_tokens=args.max_new_tokens)
        pruner_of(model).detach()
    chosen = {name: extract_choice(answer.text, sample.options) for name, answer in results.items()}
    if args.json:
        record = {
            "question": question,
            "gold": sample.answer,
            "results": {k: {**v.to_dict(), "choice": chosen[k]} for k, v in results.items()},
        }
        print(json.dumps(record))
        return 0
    print("prunevid demo: a generated clip (shapes on a textured background, some moving; appear, disappear,")
    print(f"change colour, scene cuts) and a small Qwen2.5-VL trained on such clips ({checkpoint}).")
    print(f"\n{question}\ncorrect answer: {sample.answer}")
    for name, answer in results.items():
        label = "stock (baseline)" if name == "baseline" else name
        verdict = "right" if chosen[name] == sample.answer else "wrong"
        print(f"\n[{label}] answer: {answer.text!r} -> {chosen[name] or 'no choice'} ({verdict})")
        print(summary(name, answer))
    return 0


def summary(preset: str, answer: Answer) -> str:
    """Two lines: tokens per stage and KV cache, then timings."""
    lines = []
    if answer.stats is not None:
        lines.append(f"  {answer.stats.summary()}")
    t = answer.timings
    lines.append(
        f"  {answer.num_frames} frames; preset {preset}; time to first token {t['ttft']:.3f} s, "
        f"decode {t['decode']:.3f} s, whole answer {t['ttft'] + t['decode']:.3f} s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
