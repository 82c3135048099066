"""fast_vision: batched window attention equals the stock per-window SDPA loop bit for bit, alone and in
the model (vision features, logits, greedy tokens), and detaching restores the stock vision attention."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunevid.fast_vision as fast_vision
import prunevid.models.qwen2_5_vl as adapter
from prunevid import PruneVidConfig, attach
from prunevid.fast_vision import plan_windows, window_attention
from prunevid.prompt import build_inputs

# Every test here starts and ends with the shared tiny models stock (see conftest.stock_models).
pytestmark = pytest.mark.usefixtures("stock_models")

GENERATE = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)


# ----------------------------------------------------------------------------------------------
# window_attention alone
# ----------------------------------------------------------------------------------------------


def per_window_loop(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int]) -> Any:
    """The stock computation: split ``[1, H, N, d]`` by window, one SDPA per window, concatenated
    token-major ``[1, N, H, d]``."""
    splits = [torch.split(x, lengths, dim=2) for x in (query, key, value)]
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False, scale=0.3)
        .transpose(1, 2)
        .contiguous()
        for q, k, v in zip(*splits, strict=True)
    ]
    return torch.cat(outputs, dim=1)


def stock_layout(tokens: int, heads: int, head_dim: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """q, k, v ``[1, H, N, d]`` with the vision attention's strides (views of one ``[N, 3, H, d]``)."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, 3, heads, head_dim, generator=generator).to(dtype)
    return [x.transpose(0, 1).unsqueeze(0) for x in qkv.permute(1, 0, 2, 3).unbind(0)]


# Few distinct lengths so that lengths repeat; 0 (an empty window) and 1 included.
window_lengths = st.lists(st.sampled_from([0, 1, 1, 2, 3, 7, 16, 16, 33, 64]), min_size=1, max_size=14)


@settings(max_examples=60, deadline=None)
@given(
    lengths=window_lengths,
    heads=st.integers(2, 4),  # one head: see the next test
    head_dim=st.sampled_from([8, 16, 40]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_window_attention_equals_the_per_window_loop(
    lengths: list[int], heads: int, head_dim: int, dtype: torch.dtype, seed: int
) -> None:
    query, key, value = stock_layout(sum(lengths), heads, head_dim, dtype, seed)
    cu_seqlens = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    fast = window_attention(query, key, value, cu_seqlens, 0.3)
    assert fast.shape == (1, sum(lengths), heads, head_dim)
    assert torch.equal(fast, per_window_loop(query, key, value, lengths))


def test_a_single_head_is_identical_on_one_cpu_thread() -> None:
    """With one head, a stock window of at most 32 rows is a single work item of the CPU flash kernel, which
    runs it outside a parallel region, where the BLAS may split its small GEMMs over threads and round
    differently from the same GEMMs inside the batched call's parallel region. With one thread (and with
    2+ heads, as in every vision tower) both run the same code."""
    lengths = [7, 7, 3, 7, 1]
    query, key, value = stock_layout(sum(lengths), 1, 40, torch.float32, 0)
    cu_seqlens = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = window_attention(query, key, value, cu_seqlens, 0.3)
        assert torch.equal(fast, per_window_loop(query, key, value, lengths))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The query shape of every SDPA call fast_vision makes, in order."""
    calls: list[tuple[int, ...]] = []
    original = fast_vision.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(q.shape))
        return original(q, *args, **kwargs)

    monkeypatch.setattr(fast_vision, "scaled_dot_product_attention", spy)
    return calls


def test_long_windows_can_keep_one_call_each(sdpa_calls: list[tuple[int, ...]]) -> None:
    calls = sdpa_calls
    for lengths in ([5, 9, 5, 9, 9], [9, 9, 9]):
        calls.clear()
        query, key, value = stock_layout(sum(lengths), 2, 8, torch.float32, 1)
        cu_seqlens = torch.tensor([0, *np.cumsum(lengths)])
        fast = window_attention(query, key, value, cu_seqlens, 0.3, max_batched_length=8)
        assert torch.equal(fast, per_window_loop(query, key, value, lengths))
        assert calls == [(2, 2, 5, 8)] * (5 in lengths) + [(1, 2, 9, 8)] * lengths.count(9)


def test_one_sdpa_call_per_distinct_length(sdpa_calls: list[tuple[int, ...]]) -> None:
    calls = sdpa_calls
    lengths = [4, 2, 4, 0, 1, 2, 4]
    query, key, value = stock_layout(sum(lengths), 2, 8, torch.float32, 0)
    window_attention(query, key, value, torch.tensor([0, *np.cumsum(lengths)]), 0.3)
    assert calls == [(1, 2, 1, 8), (2, 2, 2, 8), (3, 2, 4, 8)]  # (windows, heads, length, head_dim)


def test_plan_groups_windows_by_length() -> None:
    plan = plan_windows(torch.tensor([0, 4, 6, 10, 10, 11, 13], dtype=torch.int32))
    assert plan.total == 13 and plan.groups == ((1, 1), (2, 2), (4, 2))
    assert plan.order.tolist() == [10, 4, 5, 11, 12, 0, 1, 2, 3, 6, 7, 8, 9]
    assert plan.order[plan.inverse].tolist() == list(range(13))
    uniform = plan_windows(torch.tensor([0, 3, 3, 6, 9]))  # an empty window does not break uniformity
    assert uniform.groups == ((3, 3),) and uniform.order is None


def test_window_attention_refuses_a_mismatched_layout() -> None:
    query, key, value = stock_layout(5, 1, 8, torch.float32, 0)
    with pytest.raises(ValueError, match="covers 4 tokens but the query has 5"):
        window_attention(query, key, value, torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="non-decreasing"):
        plan_windows(torch.tensor([0, 3, 2, 5]))


# ----------------------------------------------------------------------------------------------
# Through the tiny model
# ----------------------------------------------------------------------------------------------

# Frame sides in pixels; the window is 112 px (4x4 merged tokens), so these give 2 and 3 window lengths.
FRAME_SIZES = {"224x168": (224, 168), "280x280": (280, 280)}


@pytest.fixture(scope="module", params=sorted(FRAME_SIZES))
def video_inputs(request: pytest.FixtureRequest, tiny_processor: Any, make_video_clip: Any) -> Any:
    height, width = FRAME_SIZES[request.param]
    clip = make_video_clip(4, height, width, seed=3)
    return build_inputs(tiny_processor, clip, "What moves?")


@pytest.fixture(scope="module")
def image_inputs(tiny_processor: Any) -> Any:
    image = np.random.default_rng(5).integers(0, 256, (224, 168, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = tiny_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tiny_processor(text=[text], images=[image], return_tensors="pt")


def vision(model: Any, inputs: Any) -> list[torch.Tensor]:
    """The vision tower's outputs: merged features (and, on 5.x, the last hidden state)."""
    if "pixel_values_videos" in inputs:
        pixels, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    else:
        pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    with torch.no_grad():
        output = model.model.visual(pixels.to(model.dtype), grid_thw=grid)
    if isinstance(output, torch.Tensor):  # 4.57 returns the merged features only
        return [output]
    return [output.pooler_output, output.last_hidden_state]


def run(model: Any, inputs: Any) -> list[torch.Tensor]:
    """Vision outputs, forward logits, greedy tokens and every generate step's logits."""
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, **GENERATE)
    return [*vision(model, inputs), logits, generated.sequences, *generated.logits]


def assert_identical(ours: list[torch.Tensor], stock: list[torch.Tensor]) -> None:
    assert len(ours) == len(stock)
    for index, (a, b) in enumerate(zip(ours, stock, strict=True)):
        assert torch.equal(a, b), f"output {index} differs"


def replaced(model: Any) -> list[bool]:
    """Per vision block: does its attention carry an instance-level forward?"""
    return ["forward" in vars(block.attn) for block in model.model.visual.blocks]


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every window plan the adapter builds (so a test can see the fast path ran, and on what)."""
    seen: list[Any] = []

    def spy(cu_seqlens: torch.Tensor) -> Any:
        seen.append(plan_windows(cu_seqlens))
        return seen[-1]

    monkeypatch.setattr(adapter, "plan_windows", spy)
    return seen


def test_fast_preset_is_bit_identical_to_stock(
    models: dict[str, Any], video_inputs: Any, plans: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = models["sdpa"]
    stock = run(model, video_inputs)
    with attach(model, PruneVidConfig.preset("fast")) as pruner:
        assert pruner.fast_vision_active and all(replaced(model))
        stock_sdpa_calls = []
        original = torch.nn.functional.scaled_dot_product_attention

        def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
            stock_sdpa_calls.append(1)
            return original(*args, **kwargs)

        fast_calls = []
        fast_original = fast_vision.scaled_dot_product_attention

        def fast_spy(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            fast_calls.append(q.shape[0])
            return fast_original(q, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
            patch.setattr(fast_vision, "scaled_dot_product_attention", fast_spy)
            vision(model, video_inputs)
        assert not stock_sdpa_calls  # the stock per-window loop never ran
        assert_identical(run(model, video_inputs), stock)
    assert not any(replaced(model))
    # Windows of several lengths (the general path), and one plan per boundary tensor per tower call.
    distinct = max(len(plan.groups) for plan in plans)
    assert distinct == (2 if video_inputs["video_grid_thw"][0, 1:].tolist() == [16, 12] else 3)
    # The windowed block (block 0): one batched call per length; the full-attention block (block 1): one
    # call per frame pair (longer than FAST_VISION_MAX_BATCHED_LENGTH), as stock.
    frame_pairs = int(video_inputs["video_grid_thw"][0, 0])
    assert len(fast_calls) == distinct + frame_pairs and fast_calls[distinct:] == [1] * frame_pairs
    # 4 tower calls (the spied one, run's direct one, forward, generate's prefill) x 2 boundary tensors
    assert len(plans) == 4 * 2


def test_images_take_the_same_path(models: dict[str, Any], image_inputs: Any, plans: list[Any]) -> None:
    model = models["sdpa"]
    stock = [*vision(model, image_inputs), model(**image_inputs).logits.detach()]
    with attach(model, PruneVidConfig.preset("fast")):
        with torch.no_grad():
            ours = [*vision(model, image_inputs), model(**image_inputs).logits]
    assert_identical(ours, stock)
    assert max(len(plan.groups) for plan in plans) == 2


def test_paper_preset_vision_features_and_detach(models: dict[str, Any], video_inputs: Any) -> None:
    model = models["sdpa"]
    stock = run(model, video_inputs)
    hooks = _hook_count(model)
    pruner = attach(model, PruneVidConfig.preset("paper"))
    assert pruner.fast_vision_active
    assert_identical(vision(model, video_inputs), stock[: len(vision(model, video_inputs))])
    run(model, video_inputs)  # pruned: differs from stock, but must leave nothing behind
    pruner.detach()
    assert not any(replaced(model)) and _hook_count(model) == hooks and not pruner.fast_vision_active
    assert_identical(run(model, video_inputs), stock)


@pytest.mark.parametrize(("implementation", "preset"), [("eager", "fast"), ("sdpa", "baseline")])
def test_eager_and_baseline_leave_the_vision_attention_stock(
    models: dict[str, Any], video_inputs: Any, plans: list[Any], implementation: str, preset: str
) -> None:
    model = models[implementation]
    stock = run(model, video_inputs)
    with attach(model, PruneVidConfig.preset(preset)) as pruner:
        assert not pruner.fast_vision_active and not any(replaced(model))
        assert_identical(run(model, video_inputs), stock)
    assert not plans


def test_deepcopy_binds_the_copy_and_a_switched_implementation_falls_back(
    tiny_checkpoint: Path, video_inputs: Any
) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_checkpoint, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    stock = vision(model, video_inputs)
    with attach(model, PruneVidConfig.preset("fast")):
        twin = copy.deepcopy(model)
    assert not any(replaced(model)) and all(replaced(twin))
    # The copy's forward uses the copy's own layers, not the original's.
    assert all(block.attn.forward.args[0] is block.attn for block in twin.model.visual.blocks)
    with torch.no_grad():
        for parameter in model.model.visual.parameters():
            parameter.mul_(0.5)
    assert_identical(vision(twin, video_inputs), stock)
    # An implementation switched after attach runs stock code (here eager, the reference).
    twin.model.visual.config._attn_implementation = "eager"
    eager = [x.clone() for x in vision(twin, video_inputs)]
    for block in twin.model.visual.blocks:
        del block.attn.forward
    assert_identical(vision(twin, video_inputs), eager)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
