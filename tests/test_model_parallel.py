"""PruneVid on a model split over devices by accelerate (what ``from_pretrained(device_map=...)`` installs).

Needs a GPU next to the CPU and accelerate, so it never runs in CI; ``benchmarks/bench_eval_parallel.py``
runs the same splits on the 7B architecture (``benchmarks/results/eval_model_parallel_h200x2.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prunevid.config import PruneVidConfig
from prunevid.pipeline import ask
from prunevid.qwen2_5_vl import attach
from prunevid.video import VideoClip

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device next to the CPU")


def _device_map(model: torch.nn.Module, embeddings: str, layers: str, root_side: str) -> dict[str, str]:
    language_model = model.model.language_model
    mapping = {"model.visual": embeddings, "model.language_model.embed_tokens": embeddings}
    mapping.update({f"model.language_model.layers.{i}": layers for i in range(len(language_model.layers))})
    for name, _ in language_model.named_children():
        if name not in ("embed_tokens", "layers"):
            mapping[f"model.language_model.{name}"] = root_side
    mapping["lm_head"] = root_side
    return mapping


@needs_gpu
def test_paper_with_inputs_and_embeddings_on_different_devices(
    tiny_checkpoint: Path, make_video_clip: Callable[..., VideoClip]
) -> None:
    accelerate = pytest.importorskip("accelerate")
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    model = model.eval().to("cuda:0")
    clip = make_video_clip(8, 112, 112, seed=3)
    config = PruneVidConfig.preset("paper")
    with attach(model, config):
        single = ask(model, processor, clip, "What moves?", max_new_tokens=4)
    accelerate.dispatch_model(model, _device_map(model, "cuda:0", "cpu", "cpu"), main_device="cpu")
    with attach(model, config):
        split = ask(model, processor, clip, "What moves?", max_new_tokens=4)
    assert split.stats.video_tokens_after_stage2 == single.stats.video_tokens_after_stage2
    assert split.token_ids == single.token_ids
