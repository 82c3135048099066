"""Time PruneVid Stage 1 (``merge_video``) at the Qwen2.5-VL-7B video shapes.

    python benchmarks/bench_stage1.py --out stage1.json

Shapes: 32 frames at 448x448 (grid (16, 16, 16), 4096 tokens) and 128 frames (grid (64, 16, 16), 16384
tokens), C = 3584, bf16, with video-like structure: a static background per scene, a scene cut halfway,
per-frame noise and a few moving blobs. Runs on CUDA when available (CUDA events, synchronised, warm-up
discarded, median of the repeats), else on CPU as a sanity check. Needs only torch.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"32 frames": (16, 16, 16), "128 frames": (64, 16, 16)}
CHANNELS = 3584  # Qwen2.5-VL-7B LLM hidden size
TOKENS_PER_GRID_FRAME = 2  # M-RoPE t step: second_per_grid_t (2 frames at 2 fps) * tokens_per_second (2)
TEXT_BEFORE_VIDEO = 20  # positions start after a short prompt prefix, as in a real chat template


def _load(name: str, relative: str) -> ModuleType:
    """Import a prunevid module by file path, so the benchmark needs only torch whatever the package's
    ``__init__`` imports (the model adapter needs transformers)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


def make_video(
    grid: tuple[int, int, int], channels: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic vision-tower output with video structure.

    Returns ``(features [N, C] bf16, positions [3, N] int64)``: two scenes (cut at T'/2), each a
    background of 8 region vectors laid out in 4x4-token blocks plus per-position detail; every frame
    adds small noise (cosine to the background about 0.98: static); three 3x3-token blobs move one token
    per frame (dynamic).
    """
    n_frames, height, width = grid
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    block = ((rows // 4) * ((width + 3) // 4) + cols // 4).flatten()  # [L]
    scenes = []
    for _ in range(2):
        regions = randn(8, channels)
        region_of_block = torch.randint(0, 8, (int(block.max()) + 1,), generator=gen, device=device)
        scenes.append(regions[region_of_block[block]] + 0.3 * randn(height * width, channels))
    scene_of_frame = (torch.arange(n_frames, device=device) >= n_frames // 2).long()
    video = torch.stack(scenes)[scene_of_frame] + 0.15 * randn(n_frames, height * width, channels)

    video = video.view(n_frames, height, width, channels)
    for b in range(3):
        blob = randn(channels)
        for t in range(n_frames):
            r = (2 + 4 * b + t) % (height - 2)
            c = (1 + 5 * b + 2 * t) % (width - 2)
            video[t, r : r + 3, c : c + 3] = blob + 0.15 * randn(3, 3, channels)

    tt, hh, ww = torch.meshgrid(
        torch.arange(n_frames, device=device), rows.flatten(), cols.flatten(), indexing="ij"
    )
    positions = torch.stack([tt * TOKENS_PER_GRID_FRAME, hh, ww]).reshape(3, -1) + TEXT_BEFORE_VIDEO
    return video.reshape(-1, channels).to(torch.bfloat16), positions


def time_shape(
    merge_video: Callable[..., Any],
    config: Any,
    grid: tuple[int, int, int],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Median/min wall time of ``merge_video`` on one shape, with what it produced."""
    features, positions = make_video(grid, CHANNELS, device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        result = merge_video(features, grid, positions, config)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_memory = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = merge_video(features, grid, positions, config)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            result = merge_video(features, grid, positions, config)
            times.append((time.perf_counter() - begin) * 1e3)
    row = {
        "grid": list(grid),
        "frames": 2 * grid[0],
        "channels": CHANNELS,
        "dtype": "bfloat16",
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "repeats": repeats,
        "tokens_in": features.shape[0],
        "tokens_out": result.num_tokens,
        "retained": result.num_tokens / features.shape[0],
        "segments": int(result.frame_segments[-1]) + 1,
        "static_tokens": int(result.is_static.sum()),
    }
    if cuda:
        row["peak_extra_memory_mib"] = (torch.cuda.max_memory_allocated(device) - base_memory) / 2**20
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    parser.add_argument("--preset", default="paper", help="PruneVidConfig preset for the Stage 1 parameters")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    args = parser.parse_args(argv)

    config_module = _load("prunevid_config", "prunevid/config.py")
    stage1 = _load("prunevid_stage1_merge", "prunevid/stage1_merge.py")
    config = config_module.PruneVidConfig.preset(args.preset)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"

    report: dict[str, Any] = {
        "benchmark": "prunevid stage1 merge_video",
        "card": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.machine()})",
        "device": str(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "preset": args.preset,
        "config": {
            name: getattr(config, name)
            for name in (
                "tau",
                "temporal_segment_ratio",
                "cluster_ratio",
                "dpc_knn_k",
                "min_tokens_to_cluster",
            )
        },
        "shapes": {},
    }
    if not cuda:
        report["note"] = "no CUDA device: CPU timing, a sanity check only (the target is a GPU)"
        print(report["note"], file=sys.stderr)
    for name in args.shapes:
        row = time_shape(stage1.merge_video, config, SHAPES[name], device, args.warmup, args.repeats)
        report["shapes"][name] = row
        print(
            f"{name:>10} grid {tuple(row['grid'])}: median {row['median_ms']:8.2f} ms, "
            f"min {row['min_ms']:8.2f} ms, {row['tokens_in']} -> {row['tokens_out']} tokens "
            f"({row['retained']:.1%}), "
            f"{row['segments']} segments, {row['static_tokens']} static"
        )
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
