"""bench_e2e.py --family: the published Qwen2-VL-7B and Qwen3-VL-8B architectures (on the meta device) and a
CPU smoke run of each family's tiny architecture. Structure only, never timings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``benchmarks/bench_e2e.py`` imported under a private module name (it is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "_prunevid_bench_e2e_families", ROOT / "benchmarks" / "bench_e2e.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("family", "layers", "model_class"),
    [
        ("qwen2_vl", 28, "Qwen2VLForConditionalGeneration"),
        ("qwen3_vl", 36, "Qwen3VLForConditionalGeneration"),
    ],
)
def test_published_family_architectures_build(
    bench: ModuleType, family: str, layers: int, model_class: str
) -> None:
    """Exactly the hub's parameter totals, the tokenizer's ids everywhere the model reads them, SDPA."""
    key = bench.family_model_key(family, "7b")
    ids = {name: 700 + i for i, name in enumerate(bench._TOKEN_FIELDS)}
    config = bench.with_token_ids(bench.PUBLISHED_CONFIGS[key], ids)
    model = bench.build_random_model(config, torch.device("meta"), torch.bfloat16)
    assert type(model).__name__ == model_class
    assert sum(p.numel() for p in model.parameters()) == bench.PUBLISHED_PARAMETERS[key]
    bench._check_token_ids(model, ids)
    assert model.config._attn_implementation == "sdpa"
    dims = bench.LlmDims.of(model)
    assert dims.layers == layers and dims.attention_width == {"qwen2_vl": 3584, "qwen3_vl": 4096}[family]
    text = model.config.get_text_config()
    if family == "qwen3_vl":
        assert (text.hidden_size, text.num_key_value_heads, text.head_dim, text.intermediate_size) == (
            4096,
            8,
            128,
            12288,
        )
        assert text.eos_token_id == ids["eos_token_id"]
        rope = getattr(text, "rope_parameters", None) or text.rope_scaling
        assert list(rope["mrope_section"]) == [24, 20, 20]
        vision = model.config.vision_config
        assert (
            list(vision.deepstack_visual_indexes) == [8, 16, 24] and vision.num_position_embeddings == 48 * 48
        )
        assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.patch_size) == (
            27,
            1152,
            4096,
            16,
        )
    else:
        vision = model.config.vision_config
        assert (vision.depth, vision.embed_dim, vision.mlp_ratio, vision.hidden_size) == (32, 1280, 4, 3584)


def test_family_options(bench: ModuleType) -> None:
    args = bench.parse_args(["--family", "qwen3_vl"])
    assert (args.model, args.size) == ("qwen3-vl-8b", 448)
    assert bench.parse_args(["--family", "qwen3_vl", "--tiny"]).size == 128
    assert bench.parse_args(["--family", "qwen2_vl"]).model == "qwen2-vl-7b"
    assert bench.parse_args(["--model", "3b"]).model == "3b"
    for argv in (["--family", "qwen3_vl", "--size", "112"], ["--family", "qwen3_vl", "--model", "3b"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_tiny_family_run(bench: ModuleType, family: str, tmp_path: Path) -> None:
    """stock, paper, limit on the tiny architecture: paper prunes, limit has paper's final length."""
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--family", family, "--device", "cpu", "--frames", "4", "--rows", "stock,paper,limit"]
    bench.main([*argv, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] and family in report["processor"]["note"]
    (shape,) = report["results"]
    rows = shape["rows"]
    assert set(rows) == {"stock", "paper", "limit"}
    paper, limit = rows["paper"]["tokens"], rows["limit"]["tokens"]
    assert paper["video_after_stage2"] < paper["video_in"] == rows["stock"]["tokens"]["video_in"] == 32
    assert limit["prompt_length"] == paper["llm_length_final"]
