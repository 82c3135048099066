"""Off means stock: with every stage off, or after detach, outputs equal stock transformers bit for bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import prunevid.models.pruner as adapter
from prunevid import PruneVidConfig, attach
from prunevid.qwen2_5_vl import pruner_of

# Every test here starts and ends with the shared tiny models stock (see conftest.stock_models).
pytestmark = pytest.mark.usefixtures("stock_models")

GENERATE = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True)


def run(model: Any, inputs: Any) -> tuple[torch.Tensor, Any]:
    """Forward logits and a greedy generate() with every step's logits."""
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, **GENERATE)
    return logits, generated


def assert_identical(result: tuple[torch.Tensor, Any], stock: tuple[torch.Tensor, Any]) -> None:
    assert torch.equal(result[0], stock[0])
    assert torch.equal(result[1].sequences, stock[1].sequences)
    assert len(result[1].logits) == len(stock[1].logits)
    for step, (ours, theirs) in enumerate(zip(result[1].logits, stock[1].logits, strict=True)):
        assert torch.equal(ours, theirs), f"generate step {step} differs"


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("prompt", ["single", "padded", "system"])
def test_baseline_preset_is_bit_identical_to_stock(
    models: dict[str, Any], prompts: dict[str, Any], implementation: str, prompt: str
) -> None:
    model, inputs = models[implementation], prompts[prompt]
    stock = run(model, inputs)
    with attach(model, PruneVidConfig.preset("baseline")) as pruner:
        assert_identical(run(model, inputs), stock)
        stats = pruner.last_stats
    # The baseline still reports what it saw: every video token kept, the whole prompt cached.
    assert stats is not None and stats.retention == 1.0
    assert stats.kv_cache_length == [inputs["input_ids"].shape[1]] * 4  # after the prefill


@pytest.mark.parametrize("prompt", ["single", "padded"])
def test_detached_model_is_stock_again(models: dict[str, Any], prompts: dict[str, Any], prompt: str) -> None:
    model, inputs = models["sdpa"], prompts[prompt]
    stock = run(model, inputs)
    hooks_before = _hook_count(model)
    pruner = attach(model, PruneVidConfig.preset("paper"))
    pruned = run(model, inputs)
    assert pruned[0].shape[1] < stock[0].shape[1]  # the paper preset did prune
    pruner.detach()
    assert _hook_count(model) == hooks_before and not pruner.attached
    assert_identical(run(model, inputs), stock)


def test_context_manager_detaches(models: dict[str, Any]) -> None:
    model = models["sdpa"]
    with attach(model) as pruner:
        assert pruner_of(model) is pruner and pruner.config == PruneVidConfig.preset("paper")
    assert pruner_of(model) is None and _hook_count(model) == 0


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


SPIED = ("merge_video", "question_attention_scores", "select_tokens", "compress_kv")


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("baseline", set()),
        ("stage1_only", {"merge_video"}),
        ("stage2_only", {"question_attention_scores", "select_tokens", "compress_kv"}),
        ("paper", set(SPIED)),
    ],
)
def test_code_of_a_disabled_stage_never_runs(
    models: dict[str, Any],
    prompts: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    preset: str,
    expected: set,
) -> None:
    calls: dict[str, int] = {}
    for name in SPIED:
        original = getattr(adapter, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(adapter, name, spy)
    with attach(models["sdpa"], PruneVidConfig.preset(preset)):
        run(models["sdpa"], prompts["single"])
    assert set(calls) == expected


def test_stage2_without_cache_compression_never_cuts_the_cache(
    models: dict[str, Any], prompts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter, "compress_kv", lambda *a, **k: pytest.fail("Stage 3 code ran"))
    config = PruneVidConfig.preset("paper").replace(enable_cache_compression=False)
    with attach(models["sdpa"], config):
        run(models["sdpa"], prompts["single"])


def test_disabled_stages_register_no_hooks(models: dict[str, Any]) -> None:
    model = models["sdpa"]
    with attach(model, PruneVidConfig.preset("baseline")):
        # Bookkeeping only: the start of the model's forward and the end of the language model's.
        assert _hook_count(model) == 2
    with attach(model, PruneVidConfig.preset("stage1_only")):
        # ... plus the whole model's (labels) and the language model's pre-hook (Stage 1).
        assert _hook_count(model) == 4
        assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in _layers(model))


def _layers(model: Any) -> Any:
    return model.model.language_model.layers
