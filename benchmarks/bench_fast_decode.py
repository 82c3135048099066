"""Fast decode on the GPU: correctness against the eager decode, CUDA graph vs torch.compile, step profile.

    python benchmarks/bench_fast_decode.py --out results/fast_decode_7b_h200.json
    python benchmarks/bench_fast_decode.py --tiny --out /tmp/fd.json      # CPU smoke test

Same model, processor and clips as ``bench_e2e.py`` (Qwen2.5-VL-7B architecture with random weights, bf16,
SDPA; 448x448 frames at 2 fps). Three parts, each written to the JSON as soon as it is done:

1. ``correctness``: for ``stock`` (no pruner) and ``paper``, on one clip (batch 1) and on two clips of
   different lengths (batch 2, left padding, different kept lengths), ``--check-tokens`` forced greedy tokens
   from ``model.generate`` (eager dynamic-cache decode) twice, from fast decode with the CUDA graph and
   without it (static step run eagerly). Per decode step, the max |logit difference| to the first eager run
   (``output_logits``); whether the tokens are equal. The eager-vs-eager difference is the noise floor
   (stock decode is not bit-repeatable on the GPU).
2. ``step``: ms per decode step at batch 1 for ``paper``'s kept length and for the stock length: the
   static step run eagerly, the same step replayed from one ``torch.cuda.CUDAGraph`` (and its capture
   cost), and the same step through ``torch.compile(mode="reduce-overhead")`` (and its compile cost).
3. ``profile``: ``torch.profiler`` over static steps at ``paper``'s kept length: GPU kernel time per step by
   kind (matrix products, attention, the rest) against the replayed step's wall time.
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench_e2e  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from prunevid import fast_decode  # noqa: E402
from prunevid.config import PRESETS  # noqa: E402
from prunevid.prompt import build_inputs  # noqa: E402
from prunevid.qwen2_5_vl import attach  # noqa: E402
from prunevid.tiny import build_tiny_checkpoint  # noqa: E402


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Force(LogitsProcessor):
    """Teacher forcing: every step's scores allow only the reference run's token, so two runs follow the
    same tokens and their raw logits (``output_logits``, taken before the processors) compare step by step."""

    def __init__(self, reference: Tensor, prompt_length: int) -> None:
        self.reference = reference  # [B, L + n]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        token = self.reference[:, input_ids.shape[1]]
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter(1, token[:, None].to(scores.device), 0.0)


def _generate(
    model: nn.Module, inputs: Any, tokens: int, ids: dict[str, int], mode: str, force: Tensor | None = None
) -> Any:
    """Greedy ``tokens`` with per-step raw logits: ``eager`` (stock generate), ``graph`` or ``static``;
    ``force`` [B, L + tokens] makes every step take the reference token."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        return_dict_in_generate=True,
        output_logits=True,
    )
    if force is not None:
        kwargs["logits_processor"] = LogitsProcessorList([_Force(force, inputs["input_ids"].shape[1])])
    if mode == "eager":
        return model.generate(**inputs, **kwargs)
    graph = mode == "graph" and model.device.type == "cuda"
    return fast_decode.generate(model, **inputs, **kwargs, cuda_graph=graph)


def _diffs(run: Any, reference: Any) -> list[float]:
    return [
        float((a.float() - b.float()).abs().max()) for a, b in zip(run.logits, reference.logits, strict=True)
    ]


def _free_run(run: Any, reference: Any, prompt: int, margins: list[float], name: str) -> dict[str, Any]:
    """Whether a free (greedy) run took the reference tokens; where not, the first step that differs, the
    reference's top-2 margin there and the largest logit difference on the steps before (same inputs)."""
    same = (run.sequences[:, prompt:] == reference.sequences[:, prompt:]).all(0).tolist()
    first = same.index(False) if False in same else None
    result: dict[str, Any] = {
        f"{name}_tokens_equal": bool(torch.equal(run.sequences, reference.sequences)),
        f"{name}_first_divergence": first,
    }
    if first is not None:
        upto = _diffs(run, reference)[: first + 1]  # steps up to the divergence had the same inputs
        result[f"{name}_max_abs_logit_diff_up_to_divergence"] = max(upto)
        result[f"{name}_reference_margin_at_divergence"] = margins[first]
    return result


def correctness(model: nn.Module, cases: dict[str, Any], ids: dict[str, int], tokens: int) -> list[dict]:
    """Part 1 (see the module docstring)."""
    results = []
    for row in ("stock", "paper"):
        for case, inputs in cases.items():
            pruner = attach(model, PRESETS[row]) if row != "stock" else None
            entry: dict[str, Any] = {"row": row, "case": case}
            try:
                reference = _generate(model, inputs, tokens, ids, "eager")
                prompt = inputs["input_ids"].shape[1]
                entry["kept_video_tokens"] = (
                    None if pruner is None else pruner.last_stats.video_tokens_after_stage2
                )
                top2 = torch.stack([step.float().topk(2, -1).values for step in reference.logits], 1)
                margins = (top2[..., 0] - top2[..., 1]).min(0).values.tolist()  # per step, over the batch
                for mode in ("eager", "graph", "static"):
                    free = _generate(model, inputs, tokens, ids, mode)  # the first call (graph: captures)
                    forced = _generate(model, inputs, tokens, ids, mode, force=reference.sequences)
                    again = _generate(model, inputs, tokens, ids, mode)  # the buffers (and graph) reused
                    chosen = torch.stack([step.float().argmax(-1) for step in forced.logits], 1)
                    entry[mode] = {
                        **_free_run(free, reference, prompt, margins, "free_run"),
                        **_free_run(again, reference, prompt, margins, "second_free_run"),
                        "forced_max_abs_logit_diff_per_step": _diffs(forced, reference),
                        "forced_argmax_agreement": float(
                            (chosen == reference.sequences[:, prompt:].to(chosen.device)).float().mean()
                        ),
                    }
                    if mode != "eager":
                        entry[mode]["fast_decode"] = fast_decode.last_stats(model).to_dict()
                entry["reference_top2_margin_min"] = min(margins)
                entry["logit_std"] = float(reference.logits[0].float().std())
            finally:
                if pruner is not None:
                    pruner.detach()
            results.append(entry)
            print(
                f"[correctness] {row:<6} {case:<7} forced max|dlogit| eager-vs-eager "
                f"{max(entry['eager']['forced_max_abs_logit_diff_per_step']):.4f}, graph "
                f"{max(entry['graph']['forced_max_abs_logit_diff_per_step']):.4f}, static "
                f"{max(entry['static']['forced_max_abs_logit_diff_per_step']):.4f}; free-run tokens equal: "
                f"eager {entry['eager']['free_run_tokens_equal']}, "
                f"graph {entry['graph']['free_run_tokens_equal']} "
                f"(first divergence {entry['graph']['free_run_first_divergence']}; second free run equal "
                f"{entry['graph']['second_free_run_tokens_equal']}), "
                f"min top-2 margin {entry['reference_top2_margin_min']:.3f}",
                flush=True,
            )
    return results


def _time_steps(step: Callable[[], Any], device: torch.device, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = _sync(device)
        step()
        times.append((_sync(device) - start) * 1e3)
    return times


def step_timing(
    model: nn.Module,
    cases: dict[str, Any],
    ids: dict[str, int],
    steps: int,
    compile_rows: Sequence[str],
    reduce_overhead_rows: Sequence[str],
) -> list[dict]:
    """Part 2 (see the module docstring)."""
    device = model.device
    results = []
    for row in ("paper", "stock"):
        inputs = cases["single"]
        pruner = attach(model, PRESETS[row]) if row != "stock" else None
        try:
            # Size the buffers for warm-up + timed steps of every variant, and load a real prefill.
            fast_decode.release(model)
            total = 4 * steps + 32
            with torch.no_grad():
                fast_decode.generate(
                    model,
                    **inputs,
                    max_new_tokens=total,
                    min_new_tokens=2,
                    do_sample=False,
                    eos_token_id=ids["eos_token_id"],
                    pad_token_id=ids["pad_token_id"],
                    cuda_graph=False,
                    stopping_criteria=StoppingCriteriaList([_StopAfter(2)]),
                )
        finally:
            if pruner is not None:
                pruner.detach()
        engine = next(iter(fast_decode._ENGINES[model].values()))
        entry: dict[str, Any] = {"row": row, "cache_rows": engine.key.rows, "prefill_rows": None}
        stats = fast_decode.last_stats(model)
        entry["prefill_rows"] = stats.prefill_rows if stats else None
        with torch.no_grad():
            eager = _time_steps(engine.step, device, steps)
            entry["static_eager_ms"] = statistics.median(eager)
            if device.type == "cuda":
                start = _sync(device)
                engine.capture()
                entry["graph_capture_s"] = _sync(device) - start
                replay = _time_steps(engine.graph.replay, device, steps)
                entry["graph_replay_ms"] = statistics.median(replay)
                entry["graph_replay_min_ms"] = min(replay)
                engine.graph = None
                if row in compile_rows:
                    entry.update(_inductor_in_graph(engine, device, steps))
                if row in reduce_overhead_rows:
                    entry.update(_compiled(engine, device, steps))
        results.append(entry)
        print(f"[step] {row}: {json.dumps(entry)}", flush=True)
        fast_decode.release(model)
    return results


def _inductor_in_graph(engine: Any, device: torch.device, steps: int) -> dict[str, Any]:
    """fast decode with ``compile_step=True``: the step compiled by inductor (no cudagraphs of its own), then
    captured in one CUDA graph as usual: compile seconds, capture seconds, ms/step."""
    result: dict[str, Any] = {}
    try:
        engine.step_function = torch.compile(engine.step, dynamic=False)
        start = _sync(device)
        engine.step_function()
        result["inductor_compile_s"] = _sync(device) - start
        start = _sync(device)
        engine.capture()
        result["inductor_graph_capture_s"] = _sync(device) - start
        times = _time_steps(engine.graph.replay, device, steps)
        result["inductor_graph_replay_ms"] = statistics.median(times)
        result["inductor_graph_replay_min_ms"] = min(times)
    except Exception as error:  # report, do not lose the rest of the run
        result["inductor_error"] = f"{type(error).__name__}: {str(error)[:500]}"
    engine.graph, engine.step_function = None, engine.step
    return result


def _compiled(engine: Any, device: torch.device, steps: int) -> dict[str, Any]:
    """The engine's step through torch.compile(mode='reduce-overhead'): compile seconds and ms/step."""
    for layer in engine.cache.layers:
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)
    for tensor in (engine.valid, engine.positions, engine.input_ids, engine.cache.write_index):
        torch._dynamo.mark_static_address(tensor)
    compiled = torch.compile(engine.step, mode="reduce-overhead")
    result: dict[str, Any] = {}
    try:
        start = _sync(device)
        compiled()
        result["compile_first_call_s"] = _sync(device) - start
        start = _sync(device)
        for _ in range(3):  # cudagraph trees record on the following calls
            compiled()
        result["compile_warm_calls_s"] = _sync(device) - start
        times = _time_steps(compiled, device, steps)
        result["compiled_ms"] = statistics.median(times)
        result["compiled_min_ms"] = min(times)
    except Exception as error:  # report, do not lose the rest of the run
        result["compile_error"] = f"{type(error).__name__}: {str(error)[:500]}"
    return result


class _StopAfter(StoppingCriteria):
    """A stopping criterion: stop once the sequences are ``new`` tokens longer than the prompt."""

    def __init__(self, new: int) -> None:
        self.new = new
        self.prompt: int | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        if self.prompt is None:
            self.prompt = input_ids.shape[1] - 1
        done = input_ids.shape[1] - self.prompt >= self.new
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def profile_steps(model: nn.Module, cases: dict[str, Any], ids: dict[str, int], steps: int) -> dict[str, Any]:
    """Part 3 (see the module docstring)."""
    device = model.device
    pruner = attach(model, PRESETS["paper"])
    try:
        fast_decode.release(model)
        with torch.no_grad():
            fast_decode.generate(
                model,
                **cases["single"],
                max_new_tokens=4 * steps + 16,
                do_sample=False,
                min_new_tokens=2,
                eos_token_id=ids["eos_token_id"],
                pad_token_id=ids["pad_token_id"],
                cuda_graph=False,
                stopping_criteria=StoppingCriteriaList([_StopAfter(2)]),
            )
    finally:
        pruner.detach()
    engine = next(iter(fast_decode._ENGINES[model].values()))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad():
        for _ in range(2):
            engine.step()
        _sync(device)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                engine.step()
            _sync(device)
    kinds: dict[str, float] = {}
    kernels = 0
    for event in prof.events():
        if device.type != "cuda" or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kernels += 1
        name = event.name.lower()
        if "gemm" in name or "gemv" in name or "matmul" in name or "sm90" in name or "cutlass" in name:
            kind = "matrix products"
        elif "attention" in name or "fmha" in name or "flash" in name or "efficient" in name:
            kind = "attention"
        elif "copy" in name or "index" in name or "cat" in name:
            kind = "copies and indexing"
        else:
            kind = "elementwise, norms, rotary, softmax"
        kinds[kind] = kinds.get(kind, 0.0) + event.time_range.elapsed_us() / 1e3
    result: dict[str, Any] = {
        "row": "paper",
        "steps": steps,
        "kernels_per_step": kernels / steps,
        "gpu_ms_per_step_by_kind": {k: v / steps for k, v in sorted(kinds.items())},
        "gpu_ms_per_step": sum(kinds.values()) / steps,
    }
    if device.type == "cuda":
        engine.capture()
        replay = _time_steps(engine.graph.replay, device, steps)
        result["graph_replay_ms"] = statistics.median(replay)
        result["top_kernels"] = [
            {
                "name": e.key[:120],
                "ms_per_step": e.self_device_time_total / 1e3 / steps,
                "calls": e.count / steps,
            }
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:12]
        ]
    fast_decode.release(model)
    print(f"[profile] {json.dumps({k: v for k, v in result.items() if k != 'top_kernels'})}", flush=True)
    return result


def _state(engine: Any) -> list[Tensor]:
    """Every tensor a decode step reads and writes."""
    tensors = [engine.valid, engine.positions, engine.input_ids, engine.cache.write_index]
    for layer in engine.cache.layers:
        tensors += [layer.keys, layer.values]
    return tensors


def _restore(engine: Any, snapshot: list[Tensor]) -> None:
    for tensor, saved in zip(_state(engine), snapshot, strict=True):
        tensor.copy_(saved)


def graph_check(model: nn.Module, cases: dict[str, Any], ids: dict[str, int], steps: int) -> list[dict]:
    """Part 0: one decode step from the same state, eagerly and replayed from a CUDA graph, per SDPA backend
    choice (and compiled with inductor before the capture): max |logit difference| and replay ms."""
    from torch.nn.attention import SDPBackend

    device = model.device
    no_cudnn = (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)
    variants = [
        ("default backends", None, False),
        ("no cuDNN", no_cudnn, False),
        ("math only", (SDPBackend.MATH,), False),
        ("no cuDNN, inductor-compiled step", no_cudnn, True),
    ]
    results = []
    for name, backends, compiled in variants:
        fast_decode.SDPA_BACKENDS = backends
        fast_decode.release(model)
        entry: dict[str, Any] = {"variant": name}
        try:
            with torch.no_grad():
                fast_decode.generate(
                    model,
                    **cases["single"],
                    max_new_tokens=4 * steps + 32,
                    min_new_tokens=2,
                    do_sample=False,
                    eos_token_id=ids["eos_token_id"],
                    pad_token_id=ids["pad_token_id"],
                    cuda_graph=False,
                    compile_step=compiled,
                    stopping_criteria=StoppingCriteriaList([_StopAfter(2)]),
                )
                engine = next(iter(fast_decode._ENGINES[model].values()))
                snapshot = [t.clone() for t in _state(engine)]
                fast_decode.SDPA_BACKENDS = None
                reference = engine.step().clone()  # plain eager step, PyTorch's backend choice
                fast_decode.SDPA_BACKENDS = backends
                _restore(engine, snapshot)
                start = _sync(device)
                eager = engine.step_function().clone()
                entry["first_eager_call_s"] = _sync(device) - start
                _restore(engine, snapshot)
                start = _sync(device)
                engine.capture()
                entry["capture_s"] = _sync(device) - start
                _restore(engine, snapshot)
                engine.graph.replay()
                replayed = engine.logits.clone()
                _restore(engine, snapshot)
                engine.graph.replay()
                again = engine.logits.clone()
                entry["eager_vs_reference"] = float((eager - reference).abs().max())
                entry["graph_vs_reference"] = float((replayed - reference).abs().max())
                entry["graph_vs_graph"] = float((again - replayed).abs().max())
                entry["argmax_equal"] = bool(torch.equal(replayed.argmax(-1), reference.argmax(-1)))
                times = _time_steps(engine.graph.replay, device, steps)
                entry["replay_ms"] = statistics.median(times)
        except Exception as error:
            entry["error"] = f"{type(error).__name__}: {str(error)[:500]}"
        results.append(entry)
        print(f"[graph check] {json.dumps(entry)}", flush=True)
    fast_decode.SDPA_BACKENDS = None
    fast_decode.release(model)
    return results


def tiny_families(device: torch.device, dtype: torch.dtype, tokens: int) -> list[dict]:
    """Part 4: each family's tiny checkpoint on ``device`` in ``dtype``: ``paper`` and stock (no pruner)
    greedy tokens from the eager decode and from fast decode (CUDA graph where the device has one), on one
    clip and on a left-padded batch of two; tokens equal, max |logit difference| per run."""
    from prunevid.tiny import FAMILIES

    results = []
    for family in FAMILIES:
        with tempfile.TemporaryDirectory(prefix="prunevid-fd-family-") as tmp:
            checkpoint = build_tiny_checkpoint(Path(tmp) / family, family=family)
            processor = AutoProcessor.from_pretrained(checkpoint)
            config = json.loads((checkpoint / "config.json").read_text())
        ids = bench_e2e.special_token_ids(processor.tokenizer)
        model = bench_e2e.build_random_model(config, device, dtype)
        unit = bench_e2e.FAMILY_TOKEN_PIXELS[family]
        clips = [bench_e2e.make_benchmark_clip(f, 4 * unit, seed) for f, seed in ((8, 0), (4, 1))]
        cases = {
            "single": build_inputs(processor, clips[0], "What moves?").to(device),
            "padded": build_inputs(processor, clips, ["What moves?", "Which colour?"]).to(device),
        }
        for row in ("stock", "paper"):
            for case, inputs in cases.items():
                entry: dict[str, Any] = {"family": family, "row": row, "case": case}
                pruner = attach(model, PRESETS[row]) if row != "stock" else None
                try:
                    eager = _generate(model, inputs, tokens, ids, "eager")
                    graph = _generate(model, inputs, tokens, ids, "graph")
                    entry["cuda_graph"] = fast_decode.last_stats(model).cuda_graph
                    entry["tokens_equal"] = bool(torch.equal(graph.sequences, eager.sequences))
                    entry["max_abs_logit_diff"] = max(_diffs(graph, eager))
                except Exception as error:
                    entry["error"] = f"{type(error).__name__}: {str(error)[:500]}"
                finally:
                    if pruner is not None:
                        pruner.detach()
                print(f"[tiny families] {json.dumps(entry)}", flush=True)
                results.append(entry)
        fast_decode.release(model)
        del model
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test on the tiny checkpoint")
    parser.add_argument(
        "--family",
        default="qwen2_5_vl",
        choices=sorted(bench_e2e.FAMILY_MODELS),
        help="model family: its published architecture (bench_e2e's) and its tiny local processor",
    )
    parser.add_argument(
        "--tiny-families",
        action="store_true",
        help="part 4: every family's tiny checkpoint on the device, graph-replayed decode vs eager",
    )
    parser.add_argument("--frames", type=int, help="frames of the batch-1 clip (default 32; tiny 8)")
    parser.add_argument("--check-tokens", type=int, default=16, help="forced tokens in the correctness runs")
    parser.add_argument("--steps", type=int, default=30, help="timed decode steps per variant")
    parser.add_argument(
        "--compile-rows", default="paper", help="rows timed with compile_step=True (inductor, ~40 s each)"
    )
    parser.add_argument(
        "--reduce-overhead-rows", default="", help="rows timed with torch.compile(mode='reduce-overhead')"
    )
    parser.add_argument("--graph-check", action="store_true", help="part 0: graph vs eager step per backend")
    parser.add_argument("--graph-check-only", action="store_true", help="stop after part 0")
    parser.add_argument("--device", help="cuda or cpu (default cuda if available)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.frames is None:
        args.frames = 8 if args.tiny else 32
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 112 if args.tiny else 448
    with tempfile.TemporaryDirectory(prefix="prunevid-fd-") as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp) / "tiny", family=args.family)
        processor = AutoProcessor.from_pretrained(checkpoint)
        ids = bench_e2e.special_token_ids(processor.tokenizer)
        model_key = bench_e2e.family_model_key(args.family, "7b")
        if args.tiny:
            config = json.loads((checkpoint / "config.json").read_text())
        else:
            config = bench_e2e.with_token_ids(bench_e2e.PUBLISHED_CONFIGS[model_key], ids)
        model = bench_e2e.build_random_model(config, device, dtype)
    clips = [
        bench_e2e.make_benchmark_clip(f, size, seed) for f, seed in ((args.frames, 0), (args.frames // 2, 1))
    ]
    question = bench_e2e.QUESTION
    cases = {
        "single": build_inputs(processor, clips[0], question).to(device),
        "padded": build_inputs(processor, clips, [question, "Which shape moves fastest?"]).to(device),
    }
    report: dict[str, Any] = {
        "benchmark": "prunevid fast decode (bench_fast_decode.py)",
        "model": "tiny" if args.tiny else f"{model_key} (random weights, published architecture)",
        "family": args.family,
        "dtype": str(dtype).replace("torch.", ""),
        "environment": bench_e2e.environment(device),
        "settings": {
            "frames": args.frames,
            "size": size,
            "check_tokens": args.check_tokens,
            "steps": args.steps,
            "padded_case_frames": [args.frames, args.frames // 2],
            "reuse_slack_rows": fast_decode.REUSE_SLACK_ROWS,
            "warmup_steps": fast_decode.WARMUP_STEPS,
        },
        "prompt_lengths": {name: int(inputs["input_ids"].shape[1]) for name, inputs in cases.items()},
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - _PROCESS_START
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    if args.graph_check:
        report["graph_check"] = graph_check(model, cases, ids, args.steps)
        save()
        if args.graph_check_only:
            return report
    report["correctness"] = correctness(model, cases, ids, args.check_tokens)
    save()
    if args.tiny_families:
        report["tiny_families"] = tiny_families(device, dtype, args.check_tokens)
        save()
    try:
        report["profile"] = profile_steps(model, cases, ids, min(args.steps, 10))
    except Exception as error:  # the profile is a diagnosis; keep the timings
        report["profile"] = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
        print(f"[profile] failed: {report['profile']['error']}", flush=True)
    save()
    report["step"] = step_timing(
        model,
        cases,
        ids,
        args.steps,
        [r for r in args.compile_rows.split(",") if r],
        [r for r in args.reduce_overhead_rows.split(",") if r],
    )
    save()
    print(f"wrote {args.out} ({report['elapsed_s']:.0f} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
