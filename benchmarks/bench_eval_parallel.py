"""Throughput of ``prunevid eval`` batched and data parallel, and pruning on a model split over devices.

    python benchmarks/bench_eval_parallel.py --out results.json            # GPU: 7B architecture
    python benchmarks/bench_eval_parallel.py --tiny --out /tmp/smoke.json  # CPU smoke test, tiny model

Model: the Qwen2.5-VL-7B architecture with random weights built on the GPU in bf16 (SDPA), with the tiny
local processor, exactly as ``benchmarks/bench_e2e.py`` builds it (no download). Random weights: the
answers are meaningless and never stop early, so every answer costs ``--max-new-tokens`` decode steps.

Parts, each written to the JSON as it finishes (a part that fails records its error and the run goes on):

1. ``throughput``: ``evaluate()`` on ``--samples`` generated clips (``--frames`` frames, sizes cycling
   through :data:`SIZES`, written as MP4 and decoded by the evaluation as usual) for ``baseline`` and
   ``paper`` at each ``--batch-sizes`` B, one GPU. Per B and preset: the summary's ``samples_per_s``
   (answered rows over their summed latency, a batch counted once; video decoding excluded), mean TTFT,
   latency and retention; ``wall_s`` of the whole call (both presets, decoding included); and how many
   answers equal B = 1's (bf16 on a GPU: batching changes kernel shapes, so equality is not expected).
   Before each timed call, one untimed call over B samples warms the kernels of that batch shape.
2. ``model_parallel``: greedy tokens of one 32-frame sample under ``paper`` and ``baseline`` on the
   model split at decoder layer ``--split-layer`` (Stage 2 selects at layer 10, below the split, so the
   kept indices cross devices) with accelerate's ``dispatch_model`` (what ``from_pretrained(...,
   device_map=...)`` installs), compared with the single-device tokens:
   ``cuda0+cuda1`` (two GPUs, when there are two), ``cuda0+cpu-offload`` (the layers mapped to ``cpu``
   keep their weights in CPU memory and run on cuda:0, as ``from_pretrained`` does with a ``cpu`` entry)
   and ``cuda0+cpu-compute`` (the upper layers really run on the CPU; a smaller clip, ``--cpu-frames``).
3. ``data_parallel`` (``--data-parallel``, with 2+ GPUs): ``torchrun`` starts one process per GPU, each
   builds the model on its GPU and runs the same ``evaluate()`` calls under ``torch.distributed`` (what
   ``torchrun -m prunevid eval`` does, minus loading a checkpoint); wall time of each call, and whether the
   merged predictions equal the single-GPU run's at the same B.
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_e2e import (  # noqa: E402
    PUBLISHED_CONFIGS,
    _write_json,
    build_random_model,
    environment,
    special_token_ids,
)
from transformers import AutoProcessor  # noqa: E402

from prunevid.benchmarks_data import Sample  # noqa: E402
from prunevid.config import PruneVidConfig  # noqa: E402
from prunevid.evaluation import evaluate, init_distributed, read_rows  # noqa: E402
from prunevid.pipeline import ask  # noqa: E402
from prunevid.qwen2_5_vl import attach  # noqa: E402
from prunevid.synthetic import make_clip, write_video  # noqa: E402
from prunevid.tiny import build_tiny_checkpoint  # noqa: E402
from prunevid.video import VideoClip  # noqa: E402

# Frame sizes (height, width) cycled over the samples: all within 448*448 pixels, multiples of 28, so the
# evaluation's pixel budget keeps them and batches mix video lengths.
SIZES = [(448, 448), (392, 504), (336, 448), (448, 392)]
TINY_SIZES = [(56, 56), (84, 112), (112, 84), (56, 112)]
QUESTION = "Which shape moves first in this video?"
OPTIONS = ("red disc", "blue box", "green triangle", "yellow star")
PRESETS = ("baseline", "paper")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny test model")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--split-layer", type=int, default=12)
    parser.add_argument("--skip-throughput", action="store_true", help="only the model-parallel part")
    parser.add_argument("--mp-new-tokens", type=int, default=8, help="greedy tokens compared in part 2")
    parser.add_argument("--cpu-frames", type=int, default=8, help="frames for the cpu-compute split")
    parser.add_argument("--data-parallel", action="store_true", help="also run part 3 on every GPU")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds from start; then stop")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _elapsed() -> float:
    return time.perf_counter() - _PROCESS_START


def build(args: argparse.Namespace, device: torch.device, folder: Path) -> tuple[Any, Any, str]:
    """The random-weight model on ``device`` and the tiny processor (bench_e2e's recipe)."""
    checkpoint = build_tiny_checkpoint(folder / "tiny-qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(checkpoint)
    if args.tiny:
        config = json.loads((checkpoint / "config.json").read_text())
        source = "random weights, architecture of the tiny test checkpoint (prunevid.tiny)"
        dtype = torch.float32
    else:
        config = {**PUBLISHED_CONFIGS["7b"], **special_token_ids(processor.tokenizer)}
        source = "random weights, Qwen2.5-VL-7B architecture (bench_e2e.PUBLISHED_CONFIGS['7b'])"
        dtype = torch.bfloat16
    return build_random_model(config, device, dtype), processor, source


def write_samples(folder: Path, count: int, frames: int, sizes: list[tuple[int, int]]) -> list[Sample]:
    """``count`` MP4 clips of ``frames`` frames at 2 fps, sizes cycling through ``sizes``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        video = folder / f"clip{index}.mp4"
        if not video.exists():
            write_video(
                make_clip(frames, height, width, seed=index, scene_cut_at=frames // 2), video, fps=2.0
            )
        samples.append(Sample(f"s{index}", video, f"{QUESTION} ({index})", OPTIONS, "ABCD"[index % 4]))
    return samples


def timed_evaluations(
    model: Any,
    processor: Any,
    samples: list[Sample],
    folder: Path,
    args: argparse.Namespace,
    world_size: int = 1,
) -> dict[str, Any]:
    """Per batch size: a warm-up evaluate over one batch per process, then the timed evaluate."""
    results: dict[str, Any] = {}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        if _elapsed() > args.time_budget:
            results[str(batch)] = {"skipped": "time budget"}
            continue
        common = dict(num_frames=args.frames, max_new_tokens=args.max_new_tokens, progress=False)
        evaluate(
            model,
            processor,
            samples,
            folder / f"warmup-b{batch}",
            PRESETS,
            batch_size=batch,
            limit=batch * world_size,
            **common,
        )
        _synchronize_all()
        started = time.perf_counter()
        summary = evaluate(
            model, processor, samples, folder / f"b{batch}", PRESETS, batch_size=batch, warmup=False, **common
        )
        _synchronize_all()
        wall = time.perf_counter() - started
        entry: dict[str, Any] = {"wall_s": wall, "answers_per_s_wall": len(samples) * len(PRESETS) / wall}
        for name in PRESETS:
            preset = summary["presets"][name]
            entry[name] = {
                key: preset[key]
                for key in ("samples_per_s", "mean_ttft_s", "mean_latency_s", "mean_retention", "errors")
            }
        results[str(batch)] = entry
        print(f"[{_elapsed():.0f} s] B={batch} world={world_size}: {json.dumps(entry)}", flush=True)
    return results


def merged_answers(folder: Path) -> dict[str, str]:
    """``"id/preset" -> raw answer`` over every predictions file of an output folder (newest row wins)."""
    answers: dict[str, tuple[float, str]] = {}
    for path in sorted(folder.glob("predictions*.jsonl")):
        for row in read_rows(path):
            key = f"{row['id']}/{row['preset']}"
            if key not in answers or row.get("written_at", 0) >= answers[key][0]:
                answers[key] = (row.get("written_at", 0), row["raw_answer"])
    return {key: value for key, (_, value) in answers.items()}


def agreement(folder: Path, batch_sizes: list[str], reference: Path | None = None) -> dict[str, Any]:
    """Fraction of answers equal to the reference folder's (default: B = 1 of the same run)."""
    out = {}
    base = merged_answers(reference if reference is not None else folder / f"b{batch_sizes[0]}")
    for batch in batch_sizes:
        if not (folder / f"b{batch}").exists():
            continue
        answers = merged_answers(folder / f"b{batch}")
        shared = [k for k in base if k in answers]
        out[batch] = {
            name: sum(answers[k] == base[k] for k in shared if k.endswith("/" + name))
            / max(1, sum(k.endswith("/" + name) for k in shared))
            for name in PRESETS
        }
    return out


def _synchronize_all() -> None:
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


# ------------------------------------------------------------------------------------------ model parallel
def greedy(
    model: Any, processor: Any, clip: VideoClip, config: PruneVidConfig, tokens: int
) -> dict[str, Any]:
    """Greedy tokens of one answer with ``config`` attached, and what was kept."""
    with attach(model, config):
        answer = ask(model, processor, clip, QUESTION, max_new_tokens=tokens)
    stats = answer.stats
    return {
        "tokens": answer.token_ids,
        "video_tokens_in": stats.video_tokens_in,
        "video_tokens_kept": stats.video_tokens_after_stage2,
        "ttft_s": answer.timings["ttft"],
    }


def device_map(model: Any, split: int, lower: str, upper: str, vision: str, embed: str) -> dict[str, str]:
    """The vision tower on ``vision``, token embeddings on ``embed``, decoder layers below ``split`` on
    ``lower``, the rest (upper layers, final norm, rotary table, LM head) on ``upper``."""
    language_model = model.model.language_model
    mapping = {"model.visual": vision, "model.language_model.embed_tokens": embed}
    for index in range(len(language_model.layers)):
        mapping[f"model.language_model.layers.{index}"] = lower if index < split else upper
    for name, _ in language_model.named_children():
        if name not in ("embed_tokens", "layers"):
            mapping[f"model.language_model.{name}"] = upper
    mapping["lm_head"] = upper
    return mapping


# (label, clip, vision, embeddings, lower layers, upper layers, root device given to dispatch_model).
# The root device is where accelerate moves the model's inputs (input_ids, position ids, masks);
# from_pretrained(device_map=...) lets accelerate pick it (the first non-CPU device of a set: either GPU).
GPU_VARIANTS = [
    ("cuda0+cuda1 root cuda:0", "main", "cuda:0", "cuda:0", "cuda:0", "cuda:1", "cuda:0"),
    ("cuda0+cuda1 root cuda:1", "main", "cuda:0", "cuda:0", "cuda:0", "cuda:1", "cuda:1"),
]
CPU_VARIANTS = [
    # The lower layers (Stage 2 selects at layer 10) really run on the CPU, the upper ones on cuda:0.
    ("cpu+cuda0 compute, root cpu", "cpu", "cuda:0", "cpu", "cpu", "cuda:0", "cpu"),
    # Embeddings on cuda:0 but inputs on the CPU root: position ids and embeddings on different devices.
    ("cuda0+cpu compute, root cpu", "cpu", "cuda:0", "cuda:0", "cuda:0", "cpu", "cpu"),
    # from_pretrained's meaning of a "cpu" entry next to a GPU: weights kept in CPU memory, run on cuda:0.
    # Last: offloading leaves meta tensors in the model.
    ("cuda0+cpu offload, root cuda:0", "main", "cuda:0", "cuda:0", "cuda:0", "cpu", "cuda:0"),
]


def model_parallel(model: Any, processor: Any, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Part 2: pruned and stock greedy tokens on split models against the single-device tokens."""
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_module

    home = "cuda:0" if torch.cuda.is_available() else "cpu"
    side = 112 if args.tiny else 448
    clips = {
        "main": _clip(args.frames, side, side),
        "cpu": _clip(args.cpu_frames, side // 2, side // 2),
    }
    configs = {name: PruneVidConfig.preset(name) for name in PRESETS}
    reference = {
        (clip_name, name): greedy(model, processor, clip, config, args.mp_new_tokens)
        for clip_name, clip in clips.items()
        for name, config in configs.items()
    }
    layers = len(model.model.language_model.layers)
    split_layer = min(args.split_layer, layers - 1)
    parts: dict[str, Any] = {
        "split_layer": split_layer,
        "pruning_layer_paper": configs["paper"].resolve_pruning_layer(layers),
    }
    if not torch.cuda.is_available():  # smoke test: the code path on one CPU
        variants = [("cpu+cpu", "cpu", "cpu", "cpu", "cpu", "cpu", "cpu")]
    else:
        variants = (GPU_VARIANTS if torch.cuda.device_count() >= 2 else []) + CPU_VARIANTS
    for label, clip_name, vision, embed, lower, upper, root in variants:
        if _elapsed() > args.time_budget:
            parts[label] = {"skipped": "time budget"}
            continue
        mapping = device_map(model, split_layer, lower, upper, vision, embed)
        entry: dict[str, Any] = {
            "vision": vision,
            "embeddings": embed,
            "layers_below_split": lower,
            "layers_from_split": upper,
            "root": root,
            "clip_frames": clips[clip_name].frames.shape[0],
        }
        try:
            dispatch_model(model, mapping, main_device=root)
            for name, config in configs.items():
                try:
                    split = greedy(model, processor, clips[clip_name], config, args.mp_new_tokens)
                except Exception as error:
                    entry[name] = {"error": f"{type(error).__name__}: {error}", "where": _last_frame(error)}
                    continue
                single = reference[(clip_name, name)]
                entry[name] = {"equal_tokens": split["tokens"] == single["tokens"], "split": split}
                entry[name]["single_device"] = single
        except Exception as error:  # recorded; the next variant runs
            entry["error"] = f"{type(error).__name__}: {error}"
        finally:
            if "offload" not in label:
                remove_hook_from_module(model, recurse=True)
                model.to(home)
        parts[label] = entry
        report["model_parallel"] = parts
        _write_json(report, args.out)
        print(f"[{_elapsed():.0f} s] {label}: " + json.dumps(_brief(entry)), flush=True)


def _last_frame(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "prunevid" in f.filename] or frames
    return f"{ours[-1].filename}:{ours[-1].lineno} {ours[-1].line}" if ours else ""


def _brief(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.get("equal_tokens", v) if isinstance(v, dict) else v) for k, v in entry.items()}


def _clip(frames: int, height: int, width: int) -> VideoClip:
    pixels = make_clip(frames, height, width, seed=7, scene_cut_at=frames // 2)
    return VideoClip(pixels, 2.0, frames, np.arange(frames, dtype=np.int64))


# ------------------------------------------------------------------------------------------ data parallel
def data_parallel(args: argparse.Namespace, data: Path, folder: Path) -> dict[str, Any]:
    """Part 3: ``torchrun`` one worker per GPU (two CPU processes with --tiny)."""
    processes = 2 if args.tiny else torch.cuda.device_count()
    out = folder / "dp.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(Path(__file__).resolve()),
        "--worker",
        "--data",
        str(data),
        "--out",
        str(out),
        *_forwarded(args),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(60, args.time_budget))
    result: dict[str, Any] = {"processes": processes, "returncode": done.returncode}
    result["launch_to_exit_s"] = time.perf_counter() - started
    if done.returncode != 0 or not out.exists():
        result["stderr_tail"] = done.stderr[-4000:]
        return result
    result.update(json.loads(out.read_text()))
    return result


def _forwarded(args: argparse.Namespace) -> list[str]:
    flags = [
        "--samples",
        str(args.samples),
        "--frames",
        str(args.frames),
        "--batch-sizes",
        args.batch_sizes,
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--time-budget",
        str(args.time_budget),
    ]
    return [*flags, "--tiny"] if args.tiny else flags


def worker(args: argparse.Namespace) -> None:
    """One data-parallel rank: its own model on its GPU, the same evaluate() calls."""
    rank, world_size, local_rank = init_distributed()
    device = torch.device("cpu") if args.tiny else torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory(prefix=f"prunevid-dp{rank}-") as tmp:
        built = time.perf_counter()
        model, processor, _ = build(args, device, Path(tmp))
        build_s = time.perf_counter() - built
    samples = write_samples(
        args.data / "clips", args.samples, args.frames, TINY_SIZES if args.tiny else SIZES
    )
    results = timed_evaluations(model, processor, samples, args.data / "dp", args, world_size)
    if rank == 0:
        payload = {"world_size": world_size, "model_build_s_rank0": build_s, "throughput": results}
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    device = torch.device("cpu") if args.tiny else torch.device("cuda:0")
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("needs a CUDA device; use --tiny for a CPU smoke test")
    report: dict[str, Any] = {
        "benchmark": "bench_eval_parallel",
        "environment": environment(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        import accelerate

        report["environment"]["accelerate"] = accelerate.__version__
    except ImportError:
        report["environment"]["accelerate"] = None
    folder = Path(tempfile.mkdtemp(prefix="prunevid-bench-eval-"))
    sizes = TINY_SIZES if args.tiny else SIZES
    needed = not args.skip_throughput or args.data_parallel
    samples = write_samples(folder / "clips", args.samples, args.frames, sizes) if needed else []
    report["samples"] = {"count": len(samples), "frames": args.frames, "sizes": sizes}

    def part(name: str, run: Callable[[], Any]) -> None:
        try:
            report[name] = run()
        except Exception as error:
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        _write_json(report, args.out)

    # Data parallel first, while no model of this process holds GPU 0.
    if args.data_parallel and (args.tiny or torch.cuda.device_count() >= 2):
        part("data_parallel", lambda: data_parallel(args, folder, folder))
    built = time.perf_counter()
    model, processor, source = build(args, device, folder)
    _synchronize_all()
    report["model"] = {"source": source, "build_s": time.perf_counter() - built, "dtype": str(model.dtype)}
    batches = args.batch_sizes.split(",")
    if not args.skip_throughput:
        part("throughput", lambda: timed_evaluations(model, processor, samples, folder, args))
        part("agreement_with_b1", lambda: agreement(folder, batches))
    if "data_parallel" in report and (folder / "dp").exists():
        part(
            "data_parallel_agreement_with_one_process",
            lambda: {b: agreement(folder / "dp", [b], reference=folder / f"b{b}").get(b) for b in batches},
        )
    if _elapsed() < args.time_budget:
        model_parallel(model, processor, args, report)
    report["elapsed_s"] = _elapsed()
    report["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_json(report, args.out)
    print_table(report)
    return report


def print_table(report: dict[str, Any]) -> None:
    print("\nsamples/s (summary: rows over summed latency, per process) | wall answers/s")
    for label, results in (("1 device", report.get("throughput")),):
        _print_results(label, results)
    dp = report.get("data_parallel") or {}
    _print_results(f"{dp.get('world_size', '?')} processes", dp.get("throughput"))
    for label, entry in (report.get("model_parallel") or {}).items():
        if isinstance(entry, dict):
            print(f"model parallel {label}: {json.dumps(_brief(entry))}")
    if "data_parallel_agreement_with_one_process" in report:
        print(
            "data parallel answers equal to one process:", report["data_parallel_agreement_with_one_process"]
        )
    print("batched answers equal to B=1:", report.get("agreement_with_b1"))


def _print_results(label: str, results: Any) -> None:
    if not isinstance(results, dict):
        return
    for batch, entry in results.items():
        if "wall_s" not in entry:
            print(f"{label} B={batch}: {entry}")
            continue
        cells = " | ".join(
            f"{name} {entry[name]['samples_per_s']:.2f}/s ttft {entry[name]['mean_ttft_s']:.3f}"
            for name in PRESETS
        )
        print(f"{label} B={batch}: {cells} | wall {entry['answers_per_s_wall']:.2f} answers/s")


if __name__ == "__main__":
    main()
