"""The ``prunevid`` command: ``ask`` a question about a video, or run the offline ``demo``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers

from prunevid import synthetic_qa
from prunevid.config import PRESETS, PruneVidConfig
from prunevid.pipeline import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, Answer, ask, load
from prunevid.qwen2_5_vl import attach, pruner_of
from prunevid.reference_methods import METHODS

# Where `prunevid eval synthetic` writes the held-out set when no --data is given.
SYNTHETIC_DATA = Path("prunevid-eval") / "synthetic-data"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunevid`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # the answer, not weight-loading bars
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        print(f"prunevid: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunevid", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    ask_cmd = commands.add_parser("ask", help="answer a question about a video")
    ask_cmd.add_argument("video", help="path of a video file")
    ask_cmd.add_argument("question")
    ask_cmd.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"hub id or local checkpoint (default {DEFAULT_MODEL})"
    )
    _add_common(ask_cmd)
    sampling = ask_cmd.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, help="frames sampled per second of video (default 2)")
    sampling.add_argument("--frames", type=int, help="number of frames sampled evenly over the video")
    ask_cmd.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget per frame")
    ask_cmd.set_defaults(run=_run_ask)

    demo = commands.add_parser(
        "demo",
        help="offline: a generated clip, a question about it and the small model trained on such clips, "
        "stock vs a preset side by side",
    )
    _add_common(demo)
    demo.add_argument(
        "--sample", type=int, default=0, help="which held-out question of the synthetic benchmark (default 0)"
    )
    demo.set_defaults(run=_run_demo, max_new_tokens=16)
    _add_eval(commands)
    return parser


def _add_eval(commands: argparse._SubParsersAction) -> None:
    from prunevid.benchmarks_data import BENCHMARKS
    from prunevid.evaluation import DEFAULT_FRAMES, DEFAULT_MAX_NEW_TOKENS

    command = commands.add_parser(
        "eval",
        help="accuracy and speed of presets on a benchmark (EgoSchema, MVBench, Video-MME), resumable",
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
        help="the benchmark's folder, as downloaded from the hub (synthetic: written there if missing; "
        f"default {SYNTHETIC_DATA})",
    )
    command.add_argument(
        "--model",
        help=f"hub id or local checkpoint (default {DEFAULT_MODEL}; for synthetic, the small model trained "
        "on it that ships with prunevid)",
    )
    command.add_argument(
        "--presets",
        default="baseline,paper",
        help=f"comma-separated presets ({', '.join(PRESETS)}) and reference methods to compare with "
        f"({', '.join(METHODS)}); default baseline,paper",
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
        "--frames", type=int, help=f"frames sampled evenly per video (default {DEFAULT_FRAMES})"
    )
    sampling.add_argument("--fps", type=float, help="frames sampled per second of video instead")
    command.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel budget per frame")
    command.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    command.add_argument("--out", type=Path, help="output folder (default prunevid-eval/BENCHMARK-MODEL)")
    command.add_argument(
        "--no-retry-errors", action="store_true", help="on a rerun, keep rows that recorded an error"
    )
    command.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from prunevid.benchmarks_data import read_benchmark
    from prunevid.evaluation import PREDICTIONS, evaluate, summary_markdown
    from prunevid.reference_methods import reference_config

    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    methods = [name for name in names if name in METHODS]
    # Unknown names and a bad --retention fail before the model loads.
    configs = {name: PruneVidConfig.preset(name) for name in names if name not in METHODS}
    if methods and args.retention == "auto" and "paper" not in configs:
        raise ValueError(
            "--retention auto matches paper's retention: add paper to --presets or give a number"
        )
    retention = None if args.retention == "auto" else float(args.retention)
    synthetic = args.benchmark == "synthetic"
    if args.data is None and not synthetic:
        raise ValueError(f"--data is required for {args.benchmark}: the benchmark's downloaded folder")
    data = args.data or SYNTHETIC_DATA
    if synthetic and not (data / synthetic_qa.INDEX_FILE).is_file():
        print(f"prunevid: writing the synthetic held-out set to {data}", file=sys.stderr)
        synthetic_qa.write_eval_set(data)
    model_id = args.model or (synthetic_qa.MODEL_DIR if synthetic else DEFAULT_MODEL)
    try:
        samples = read_benchmark(args.benchmark, data)  # bad data fails before the model loads
    except ImportError as error:
        print(f"prunevid: error: {error}", file=sys.stderr)
        return 2
    out = args.out or Path("prunevid-eval") / f"{args.benchmark}-{Path(str(model_id).rstrip('/')).name}"
    kwargs: dict = {"device_map": "auto"} if torch.cuda.is_available() else {}
    if synthetic and not torch.cuda.is_available():
        kwargs["dtype"] = torch.float32  # the small model in float32: faster than bfloat16 on a CPU
    model, processor, pruner = load(model_id, PruneVidConfig.preset("baseline"), **kwargs)
    pruner.detach()  # evaluate() attaches each preset in turn
    run = functools.partial(
        evaluate,
        model,
        processor,
        samples,
        out,
        benchmark=args.benchmark,
        fps=args.fps,
        num_frames=args.frames,
        max_pixels=args.max_pixels,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        retry_errors=not args.no_retry_errors,
    )
    summary = run(configs) if configs else None
    if methods:
        if retention is None:
            retention = summary["presets"]["paper"]["mean_retention"]
        configs.update({name: reference_config(name, retention) for name in methods})
        summary = run(configs)  # resumes: only the reference methods' rows are new
    print(summary_markdown(summary))
    print(f"rows: {out / PREDICTIONS}; summary: {out / 'summary.json'}, {out / 'summary.md'}")
    return 0


def _add_common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="what to prune (default paper)"
    )
    command.add_argument("--max-new-tokens", type=int, default=128)
    command.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _run_ask(args: argparse.Namespace) -> int:
    kwargs = {"device_map": "auto"} if torch.cuda.is_available() else {}
    model, processor, _ = load(args.model, PruneVidConfig.preset(args.preset), **kwargs)
    answer = ask(
        model,
        processor,
        args.video,
        args.question,
        fps=args.fps,
        num_frames=args.frames,
        max_pixels=args.max_pixels,
        max_new_tokens=args.max_new_tokens,
    )
    if args.json:
        print(json.dumps({"preset": args.preset, **answer.to_dict()}))
    else:
        print(answer.text)
        print(summary(args.preset, answer))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from prunevid.evaluation import extract_choice, format_prompt
    from prunevid.synthetic import write_video

    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0, got {args.sample}")
    checkpoint = synthetic_qa.MODEL_DIR
    model, processor, _ = load(checkpoint, PruneVidConfig.preset("baseline"), dtype=torch.float32)
    sample = synthetic_qa.make_sample(synthetic_qa.EVAL_SEED, args.sample)
    question = format_prompt(sample.question, sample.options)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        video = write_video(sample.frames, Path(folder) / "demo.mp4", fps=synthetic_qa.FPS)
        for name in ("baseline", args.preset):
            pruner = pruner_of(model)
            if pruner is not None:
                pruner.detach()
            attach(model, PruneVidConfig.preset(name))
            results[name] = ask(model, processor, video, question, max_new_tokens=args.max_new_tokens)
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
    stats = answer.stats
    if stats is not None:
        lines.append(
            f"  video tokens: {stats.video_tokens_in} in -> {stats.video_tokens_after_stage1} after stage 1"
            f" -> "
            f"{stats.video_tokens_after_stage2} after stage 2 ({stats.retention:.1%} kept); "
            f"KV cache {stats.kv_cache_bytes / 2**20:.2f} MiB "
            f"(unpruned {stats.kv_cache_bytes_unpruned / 2**20:.2f} MiB)"
        )
    t = answer.timings
    lines.append(
        f"  {answer.num_frames} frames; preset {preset}; time to first token {t['ttft']:.3f} s, "
        f"decode {t['decode']:.3f} s, total {t['total']:.3f} s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
