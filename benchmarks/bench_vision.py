"""Time the Qwen2.5-VL-7B vision tower: stock SDPA (one call per attention window) vs prunevid's fast_vision.

    python benchmarks/bench_vision.py --out vision.json          # CUDA: 7B vision tower, bf16, 448x448
    python benchmarks/bench_vision.py --tiny --out tiny.json     # CPU smoke run with tiny sizes

The tower has the real 7B architecture (depth 32, hidden 1280, 16 heads, MLP 3420, out 3584, full attention
in blocks 7/15/23/31, 112-px windows) with random bf16 weights built on the device; it sits in a
``Qwen2_5_VLForConditionalGeneration`` with a one-layer text model so that ``prunevid.attach(model,
"fast" preset)`` switches the path exactly as in use. Inputs: random pixel rows of the processor's
shape, ``[T/2 * 32 * 32, 1176]`` with ``grid_thw = [[T/2, 32, 32]]`` for T frames at 448x448.

For 16, 32, 64 and 128 frames: stock and fast runs interleaved (order alternating), CUDA events, warm-up
discarded, median of ``--repeats``; the peak memory of one call of each; ``max |fast - stock|`` of the
merged features and the last hidden state (must be 0.0). Then exactness (and a short timing) on frame
sizes whose windows have several lengths or whose full-attention frame pairs are short, a
``torch.profiler`` table of the fast path at 32 frames (top CUDA and CPU ops by self time, SDPA call
counts of both paths), and the achieved TFLOP/s from the FLOP count below. Needs torch + transformers.

FLOPs of one tower call (a multiply-add is 2 FLOPs), ``n`` patch rows, hidden ``D``, MLP ``I``, output
``O``, ``K = 3 * 2 * 14 * 14 = 1176`` values per patch row:
    patch embedding       2 n K D
    per block             2 n D (3D) [qkv] + 2 n D D [proj] + 3 * 2 n D I [gated MLP]
                          + 4 D * sum_w L_w^2 [QK^T and PV over the block's windows of L_w rows]
    merger                2 (n/4) (4D)^2 + 2 (n/4) (4D) O
Windowed blocks have windows of 4x4 merged tokens (at most 64 rows), full-attention blocks one window per
frame pair (h * w rows). Norms, rotary, softmax and activations are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunevid import PruneVidConfig, attach  # noqa: E402  (after the path set-up)
from prunevid.models import qwen2_5_vl as adapter  # noqa: E402

VISION_7B = {
    "depth": 32,
    "hidden_size": 1280,
    "num_heads": 16,
    "intermediate_size": 3420,
    "out_hidden_size": 3584,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "window_size": 112,
    "patch_size": 14,
    "spatial_patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "hidden_act": "silu",
    "in_chans": 3,
}
VISION_TINY = {
    **VISION_7B,
    "depth": 4,
    "hidden_size": 64,
    "num_heads": 4,
    "intermediate_size": 128,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1, 3],
}
PATCH_VALUES = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch
TOKEN_IDS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "vision_token_id",
)


def build_model(vision: dict, device: torch.device, dtype: torch.dtype) -> Any:
    """A Qwen2.5-VL with the given vision tower and a one-layer text model, random weights, eval mode."""
    text_hidden = vision["out_hidden_size"]
    heads = max(1, text_hidden // 128)
    config = transformers.Qwen2_5_VLConfig.from_dict(
        {
            "model_type": "qwen2_5_vl",
            "hidden_size": text_hidden,
            "intermediate_size": 256,
            "num_hidden_layers": 1,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "vocab_size": 1024,
            # token ids inside the small vocabulary (the LLM never runs here)
            **{name: i for i, name in enumerate(TOKEN_IDS)},
            "max_position_embeddings": 32768,
            "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(text_hidden // heads)},
            "rope_theta": 1000000.0,
            "vision_config": vision,
        }
    )
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(
            config, attn_implementation="sdpa"
        )
    return model.to(dtype).eval()


def _mrope_section(head_dim: int) -> list[int]:
    """Three M-RoPE sections summing to head_dim / 2 in the 7B proportions (16, 24, 24 for 128)."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def make_inputs(
    frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixel rows ``[T/2 * h * w, 1176]`` and ``grid_thw [[T/2, h, w]]`` (h, w in 14-px patches)."""
    grid = torch.tensor([[frames // 2, height // 14, width // 14]], device=device)
    generator = torch.Generator(device=device).manual_seed(frames)
    rows = int(grid.prod())
    pixels = torch.randn(rows, PATCH_VALUES, generator=generator, device=device, dtype=torch.float32)
    return pixels.to(dtype), grid


def tower(model: Any, pixels: torch.Tensor, grid: torch.Tensor) -> list[torch.Tensor]:
    """The vision tower's outputs: merged features ``[n/4, O]`` and (5.x) the last hidden state ``[n, D]``."""
    with torch.inference_mode():
        output = model.model.visual(pixels, grid_thw=grid)
    if isinstance(output, torch.Tensor):  # 4.57
        return [output]
    return [output.pooler_output, output.last_hidden_state]


class Paths:
    """Switches one model between the stock vision attention and fast_vision (attach / detach)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.pruner: Any = None

    def use(self, fast: bool) -> None:
        if fast and self.pruner is None:
            self.pruner = attach(self.model, PruneVidConfig.preset("fast"))
            assert self.pruner.fast_vision_active
        elif not fast and self.pruner is not None:
            self.pruner.detach()
            self.pruner = None
            assert not any("forward" in vars(block.attn) for block in self.model.model.visual.blocks)


def timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Seconds taken by one call: CUDA events on a GPU (synchronised), perf_counter on CPU."""

    def cuda(fn: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3

    def cpu(fn: Callable[[], Any]) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return cuda if device.type == "cuda" else cpu


def compare(paths: Paths, pixels: torch.Tensor, grid: torch.Tensor) -> dict[str, Any]:
    """``max |fast - stock|`` over every output and whether they are bit-identical."""
    paths.use(False)
    stock = tower(paths.model, pixels, grid)
    paths.use(True)
    fast = tower(paths.model, pixels, grid)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(fast, stock, strict=True))
    equal = all(torch.equal(a, b) for a, b in zip(fast, stock, strict=True))
    return {"max_abs_diff": diff, "bit_identical": equal}


def measure(
    paths: Paths, pixels: torch.Tensor, grid: torch.Tensor, repeats: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """Interleaved timings (order alternating each repeat) and the peak memory of one call per path."""
    time_one = timer(device)
    times: dict[str, list[float]] = {"stock": [], "fast": []}
    memory: dict[str, float | None] = {}
    for name in ("stock", "fast"):
        paths.use(name == "fast")
        for _ in range(warmup):
            tower(paths.model, pixels, grid)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            tower(paths.model, pixels, grid)
            torch.cuda.synchronize(device)
            memory[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
        else:
            memory[name] = None
    for repeat in range(repeats):
        for name in ("stock", "fast") if repeat % 2 == 0 else ("fast", "stock"):
            paths.use(name == "fast")
            times[name].append(time_one(lambda: tower(paths.model, pixels, grid)))
    stock_s, fast_s = statistics.median(times["stock"]), statistics.median(times["fast"])
    return {
        "stock_s": stock_s,
        "fast_s": fast_s,
        "speedup": stock_s / fast_s,
        "stock_times_s": times["stock"],
        "fast_times_s": times["fast"],
        "peak_extra_memory_gib": memory,
    }


def window_extents(size: int, window: int) -> list[int]:
    """Window sizes (merged tokens) along one side: full windows from the start, then the remainder."""
    return [window] * (size // window) + ([size % window] if size % window else [])


def tower_flops(vision: dict, grid: tuple[int, int, int]) -> dict[str, float]:
    """FLOPs of one tower call (formula in the module docstring)."""
    t, h, w = grid
    n = t * h * w
    d, inner, out = vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"]
    merge = vision["spatial_merge_size"]
    window = vision["window_size"] // merge // vision["patch_size"]
    rows = window_extents(h // merge, window)
    cols = window_extents(w // merge, window)
    # A window of a x b merged tokens has a * b * merge^2 rows.
    windowed_sq = t * merge**4 * sum(a * a for a in rows) * sum(b * b for b in cols)
    full_sq = t * (h * w) ** 2
    full_blocks = len(vision["fullatt_block_indexes"])
    linear = vision["depth"] * (2 * n * d * 3 * d + 2 * n * d * d + 3 * 2 * n * d * inner)
    attention = 4 * d * ((vision["depth"] - full_blocks) * windowed_sq + full_blocks * full_sq)
    embed = 2 * n * PATCH_VALUES * d
    merger = 2 * (n // 4) * (4 * d) ** 2 + 2 * (n // 4) * (4 * d) * out
    total = embed + linear + attention + merger
    return {"total": float(total), "attention": float(attention), "linear_and_mlp": float(linear)}


def profile_fast(
    paths: Paths, pixels: torch.Tensor, grid: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """Top ops by self time for the fast path, and SDPA call counts per tower call for both paths."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    counts = {}
    tables: dict[str, str] = {}
    for name in ("stock", "fast"):
        paths.use(name == "fast")
        tower(paths.model, pixels, grid)
        with profile(activities=activities) as prof:
            tower(paths.model, pixels, grid)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        events = prof.key_averages()
        counts[name] = {e.key: e.count for e in events if e.key == "aten::scaled_dot_product_attention"}
        if name == "fast":
            keys = ["self_cpu_time_total"] + (["self_device_time_total"] if device.type == "cuda" else [])
            for key in keys:
                try:
                    tables[key] = events.table(sort_by=key, row_limit=20)
                except (AttributeError, KeyError, ValueError):  # older torch: self_cuda_time_total
                    tables[key] = events.table(sort_by=key.replace("device", "cuda"), row_limit=20)
            kernels = sorted(
                {e.key for e in events if "attention" in e.key.lower() or "fmha" in e.key.lower()}
            )
            tables["attention_ops_and_kernels"] = "\n".join(kernels)
    return {"per_call_counts": counts, "tables": tables}


def _card(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="tiny tower, few frames (a CPU smoke run)")
    parser.add_argument("--frames", default=None, help="comma-separated frame counts (default 16,32,64,128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per path (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-batched-length",
        default=None,
        help="override prunevid's FAST_VISION_MAX_BATCHED_LENGTH ('none' batches every window length)",
    )
    parser.add_argument(
        "--sdpa-backend",
        default="default",
        choices=["default", "cudnn", "flash", "efficient", "math"],
        help="restrict SDPA to one backend for both paths (default: PyTorch's own choice)",
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.sdpa_backend != "default":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            names = {
                "cudnn": "CUDNN_ATTENTION",
                "flash": "FLASH_ATTENTION",
                "efficient": "EFFICIENT_ATTENTION",
            }
            stack.enter_context(sdpa_kernel(getattr(SDPBackend, names.get(args.sdpa_backend, "MATH"))))
        return run(args)


def run(args: argparse.Namespace) -> int:
    """The benchmark proper (``main`` parses the arguments and sets the SDPA backend)."""
    if args.max_batched_length is not None:
        limit = args.max_batched_length.lower()
        adapter.FAST_VISION_MAX_BATCHED_LENGTH = None if limit == "none" else int(limit)

    device = torch.device(args.device)
    tiny = args.tiny
    vision = VISION_TINY if tiny else VISION_7B
    dtype = torch.float32 if tiny else torch.bfloat16
    frame_counts = [int(f) for f in (args.frames or ("2,4" if tiny else "16,32,64,128")).split(",")]
    repeats = args.repeats or (3 if tiny else 10)
    height = width = 448
    # Sizes for the exactness checks: several window lengths (476x364: 4 lengths), short frame pairs
    # (336x336: 576 rows, 224x224: 256 rows) where a kernel's batch-size heuristics could differ.
    extra_sizes = [(476, 364), (336, 336), (224, 224)] if not tiny else [(224, 168)]
    extra_frames = 32 if not tiny else 4

    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_model(vision, device, dtype)
    paths = Paths(model)
    result: dict[str, Any] = {
        "benchmark": "vision tower, stock SDPA vs prunevid fast_vision",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "card": _card(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "dtype": str(dtype),
        "tiny": tiny,
        "vision_config": vision,
        "fast_vision_max_batched_length": adapter.FAST_VISION_MAX_BATCHED_LENGTH,
        "sdpa_backend": args.sdpa_backend,
        "repeats": repeats,
        "warmup": args.warmup,
        "frame_size": [height, width],
        "results": [],
        "exactness_other_sizes": [],
    }
    for frames in frame_counts:
        pixels, grid = make_inputs(frames, height, width, device, dtype)
        row: dict[str, Any] = {"frames": frames, "grid_thw": grid[0].tolist(), "patch_rows": pixels.shape[0]}
        row.update(compare(paths, pixels, grid))
        row.update(measure(paths, pixels, grid, repeats, args.warmup, device))
        flops = tower_flops(vision, tuple(row["grid_thw"]))
        row["flops"] = flops
        row["tflops_per_s"] = {
            "stock": flops["total"] / row["stock_s"] / 1e12,
            "fast": flops["total"] / row["fast_s"] / 1e12,
        }
        result["results"].append(row)
        print(
            f"{frames:4d} frames: stock {row['stock_s'] * 1e3:8.1f} ms  fast {row['fast_s'] * 1e3:8.1f} ms  "
            f"x{row['speedup']:.2f}  max|diff| {row['max_abs_diff']}  "
            f"{row['tflops_per_s']['fast']:.3g} TFLOP/s (fast)",
            flush=True,
        )
        del pixels
    for h, w in extra_sizes:
        pixels, grid = make_inputs(extra_frames, h, w, device, dtype)
        row = {"frames": extra_frames, "frame_size": [h, w], "grid_thw": grid[0].tolist()}
        row.update(compare(paths, pixels, grid))
        timing = measure(paths, pixels, grid, max(3, repeats // 2), 1, device)
        row.update({key: timing[key] for key in ("stock_s", "fast_s", "speedup")})
        result["exactness_other_sizes"].append(row)
        print(
            f"{extra_frames} frames {h}x{w}: max|diff| {row['max_abs_diff']}  x{row['speedup']:.2f}",
            flush=True,
        )
    profile_frames = 32 if not tiny else frame_counts[-1]
    pixels, grid = make_inputs(profile_frames, height, width, device, dtype)
    result["profile"] = {"frames": profile_frames, **profile_fast(paths, pixels, grid, device)}
    paths.use(False)
    result["all_bit_identical"] = all(
        row["bit_identical"] for row in result["results"] + result["exactness_other_sizes"]
    )
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"all bit-identical: {result['all_bit_identical']}; wrote {args.out} in {result['wall_s']:.0f} s")
    return 0 if result["all_bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
