"""Turn ``bench_e2e.py`` result JSONs into a markdown report, a TTFT plot and the project's target checks.

    python benchmarks/report.py results/e2e_7b.json [results/e2e_3b.json ...]
        [--md docs/benchmarks.md] [--png docs/ttft_vs_frames.png]

Per result file (one model on one card): a table per frame count with every row (stock, presets, the
zero-overhead ``limit`` and ``limit + vision``, which adds the stock vision-tower time the limit row does not
pay), the headline numbers, and the targets, each MET / MISSED / n/a:

- ``paper`` keeps <= 20% of the video tokens (every frame count);
- ``paper``'s LLM prefill (language-model forward without the Stage-2 selection) <= 0.3x stock's;
- Stage-1 + Stage-2 time <= 5% of ``paper``'s TTFT;
- ``paper``'s decode ms/token and peak memory no worse than stock (within ``--decode-tolerance`` and
  ``--memory-tolerance``, relative; decode timings carry run-to-run noise, so exact equality is no test).

Needs only the standard library; matplotlib (Agg backend) for the PNG, which is skipped without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADLINE_FRAMES = (32, 128)
STOCK, PAPER, LIMIT = "stock", "paper", "limit"
LIMIT_VISION = "limit + vision"
RETENTION_TARGET = 0.20
PREFILL_TARGET = 0.30
OVERHEAD_TARGET = 0.05


@dataclass
class Target:
    """One project target, evaluated over every frame count of one result."""

    name: str
    status: str  # MET, MISSED or n/a
    detail: str


# ------------------------------------------------------------------------------------------------ access
def median(row: dict[str, Any] | None, key: str) -> float | None:
    """Median of a row's series ``key`` (None when absent or empty)."""
    summary = ((row or {}).get("summary") or {}).get(key)
    return None if summary is None else summary["median"]


def minimum(row: dict[str, Any] | None, key: str) -> float | None:
    """Minimum of a row's series ``key`` (None when absent or empty)."""
    summary = ((row or {}).get("summary") or {}).get(key)
    return None if summary is None else summary["min"]


def peak_memory(row: dict[str, Any] | None) -> float | None:
    """The larger of the prefill-run and decode-run peak memory medians (bytes)."""
    values = [v for v in (median(row, "peak_memory_bytes"), median(row, "decode_peak_memory_bytes")) if v]
    return max(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}{suffix}"


def percent(value: float | None) -> str:
    return fmt(None if value is None else 100 * value, 1, "%")


def shape_rows(shape: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of one frame count, plus the derived ``limit + vision`` row (limit TTFT + stock vision)."""
    rows = dict(shape["rows"])
    limit, stock = rows.get(LIMIT), rows.get(STOCK)
    limit_ttft, stock_vision = median(limit, "ttft_ms"), median(stock, "vision_ms")
    if limit_ttft is not None and stock_vision is not None:
        derived = json.loads(json.dumps(limit))  # same tokens, memory and decode as the limit row
        derived["summary"]["ttft_ms"] = {"median": limit_ttft + stock_vision, "min": None, "n": 0}
        derived["summary"]["vision_ms"] = {"median": stock_vision, "min": None, "n": 0}
        derived["kind"] = "derived"
        rows[LIMIT_VISION] = derived
    return rows


# ------------------------------------------------------------------------------------------------ tables
_COLUMNS = (
    "row",
    "TTFT ms (min)",
    "speedup",
    "vision ms",
    "Stage 1 ms",
    "Stage 2 ms",
    "LLM prefill ms",
    "hooks ms",
    "decode ms/tok",
    "peak GiB",
    "KV MiB",
    "video tokens in → S1 → S2",
    "retention",
    "rel. FLOPs",
)


def shape_table(shape: dict[str, Any]) -> list[str]:
    """Markdown table of one frame count."""
    rows = shape_rows(shape)
    stock_ttft = median(rows.get(STOCK), "ttft_ms")
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for name, row in rows.items():
        ttft, fastest = median(row, "ttft_ms"), minimum(row, "ttft_ms")
        tokens = row.get("tokens") or {}
        kv = row.get("kv_cache_bytes")
        peak = peak_memory(row)
        cells = [
            f"`{name}`",
            f"{fmt(ttft)}" + (f" ({fmt(fastest)})" if fastest is not None else ""),
            fmt(ratio(stock_ttft, ttft), 2, "x"),
            fmt(median(row, "vision_ms")),
            fmt(median(row, "stage1_ms")),
            fmt(median(row, "stage2_ms")),
            fmt(median(row, "llm_layers_ms")),
            fmt(median(row, "hooks_ms")),
            fmt(median(row, "decode_ms_per_token"), 2)
            + (
                f" ({fmt(minimum(row, 'decode_ms_per_token'), 2)})"
                if minimum(row, "decode_ms_per_token")
                else ""
            ),
            fmt(None if peak is None else peak / 2**30, 2),
            fmt(None if kv is None else kv / 2**20, 1),
            f"{tokens.get('video_in', '–')} → {tokens.get('video_after_stage1', '–')} → "
            f"{tokens.get('video_after_stage2', '–')}",
            percent(tokens.get("retention")),
            fmt(row.get("prefill_flops_relative_to_stock"), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------------ headlines
def _headline_shapes(result: dict[str, Any]) -> list[dict[str, Any]]:
    shapes = {s["frames"]: s for s in result["results"]}
    chosen = [shapes[f] for f in HEADLINE_FRAMES if f in shapes]
    if not chosen and shapes:  # other frame counts: the smallest and the largest
        chosen = [shapes[min(shapes)], shapes[max(shapes)]] if len(shapes) > 1 else list(shapes.values())
    return chosen


def headlines(result: dict[str, Any]) -> list[str]:
    """The numbers the project quotes: speedup, where time goes, decode, memory, retention."""
    lines = []
    for shape in _headline_shapes(result):
        rows = shape_rows(shape)
        stock, paper = rows.get(STOCK), rows.get(PAPER)
        frames = shape["frames"]
        ttft_stock, ttft_paper = median(stock, "ttft_ms"), median(paper, "ttft_ms")
        limit = rows.get(LIMIT_VISION)
        lines.append(
            f"- **{frames} frames**: TTFT stock {fmt(ttft_stock)} ms → paper {fmt(ttft_paper)} ms, "
            f"speedup **{fmt(ratio(ttft_stock, ttft_paper), 2, 'x')}** (zero-overhead limit incl. vision: "
            f"{fmt(ratio(ttft_stock, median(limit, 'ttft_ms')), 2, 'x')})"
        )
        parts = [
            ("vision", median(paper, "vision_ms")),
            ("Stage 1", median(paper, "stage1_ms")),
            ("LLM prefill", median(paper, "llm_layers_ms")),
            ("Stage 2", median(paper, "stage2_ms")),
            ("hooks", median(paper, "hooks_ms")),
            ("other", median(paper, "other_ms")),
        ]
        lines.append(
            "  - where paper's TTFT goes: "
            + ", ".join(f"{label} {percent(ratio(value, ttft_paper))}" for label, value in parts)
        )
        # Decode is launch-bound and the host has bursts that slow whole repeats 2-4x (see the raw series):
        # the fastest repeat is the noise-robust figure; both rows get the same treatment.
        decode_stock = minimum(stock, "decode_ms_per_token")
        decode_paper = minimum(paper, "decode_ms_per_token")
        peak_stock, peak_paper = peak_memory(stock), peak_memory(paper)
        tokens = (paper or {}).get("tokens") or {}
        lines.append(
            f"  - decode (fastest repeat) {fmt(decode_paper, 2)} vs {fmt(decode_stock, 2)} ms/token "
            f"({fmt(ratio(decode_paper, decode_stock), 3, 'x')}); peak memory "
            f"{fmt(None if peak_paper is None else peak_paper / 2**30, 2)} vs "
            f"{fmt(None if peak_stock is None else peak_stock / 2**30, 2)} GiB; retention "
            f"{percent(tokens.get('retention'))} ({tokens.get('video_in', '–')} → "
            f"{tokens.get('video_after_stage2', '–')} video tokens); LLM prefill FLOPs "
            f"{fmt((paper or {}).get('prefill_flops_relative_to_stock'), 2, 'x')}"
        )
    return lines


def _check(name: str, values: list[tuple[int, float | None]], passes: Any, show: Any) -> Target:
    """MET if every frame count with a value passes; n/a if none has one."""
    present = [(frames, value) for frames, value in values if value is not None]
    if not present:
        return Target(name, "n/a", "not measured")
    ok = all(passes(value) for _, value in present)
    detail = ", ".join(f"{frames}f {show(value)}" for frames, value in present)
    return Target(name, "MET" if ok else "MISSED", detail)


def targets(result: dict[str, Any], decode_tolerance: float, memory_tolerance: float) -> list[Target]:
    """The project's targets for ``paper`` against stock, over every frame count of ``result``."""
    per_shape = []
    for shape in result["results"]:
        rows = shape["rows"]
        stock, paper = rows.get(STOCK), rows.get(PAPER)
        tokens = (paper or {}).get("tokens") or {}
        stage1, stage2 = median(paper, "stage1_ms"), median(paper, "stage2_ms")
        ttft = median(paper, "ttft_ms")
        per_shape.append(
            {
                "frames": shape["frames"],
                "retention": tokens.get("retention"),
                "prefill": ratio(median(paper, "llm_layers_ms"), median(stock, "llm_layers_ms")),
                "overhead": None if stage1 is None or stage2 is None else ratio(stage1 + stage2, ttft),
                "decode": ratio(minimum(paper, "decode_ms_per_token"), minimum(stock, "decode_ms_per_token")),
                "memory": ratio(peak_memory(paper), peak_memory(stock)),
            }
        )

    def series(key: str) -> list[tuple[int, float | None]]:
        return [(s["frames"], s[key]) for s in per_shape]

    return [
        _check(
            f"paper keeps <= {RETENTION_TARGET:.0%} of video tokens",
            series("retention"),
            lambda v: v <= RETENTION_TARGET,
            percent,
        ),
        _check(
            f"LLM prefill <= {PREFILL_TARGET}x stock",
            series("prefill"),
            lambda v: v <= PREFILL_TARGET,
            lambda v: fmt(v, 3, "x"),
        ),
        _check(
            f"Stage-1 + Stage-2 overhead <= {OVERHEAD_TARGET:.0%} of pruned TTFT",
            series("overhead"),
            lambda v: v <= OVERHEAD_TARGET,
            percent,
        ),
        _check(
            f"decode ms/token (fastest repeat) no worse than stock (+{decode_tolerance:.0%} noise allowance)",
            series("decode"),
            lambda v: v <= 1 + decode_tolerance,
            lambda v: fmt(v, 3, "x"),
        ),
        _check(
            f"peak memory no worse than stock (+{memory_tolerance:.0%})",
            series("memory"),
            lambda v: v <= 1 + memory_tolerance,
            lambda v: fmt(v, 3, "x"),
        ),
    ]


# ------------------------------------------------------------------------------------------------ answers
DECODE_TARGET_MS = 7.0
ANSWER_SPEEDUP_TARGET = 3.0
FD = "+fd"


def _answer_value(
    row: dict[str, Any] | None, tokens: int | str, key: str, stat: str = "median"
) -> float | None:
    summary = (((row or {}).get("summary") or {}).get(str(tokens)) or {}).get(key)
    return None if summary is None else summary[stat]


def answer_decode_ms(row: dict[str, Any] | None, counts: Sequence[int]) -> float | None:
    """ms per decoded token from whole answers: (answer(N_max) - answer(N_min)) / (N_max - N_min), medians.
    Prefill and per-call set-up cancel; every per-step cost (forward, sampling, streamer) stays in."""
    if len(counts) < 2:
        return None
    low, high = min(counts), max(counts)
    a, b = _answer_value(row, low, "answer_ms"), _answer_value(row, high, "answer_ms")
    return None if a is None or b is None else (b - a) / (high - low)


def _capture(row: dict[str, Any], tokens: int | str) -> str:
    first = (row.get("first_call") or {}).get(str(tokens)) or {}
    if not row.get("fast_decode"):
        return "–"
    if first.get("captured"):
        return f"{fmt(first.get('capture_s'), 2)} s"
    return "reused"


def answer_tables(result: dict[str, Any]) -> list[str]:
    """Whole-answer tables (batch 1 and batch N) of every frame count that has answer rows."""
    out: list[str] = []
    for shape in sorted(result["results"], key=lambda s: s["frames"]):
        answer = shape.get("answer")
        if not answer:
            continue
        counts = answer["tokens"]
        rows = answer["rows"]
        if all(_answer_value(row, n, "answer_ms") is None for row in rows.values() for n in counts):
            out += [
                "",
                f"#### {shape['frames']} frames: no timed repeat ({'; '.join(answer.get('skipped', []))})",
            ]
            continue
        out += [
            "",
            f"#### {shape['frames']} frames, batch 1"
            + (f" (skipped: {'; '.join(answer['skipped'])})" if answer.get("skipped") else ""),
            "",
            "| row | new tokens | answer ms (min) | vs stock (fastest repeats) | TTFT ms "
            "| decode ms/tok (streamer) | decode ms/tok (from answers) | peak GiB | cache MiB "
            "| graph capture (first call) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        stock = rows.get(STOCK)
        for n in counts:
            stock_min = _answer_value(stock, n, "answer_ms", "min")
            for name, row in rows.items():
                value = _answer_value(row, n, "answer_ms")
                peak = _answer_value(row, n, "peak_memory_bytes")
                cache = _answer_value(row, n, "cache_bytes")
                out.append(
                    "| "
                    + " | ".join(
                        [
                            f"`{name}`",
                            str(n),
                            f"{fmt(value)} ({fmt(_answer_value(row, n, 'answer_ms', 'min'))})",
                            fmt(ratio(stock_min, _answer_value(row, n, "answer_ms", "min")), 2, "x"),
                            fmt(_answer_value(row, n, "ttft_ms")),
                            fmt(_answer_value(row, n, "decode_ms_per_token"), 2),
                            fmt(answer_decode_ms(row, counts), 2) if n == counts[0] else "",
                            fmt(None if peak is None else peak / 2**30, 2),
                            fmt(None if cache is None else cache / 2**20, 1),
                            _capture(row, n),
                        ]
                    )
                    + " |"
                )
        batch = answer.get("batch")
        if batch and all(
            _answer_value(row, batch["tokens"], "answer_ms") is None for row in batch["rows"].values()
        ):
            out += [
                "",
                f"#### {shape['frames']} frames, batch {batch['size']}: no timed repeat (time budget)",
            ]
        elif batch:
            n = batch["tokens"]
            out += [
                "",
                f"#### {shape['frames']} frames, batch {batch['size']} (clips of different seeds: different "
                f"kept lengths, left padding), {n} new tokens",
                "",
                "| row | answer ms | generated tokens/s (whole answer) | decode tokens/s (streamer) "
                "| peak GiB | cache MiB | graph capture (first call) |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, row in batch["rows"].items():
                peak = _answer_value(row, n, "peak_memory_bytes")
                cache = _answer_value(row, n, "cache_bytes")
                out.append(
                    f"| `{name}` | {fmt(_answer_value(row, n, 'answer_ms'))} | "
                    f"{fmt(_answer_value(row, n, 'answer_tokens_per_s'))} | "
                    f"{fmt(_answer_value(row, n, 'decode_tokens_per_s'))} | "
                    f"{fmt(None if peak is None else peak / 2**30, 2)} | "
                    f"{fmt(None if cache is None else cache / 2**20, 1)} | {_capture(row, n)} |"
                )
    return out


def answer_targets(result: dict[str, Any]) -> list[Target]:
    """Issue 16's targets: paper+fd decode <= 7 ms/token; 64-token answer at 32 frames >= 3x stock's; the
    fast decode's peak memory and cache no worse than the eager pruned decode's plus the new-token rows."""
    decode, speed, memory, cache = [], [], [], []
    for shape in result["results"]:
        answer = shape.get("answer")
        if not answer:
            continue
        rows, counts = answer["rows"], answer["tokens"]
        fast, eager = rows.get(PAPER + FD), rows.get(PAPER)
        streamed = _answer_value(fast, counts[0], "decode_ms_per_token")
        decode.append((shape["frames"], streamed if streamed is not None else answer_decode_ms(fast, counts)))
        if 64 in counts and shape["frames"] == 32:
            speed.append(
                (
                    shape["frames"],
                    ratio(
                        _answer_value(rows.get(STOCK), 64, "answer_ms", "min"),
                        _answer_value(fast, 64, "answer_ms", "min"),
                    ),
                )
            )
        n = max(counts)
        fast_rows, eager_rows = _answer_value(fast, n, "cache_rows"), _answer_value(eager, n, "cache_rows")
        # the eager cache at the answer's end holds n - 1 new rows; the buffers need n (the last token's)
        cache.append(
            (shape["frames"], None if None in (fast_rows, eager_rows) else fast_rows - eager_rows - 1)
        )
        memory.append(
            (
                shape["frames"],
                ratio(
                    _answer_value(fast, n, "peak_memory_bytes"), _answer_value(eager, n, "peak_memory_bytes")
                ),
            )
        )
    return [
        _check(
            f"paper + fast decode: decode <= {DECODE_TARGET_MS} ms/token at batch 1",
            decode,
            lambda v: v <= DECODE_TARGET_MS,
            lambda v: fmt(v, 2, " ms"),
        ),
        _check(
            f"whole 64-token answer at 32 frames >= {ANSWER_SPEEDUP_TARGET}x faster than stock generate "
            "(fastest repeats)",
            speed,
            lambda v: v >= ANSWER_SPEEDUP_TARGET,
            lambda v: fmt(v, 2, "x"),
        ),
        _check(
            "paper + fast decode peak memory no worse than the eager pruned decode (longest answer)",
            memory,
            lambda v: v <= 1.0,
            lambda v: fmt(v, 3, "x"),
        ),
        _check(
            "paper + fast decode cache buffers no larger than the eager pruned cache plus the new tokens "
            "(rows over, longest answer)",
            cache,
            lambda v: v <= 0,
            lambda v: f"{v:+.0f} rows",
        ),
    ]


def fast_decode_section(report: dict[str, Any], name: str, probe: dict[str, Any] | None) -> list[str]:
    """Correctness, step cost (graph vs compile) and the per-step profile from bench_fast_decode.py."""
    env = report["environment"]
    out = [
        f"## Fast decode: correctness and the decode step (`{name}`)",
        "",
        f"- {report['model']}, {report['dtype']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"{env.get('card')}, {report['date_utc']}; {report['settings']['frames']} frames (batch 1) and "
        f"{report['settings']['padded_case_frames']} frames (batch 2, left padded), "
        f"{report['settings']['check_tokens']} forced greedy tokens",
        "- forced: every run takes the first eager run's token at each step (teacher forcing), so raw logits "
        "compare step by step; free run: plain greedy. Random weights make near-ties common (see the top-2 "
        "margin), so a free run can flip a token where the eager decode run twice does too.",
        "",
        "| row | case | max abs logit diff, eager vs eager | graph vs eager | static (no graph) vs eager | "
        "argmax = eager token (graph) | free-run tokens equal: eager twice / graph (first call, again) "
        "| min top-2 margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    divergences = []
    for entry in report.get("correctness", []):
        worst = {m: max(entry[m]["forced_max_abs_logit_diff_per_step"]) for m in ("eager", "graph", "static")}
        again = entry["graph"].get("second_free_run_tokens_equal")
        out.append(
            f"| `{entry['row']}` | {entry['case']} | {fmt(worst['eager'], 3)} | {fmt(worst['graph'], 3)} | "
            f"{fmt(worst['static'], 3)} | {percent(entry['graph']['forced_argmax_agreement'])} | "
            f"{entry['eager']['free_run_tokens_equal']} / {entry['graph']['free_run_tokens_equal']}"
            + ("" if again is None else f", {again}")
            + f" | {fmt(entry['reference_top2_margin_min'], 3)} |"
        )
        for mode in ("eager", "graph", "static"):
            for run in ("free_run", "second_free_run"):
                step = entry[mode].get(f"{run}_first_divergence")
                if step is not None and f"{run}_reference_margin_at_divergence" in entry[mode]:
                    margin = entry[mode][f"{run}_reference_margin_at_divergence"]
                    before = entry[mode][f"{run}_max_abs_logit_diff_up_to_divergence"]
                    divergences.append(
                        f"`{entry['row']}` {entry['case']}, {mode} ({run.replace('_', ' ')}): step {step}, "
                        f"reference top-2 margin there {fmt(margin, 3)}, max abs logit diff up to it "
                        f"{fmt(before, 3)}"
                    )
    if divergences:
        out += [
            "",
            "Free runs that left the reference tokens (where, and how close the reference's choice was):",
            "",
        ]
        out += [f"- {line}" for line in divergences]
    families = report.get("tiny_families") or []
    if families:
        out += [
            "",
            "Every family's tiny checkpoint on the same card, in the same dtype: greedy tokens of fast "
            f"decode (CUDA graph) against the eager decode, {report['settings']['check_tokens']} tokens:",
            "",
            "| family | row | case | CUDA graph | tokens equal | max abs logit diff |",
            "|---|---|---|---|---|---|",
        ]
        for entry in families:
            out.append(
                f"| {entry['family']} | `{entry['row']}` | {entry['case']} | "
                f"{entry.get('cuda_graph', '–')} | {entry.get('tokens_equal', entry.get('error', '–'))} | "
                f"{fmt(entry.get('max_abs_logit_diff'), 3)} |"
            )
    out += [
        "",
        "Decode step at batch 1 (ms, median of timed steps; the prefill of the row loaded into the buffers):",
        "",
        "| row | cache rows (prefill) | static step, eager | CUDA graph replay (capture s) | "
        "inductor-compiled step in the graph (compile s) | torch.compile reduce-overhead (compile s) |",
        "|---|---|---|---|---|---|",
    ]
    out += [f"- note: {note}" for note in report.get("notes", [])]
    out += [""] if report.get("notes") else []
    reduce = {e["row"]: e for e in (probe or {}).get("step", [])}
    for entry in report.get("step", []):
        other = reduce.get(entry["row"], {})
        out.append(
            f"| `{entry['row']}` | {entry['cache_rows']} ({entry['prefill_rows']}) | "
            f"{fmt(entry.get('static_eager_ms'), 2)} | {fmt(entry.get('graph_replay_ms'), 2)} "
            f"({fmt(entry.get('graph_capture_s'), 2)}) | {fmt(entry.get('inductor_graph_replay_ms'), 2)} "
            f"({fmt(entry.get('inductor_compile_s'), 1)}) | {fmt(other.get('compiled_ms'), 2)} "
            f"({fmt(other.get('compile_first_call_s'), 1)}) |"
        )
    profile = report.get("profile") or {}
    if "gpu_ms_per_step" in profile:
        kinds = ", ".join(f"{k} {fmt(v, 2)} ms" for k, v in profile["gpu_ms_per_step_by_kind"].items())
        out += [
            "",
            f"What one `paper` decode step costs (torch.profiler over eager static steps): "
            f"{fmt(profile['kernels_per_step'], 0)} kernels, {fmt(profile['gpu_ms_per_step'], 2)} ms of GPU "
            f"kernel time ({kinds}); the graph replays it in {fmt(profile.get('graph_replay_ms'), 2)} ms.",
            "",
            "What remains: the matrix products read every weight once per step (for the 7B, 15.2 GB at "
            "the 4.3 TB/s this card copies at: 3.5 ms, the floor); the rest is about 1,400 small kernels "
            "per step (per layer: RMS norms in float32, M-RoPE cos/sin split and re-concatenated, rotate-"
            "half, the key/value write, the grouped keys and values repeated for SDPA because a mask is "
            "passed, SiLU, residual adds) and about 1 us between kernels in the replay. Compiling the "
            "step (inductor) fuses most of the small kernels: hence its lower ms/step, paid for with the "
            "compilation.",
        ]
    if probe is not None:
        out += [
            "",
            f"(reduce-overhead numbers from `{probe.get('_file', 'probe')}`, an earlier run of the "
            "same script on the same card.)",
        ]
    return out


# ------------------------------------------------------------------------------------------------ outputs
def title(result: dict[str, Any]) -> str:
    return f"{result['model']['name']} on {result['environment']['card']}"


def plot(results: Sequence[dict[str, Any]], path: Path) -> bool:
    """TTFT (median) vs frames, one line per row, one panel per result; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.5), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        lines: dict[str, list[tuple[int, float]]] = {}
        for shape in sorted(result["results"], key=lambda s: s["frames"]):
            for name, row in shape_rows(shape).items():
                if name == LIMIT:
                    continue  # plotted with the vision time it would still pay (limit + vision)
                value = median(row, "ttft_ms")
                if value is not None:
                    lines.setdefault(name, []).append((shape["frames"], value))
        for name, points in lines.items():
            xs, ys = zip(*points, strict=True)
            style = {"linewidth": 2.5, "color": "black"} if name == STOCK else {}
            if name == LIMIT_VISION:
                style = {"linestyle": "--", "color": "grey"}
            ax.plot(xs, ys, marker="o", label=name, **style)
        ax.set_xscale("log", base=2)
        frames = sorted({s["frames"] for s in result["results"]})
        ax.set_xticks(frames, [str(f) for f in frames])
        ax.set_xlabel("frames (448x448)" if result["settings"]["size"] == 448 else "frames")
        ax.set_ylabel("time to first token, ms (median)")
        ax.set_title(title(result), fontsize=10)
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def markdown(
    results: Sequence[tuple[Path, dict[str, Any]]],
    all_targets: Sequence[list[Target]],
    png: Path | None,
    md_path: Path,
    fast_decode: tuple[Path, dict[str, Any], dict[str, Any] | None] | None = None,
) -> str:
    """The whole report as markdown."""
    out = [
        "# PruneVid end-to-end benchmarks",
        "",
        "Generated by `benchmarks/report.py` from "
        + ", ".join(f"`{path.name}`" for path, _ in results)
        + " (`benchmarks/bench_e2e.py`). Rows run interleaved in one process on the same processor outputs; "
        "times are medians over repeats (min in brackets).",
        "",
    ]
    if png is not None:
        try:
            link = png.resolve().relative_to(md_path.resolve().parent)
        except ValueError:
            link = png
        out += [f"![TTFT vs frames]({link.as_posix()})", ""]
    for (path, result), checks in zip(results, all_targets, strict=True):
        env, model, settings = result["environment"], result["model"], result["settings"]
        out += [
            f"## {title(result)} (`{path.name}`)",
            "",
            f"- model: {model['source']}; {model['parameters'] / 1e9:.2f} B parameters, {model['dtype']}, "
            f"{model['attn_implementation']} attention; Stage 2 at layer {model['default_pruning_layer']}",
            f"- processor: {result['processor']['note']}",
            f"- torch {env['torch']}, transformers {env['transformers']}, CUDA {env.get('cuda')}, "
            f"{env['date_utc']}, commit {env.get('git_commit') or 'unknown'}",
            f"- {settings['repeats']} TTFT repeats, {settings['decode_repeats']} decode repeats of "
            f"{settings['new_tokens']} tokens, {settings['warmup']} warm-up pass; question: "
            f"“{settings['question']}”",
        ]
        if not result.get("complete", False):
            out.append(f"- **incomplete run** ({result.get('error', 'stopped early')})")
        out += [f"- note: {note}" for note in result.get("notes", [])]
        skipped = [f"{s['frames']}f: {item}" for s in result["results"] for item in s.get("skipped", [])]
        skipped += [f"{frames}f: not run" for frames in result.get("skipped_frames") or []]
        if skipped:
            out.append(f"- skipped for time: {'; '.join(skipped)}")
        checks_ok = [
            (name, check)
            for s in result["results"]
            for name, check in (s.get("activation_check") or {}).items()
            if check
        ]
        if checks_ok:
            finite = all(part["finite"] for _, check in checks_ok for part in check.values())
            out.append(f"- activations finite in every checked run: {'yes' if finite else '**NO**'}")
        has_answers = any(shape.get("answer") for shape in result["results"])
        if settings["repeats"]:
            out += ["", "### Headlines", "", *headlines(result), "", "### Targets", ""]
            out += ["| target | status | per frame count |", "|---|---|---|"]
            out += [f"| {t.name} | **{t.status}** | {t.detail} |" for t in checks]
            for shape in sorted(result["results"], key=lambda s: s["frames"]):
                out += [
                    "",
                    f"### {shape['frames']} frames ({shape['video_tokens']} video tokens, "
                    f"prompt {shape['prompt_length']} tokens)",
                    "",
                    *shape_table(shape),
                ]
        if has_answers:
            out += [
                "",
                "### Whole answers: eager decode vs fast decode",
                "",
                "Rows `X` answer with `model.generate` (dynamic cache, eager decode), `X+fd` with "
                "`prunevid.fast_decode` (static buffers sized to the kept length + new tokens"
                + (
                    f", rounded up to {settings['fast_decode_bucket_rows']} rows"
                    if "fast_decode_bucket_rows" in settings  # runs before the buffers had the exact size
                    else ""
                )
                + (
                    f", or held buffers with at most {settings['fast_decode_reuse_slack_rows']} rows to spare"
                    if settings.get("fast_decode_reuse_slack_rows") is not None
                    else ""
                )
                + f"; the decode step replayed from a CUDA graph). {settings.get('answer_repeats')} timed "
                "repeats after one warm-up call per row and length "
                "(the first call builds the buffers and captures the graph: its capture time is the last "
                "column; later calls reuse them).",
                "",
                "| target | status | per frame count |",
                "|---|---|---|",
            ]
            out += [f"| {t.name} | **{t.status}** | {t.detail} |" for t in answer_targets(result)]
            out += answer_tables(result)
        out.append("")
    if fast_decode is not None:
        path, report, probe = fast_decode
        out += [*fast_decode_section(report, path.name, probe), ""]
    out += [
        "## Columns",
        "",
        "- **TTFT**: processor outputs already on the GPU → first new token (`generate`, synchronised).",
        "- **speedup**: stock TTFT / row TTFT. **limit**: stock model on a text-only prompt as long as "
        "`paper`'s final sequence (every layer and every decode step at the kept length, no pruning "
        "overhead, no vision tower); **limit + vision** adds the stock vision time a real pruner still pays.",
        "- **vision / Stage 1 / Stage 2 / hooks**: CUDA events from benchmark hooks registered before and "
        "after `attach()`, bracketing the vision tower, PruneVid's language-model pre-hook (Stage 1), its "
        "layer-M hook (Stage 2 scoring, selection, gather, KV cut) and its bookkeeping hooks.",
        "- **LLM prefill**: the language model's prefill forward minus the Stage-2 selection.",
        "- **decode ms/tok**: (last − first new-token time) / (new tokens − 1), all tokens forced; median "
        "(fastest repeat). Decode is launch-bound here and the host had bursts slowing whole repeats 2-4x, "
        "so the targets compare the fastest repeats.",
        "- **peak GiB**: `torch.cuda.max_memory_allocated`, weights included (larger of prefill and decode "
        "runs). **KV MiB**: keys + values cached after the prefill.",
        "- **rel. FLOPs**: estimated LLM prefill FLOPs / stock: per layer 2·P·L + 4·L²·H/2 (P = linear "
        "weights per layer, H = heads·head_dim, causal attention halves 4·L²·H), plus lm_head on one row "
        "and Stage-2 scoring; L = Stage-1 length for layers ≤ M, kept length after M.",
        "",
    ]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench_e2e.py JSON files")
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "benchmarks.md", help="markdown output")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "ttft_vs_frames.png", help="plot output")
    parser.add_argument("--fast-decode", type=Path, help="bench_fast_decode.py JSON (correctness, step cost)")
    parser.add_argument(
        "--fast-decode-probe",
        type=Path,
        help="an earlier bench_fast_decode.py JSON with reduce-overhead timings",
    )
    parser.add_argument("--decode-tolerance", type=float, default=0.02, help="allowed decode slowdown")
    parser.add_argument("--memory-tolerance", type=float, default=0.0, help="allowed peak-memory increase")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the markdown and the plot, print headlines and targets; returns ``{title: [Target, ...]}``."""
    args = parse_args(argv)
    results = [(path, json.loads(path.read_text())) for path in args.results]
    all_targets = [targets(r, args.decode_tolerance, args.memory_tolerance) for _, r in results]
    timed = [r for _, r in results if r["settings"].get("repeats")]  # answer-only runs have no TTFT series
    png = args.png if timed and plot(timed, args.png) else None
    if png is None:
        print("matplotlib is not installed: no plot written", file=sys.stderr)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    fast_decode = None
    if args.fast_decode is not None:
        probe = json.loads(args.fast_decode_probe.read_text()) if args.fast_decode_probe else None
        if probe is not None:
            probe["_file"] = args.fast_decode_probe.name
        fast_decode = (args.fast_decode, json.loads(args.fast_decode.read_text()), probe)
    args.md.write_text(markdown(results, all_targets, png, args.md, fast_decode))
    summary = {}
    for (_, result), checks in zip(results, all_targets, strict=True):
        print(f"\n== {title(result)} ==")
        print("\n".join(line.replace("**", "") for line in headlines(result)))
        for check in checks + answer_targets(result):
            print(f"{check.status:>6}  {check.name}: {check.detail}")
        summary[title(result)] = checks
    print(f"\nwrote {args.md}" + (f" and {png}" if png else ""))
    return summary


if __name__ == "__main__":
    main()
