"""Smoke test of the end-to-end benchmark and its report: the tiny model on CPU, in-process.

Checks structure and invariants only (rows, fields, the stock row carries no pruner, ``paper`` removes
tokens); never timings, which mean nothing on a shared CPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

ROW_FIELDS = (
    "kind",
    "config",
    "pruning_layer",
    "raw",
    "summary",
    "tokens",
    "prefill_flops",
    "prefill_flops_relative_to_stock",
    "layer_lengths",
    "prunevid_hooks",
    "pruner_attached",
    "kv_cache_bytes",
    "kv_cache_length",
)
TOKEN_FIELDS = (
    "prompt_length",
    "llm_length_stage1",
    "llm_length_final",
    "video_in",
    "video_after_stage1",
    "video_after_stage2",
    "retention",
)
SERIES = ("ttft_ms", "stage1_ms", "stage2_ms", "llm_prefill_ms", "llm_layers_ms", "hooks_ms", "other_ms")


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) under a private module name."""
    spec = importlib.util.spec_from_file_location(
        f"_prunevid_bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("bench_e2e")


@pytest.fixture(scope="module")
def run(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One tiny run on CPU: ``(JSON path, report as written)``."""
    out = tmp_path_factory.mktemp("bench") / "e2e_tiny.json"
    bench.main(["--tiny", "--device", "cpu", "--out", str(out)])
    return out, json.loads(out.read_text())


def test_json_has_every_row_and_field(bench: ModuleType, run: tuple[Path, dict[str, Any]]) -> None:
    _, report = run
    assert report["complete"] and "error" not in report
    settings = report["settings"]
    assert [shape["frames"] for shape in report["results"]] == settings["frames"] == [8, 16]
    for key in ("card", "torch", "transformers", "date_utc", "device"):
        assert report["environment"][key]
    assert set(report["processor"]["token_ids"]) == set(bench._TOKEN_FIELDS)
    for key in ("ttft", "decode", "breakdown", "limit", "flops"):
        assert report["method"][key]
    for shape in report["results"]:
        assert list(shape["rows"]) == list(bench.ALL_ROWS)
        assert shape["skipped"] == []
        for name, row in shape["rows"].items():
            missing = [field for field in ROW_FIELDS if field not in row]
            assert not missing, f"{name} lacks {missing}"
            assert all(field in row["tokens"] for field in TOKEN_FIELDS)
            raw = row["raw"]
            for series in SERIES:
                assert len(raw[series]) == settings["repeats"], (name, series)
                assert row["summary"][series]["n"] == settings["repeats"]
            assert len(raw["decode_ms_per_token"]) == settings["decode_repeats"]
            assert len(raw["warmup_ttft_ms"]) == settings["warmup"]
            assert row["kv_cache_bytes"] > 0 and row["prefill_flops"] > 0
            # Vision runs in every row but the limit row, which has no pixels by construction.
            assert (row["summary"]["vision_ms"] is None) == (name == bench.LIMIT_ROW)


def test_stock_row_carries_no_pruner(run: tuple[Path, dict[str, Any]]) -> None:
    _, report = run
    for shape in report["results"]:
        rows = shape["rows"]
        for name in ("stock", "limit"):
            assert rows[name]["config"] is None
            assert rows[name]["pruner_attached"] is False
            assert rows[name]["prunevid_hooks"] == 0
        for name in ("baseline", "paper", "stage1_only", "stage2_only", "conservative", "aggressive"):
            assert rows[name]["pruner_attached"] is True and rows[name]["prunevid_hooks"] > 0
        assert rows["stock"]["prefill_flops_relative_to_stock"] == 1.0


def test_paper_drops_tokens_and_limit_matches_it(run: tuple[Path, dict[str, Any]]) -> None:
    _, report = run
    for shape in report["results"]:
        rows = shape["rows"]
        stock, paper, baseline, limit = (rows[n] for n in ("stock", "paper", "baseline", "limit"))
        video = shape["video_tokens"]
        assert stock["tokens"]["video_after_stage2"] == baseline["tokens"]["video_after_stage2"] == video
        tokens = paper["tokens"]
        assert tokens["video_in"] == video
        assert tokens["video_after_stage2"] < tokens["video_after_stage1"] <= video
        assert tokens["llm_length_final"] < tokens["llm_length_stage1"] <= tokens["prompt_length"]
        assert paper["kv_cache_bytes"] < stock["kv_cache_bytes"]
        assert paper["kv_cache_bytes"] == paper["kv_cache_bytes_prunevid_stats"]
        assert paper["kv_cache_length"] == [tokens["llm_length_final"]]  # Stage 3: every layer cut
        assert paper["prefill_flops_relative_to_stock"] < 1.0
        assert baseline["prefill_flops_relative_to_stock"] == 1.0
        # The limit row is the stock model at paper's final length from the first layer on.
        assert limit["tokens"]["prompt_length"] == tokens["llm_length_final"]
        assert limit["tokens"]["video_after_stage2"] == tokens["video_after_stage2"]
        assert limit["kv_cache_length"] == paper["kv_cache_length"]
        assert limit["prefill_flops"] < paper["prefill_flops"]


def test_activations_checked_and_finite(run: tuple[Path, dict[str, Any]]) -> None:
    _, report = run
    for shape in report["results"]:
        checks = shape["activation_check"]
        assert set(checks) == {"stock", "paper"}
        for check in checks.values():
            assert set(check) == {"vision_features", "llm_hidden", "logits"}
            assert all(part["finite"] for part in check.values())


def test_report_writes_markdown_and_plot(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    report_module = _load("report")
    path, _ = run
    md, png = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "ttft_vs_frames.png"
    summary = report_module.main([str(path), "--md", str(md), "--png", str(png)])
    text = md.read_text()
    for needle in ("| `stock` |", "| `paper` |", "| `limit + vision` |", "### Targets", "### 16 frames"):
        assert needle in text
    (checks,) = summary.values()
    assert len(checks) == 5 and all(c.status in ("MET", "MISSED", "n/a") for c in checks)
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("size", ["7b", "3b"])
def test_published_architectures_build(bench: ModuleType, size: str) -> None:
    """The GPU path's configs give the published parameter counts and keep the given token ids (on meta)."""
    ids = {name: 700 + i for i, name in enumerate(bench._TOKEN_FIELDS)}
    config = {**bench.PUBLISHED_CONFIGS[size], **ids}
    model = bench.build_random_model(config, torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == bench.PUBLISHED_PARAMETERS[size]
    bench._check_token_ids(model, ids)
    assert model.config._attn_implementation == "sdpa"
    assert bench.LlmDims.of(model).layers == {"7b": 28, "3b": 36}[size]


def test_answer_rows_and_their_report(bench: ModuleType, tmp_path: Path) -> None:
    """Whole-answer rows (eager and fast decode) land in the JSON and the report renders their targets."""
    out = tmp_path / "answers.json"
    argv = ["--tiny", "--device", "cpu", "--frames", "8", "--rows", "paper", "--repeats", "0"]
    argv += [
        "--decode-repeats",
        "0",
        "--answer-tokens",
        "2,3",
        "--answer-rows",
        "paper",
        "--answer-repeats",
        "1",
    ]
    bench.main([*argv, "--out", str(out)])
    report = json.loads(out.read_text())
    answer = report["results"][0]["answer"]
    assert answer["tokens"] == [2, 3] and set(answer["rows"]) == {"paper", "paper+fd"}
    fast, eager = answer["rows"]["paper+fd"], answer["rows"]["paper"]
    assert fast["fast_decode"] and not eager["fast_decode"]
    assert fast["first_call"]["2"]["captured"] and fast["first_call"]["2"]["cache_bytes"] > 0
    for row in (fast, eager):
        for n in ("2", "3"):
            assert row["summary"][n]["answer_ms"]["n"] == 1 and row["raw"][n]["cache_bytes"][0] > 0
    assert fast["raw"]["3"]["decode_ms_per_token"][0] is not None  # the streamer reaches fast decode
    report_module = _load("report")
    text = "\n".join(report_module.answer_tables(report))
    assert "`paper+fd`" in text and "`paper`" in text
    checks = report_module.answer_targets(report)
    assert len(checks) == 4 and "7.0 ms/token" in checks[0].name
    assert "cache buffers" in checks[3].name and checks[3].status == "MET"  # the eager cache's rows
