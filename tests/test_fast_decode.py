"""Fast decode (static KV buffers; CUDA graph on GPUs) against the eager decode, on the tiny model on CPU.

On CPU the static step runs without a graph; in float32 it must give the very tokens (and, here, logits to
float rounding) of stock ``generate`` with the same pruner, for greedy and seeded sampled decoding, padded
batches with different kept lengths, EOS per sample and a streamer. GPU checks (graph replay within bf16
tolerance of the eager decode) are in ``benchmarks/bench_fast_decode.py``: they need the device.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from transformers import TextIteratorStreamer

from prunevid import fast_decode
from prunevid.config import PruneVidConfig
from prunevid.qwen2_5_vl import attach

NEW_TOKENS = 10


def _both(model: Any, inputs: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(stock generate, fast decode) sequences for the same call."""
    kwargs.setdefault("max_new_tokens", NEW_TOKENS)
    kwargs.setdefault("do_sample", False)
    return model.generate(**inputs, **kwargs), fast_decode.generate(model, **inputs, **kwargs)


@pytest.mark.parametrize("preset", ["baseline", "paper", "aggressive"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("prompt", ["single", "padded"])
def test_greedy_tokens_equal_the_eager_decode(
    stock_models: dict[str, Any], prompts: dict[str, Any], preset: str, attention: str, prompt: str
) -> None:
    model, inputs = stock_models[attention], prompts[prompt]
    with attach(model, PruneVidConfig.preset(preset)) as pruner:
        stock, fast = _both(model, inputs)
        kept = [sample.prompt_length for sample in pruner.last_stats.samples]
    assert torch.equal(fast, stock)
    stats = fast_decode.last_stats(model)
    assert stats.batch_size == inputs["input_ids"].shape[0] and not stats.cuda_graph
    assert stats.decode_steps == NEW_TOKENS - 1
    assert stats.cache_rows >= stats.prefill_rows + NEW_TOKENS - 1  # the last token is never fed back
    if preset == "baseline":
        assert stats.prefill_rows == inputs["input_ids"].shape[1]
    else:  # the static buffers hold the pruned cache, not the prompt
        assert stats.prefill_rows < inputs["input_ids"].shape[1] == max(kept)


def test_padded_batch_keeps_different_lengths_per_sample(
    stock_models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model = stock_models["sdpa"]
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        stock, fast = _both(model, prompts["padded"])
        kept = [sum(v.tokens_after_stage2 for v in s.videos) for s in pruner.last_stats.samples]
    assert kept[0] != kept[1]  # the two clips keep different numbers of tokens: the cache is padded
    assert torch.equal(fast, stock)


def test_logits_match_the_eager_decode_step_by_step(
    stock_models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model = stock_models["sdpa"]
    kwargs = dict(return_dict_in_generate=True, output_logits=True, output_scores=True)
    with attach(model, PruneVidConfig.preset("paper")):
        stock, fast = _both(model, prompts["padded"], **kwargs)
    assert torch.equal(fast.sequences, stock.sequences)
    assert len(fast.logits) == len(stock.logits) == NEW_TOKENS
    for ours, theirs in zip(fast.logits, stock.logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(fast.scores, stock.scores, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_eos_stops_each_sample_and_pads_it(stock_models: dict[str, Any], prompts: dict[str, Any]) -> None:
    model, inputs = stock_models["sdpa"], prompts["padded"]
    with attach(model, PruneVidConfig.preset("paper")):
        free = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None)
        new = free[:, inputs["input_ids"].shape[1] :]
        # An "EOS" that sample 0 emits early and sample 1 does not emit at all.
        eos = next(int(t) for t in new[0, 1:] if int(t) not in new[1].tolist())
        pad = int(model.generation_config.pad_token_id)
        stock, fast = _both(model, inputs, eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(fast, stock)
    tail = fast[0, inputs["input_ids"].shape[1] :].tolist()
    stop = tail.index(eos)
    assert stop < NEW_TOKENS - 1 and set(tail[stop + 1 :]) == {pad}
    assert eos not in fast[1, inputs["input_ids"].shape[1] :].tolist()


def test_seeded_sampling_equals_stock(stock_models: dict[str, Any], prompts: dict[str, Any]) -> None:
    model = stock_models["sdpa"]
    kwargs = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=20)
    with attach(model, PruneVidConfig.preset("paper")):
        torch.manual_seed(3)
        stock = model.generate(**prompts["single"], max_new_tokens=NEW_TOKENS, **kwargs)
        torch.manual_seed(3)
        fast = fast_decode.generate(model, **prompts["single"], max_new_tokens=NEW_TOKENS, **kwargs)
    assert torch.equal(fast, stock)


def test_text_iterator_streamer_receives_the_answer(
    stock_models: dict[str, Any], prompts: dict[str, Any], tiny_processor: Any
) -> None:
    model, inputs = stock_models["sdpa"], prompts["single"]
    streamer = TextIteratorStreamer(tiny_processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, torch.Tensor] = {}

    def run() -> None:
        result["sequences"] = fast_decode.generate(
            model, **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, streamer=streamer
        )

    with attach(model, PruneVidConfig.preset("paper")):
        thread = threading.Thread(target=run)
        thread.start()
        pieces = list(streamer)
        thread.join()
    generated = result["sequences"][0, inputs["input_ids"].shape[1] :]
    expected = tiny_processor.tokenizer.decode(generated, skip_special_tokens=True)
    assert len(pieces) >= 1 and "".join(pieces) == expected


def test_buffers_are_reused_for_a_shorter_answer(
    stock_models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model = stock_models["sdpa"]
    fast_decode.release(model)
    with attach(model, PruneVidConfig.preset("paper")):
        first = fast_decode.generate(model, **prompts["single"], max_new_tokens=NEW_TOKENS, do_sample=False)
        built = fast_decode.last_stats(model)
        with torch.inference_mode():  # the buffers serve callers in and out of inference mode
            again = fast_decode.generate(model, **prompts["single"], max_new_tokens=6, do_sample=False)
        reused = fast_decode.last_stats(model)
    assert built.captured and not reused.captured and reused.capture_s == 0.0
    assert reused.cache_rows == built.cache_rows  # 6 or 10 new tokens: the same buffers
    assert torch.equal(again, first[:, : again.shape[1]])
    fast_decode.release(model)


def test_new_buffers_have_the_eager_caches_rows_and_larger_held_ones_serve(
    stock_models: dict[str, Any], prompts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """New buffers: exactly the rows the eager decode's cache ends with; a later call needing fewer rows
    reuses held buffers within REUSE_SLACK_ROWS, one needing far fewer builds its own."""
    model, inputs = stock_models["sdpa"], prompts["single"]
    fast_decode.release(model)
    runs = {}
    with attach(model, PruneVidConfig.preset("paper")):
        for new_tokens in (50, 20, 5):
            out = fast_decode.generate(model, **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            runs[new_tokens] = (out, fast_decode.last_stats(model))
            if new_tokens == 50:  # the held buffers have just enough slack for 20 new tokens, not for 5
                slack = runs[50][1].cache_rows - (runs[50][1].prefill_rows + 19)
                monkeypatch.setattr(fast_decode, "REUSE_SLACK_ROWS", slack)
        stock = model.generate(
            **inputs, max_new_tokens=50, min_new_tokens=50, do_sample=False, return_dict_in_generate=True
        )
    eager_rows = stock.past_key_values.get_seq_length()  # the pruned cache's rows at the answer's end
    assert runs[50][1].captured and runs[50][1].cache_rows == eager_rows == runs[50][1].prefill_rows + 49
    assert not runs[20][1].captured and runs[20][1].cache_rows == runs[50][1].cache_rows
    assert runs[5][1].captured and runs[5][1].cache_rows == runs[5][1].prefill_rows + 4
    for new_tokens, (out, _) in runs.items():  # every buffer size decodes the same tokens
        assert torch.equal(out, stock.sequences[:, : inputs["input_ids"].shape[1] + new_tokens])
    fast_decode.release(model)


@pytest.mark.parametrize("preset", ["baseline", "paper"])
def test_every_family_decodes_the_eager_tokens(
    tiny_family_models: dict[str, Any], family_prompts: dict[str, Any], preset: str
) -> None:
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE: padded batches and an image plus a video."""
    kwargs = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    model = tiny_family_models["sdpa"]
    for prompt in ("padded", "image_video"):
        with attach(model, PruneVidConfig.preset(preset)):
            stock = model.generate(**family_prompts[prompt], **kwargs)
            fast = fast_decode.generate(model, **family_prompts[prompt], **kwargs)
        assert torch.equal(fast.sequences, stock.sequences)
        for ours, theirs in zip(fast.logits, stock.logits, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    fast_decode.release(model)


@pytest.mark.parametrize("preset", ["baseline", "paper"])
def test_config_routes_generate_through_fast_decode(
    stock_models: dict[str, Any], prompts: dict[str, Any], preset: str
) -> None:
    model, inputs = stock_models["sdpa"], prompts["padded"]
    with attach(model, PruneVidConfig.preset(preset)):
        stock = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    fast_decode.release(model)
    with attach(model, PruneVidConfig.preset(preset).replace(fast_decode=True)):
        fast = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        stats = fast_decode.last_stats(model)
    assert stats is not None and stats.captured and torch.equal(fast, stock)
    assert "generate" not in vars(model)  # detach() leaves the stock method


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_beams=2), "num_beams"),
        (dict(return_dict_in_generate=True, output_attentions=True), "attentions"),
        (dict(use_cache=False), "use_cache"),
    ],
)
def test_unsupported_options_are_refused(
    stock_models: dict[str, Any], prompts: dict[str, Any], kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fast_decode.generate(stock_models["sdpa"], **prompts["single"], max_new_tokens=3, **kwargs)


def test_cuda_graph_needs_cuda(stock_models: dict[str, Any], prompts: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        fast_decode.generate(stock_models["sdpa"], **prompts["single"], max_new_tokens=3, cuda_graph=True)


def test_ask_with_fast_decode_gives_the_same_answer(
    stock_models: dict[str, Any], tiny_processor: Any, make_video_clip: Any
) -> None:
    from prunevid.pipeline import ask

    model = stock_models["sdpa"]
    clip = make_video_clip(8, 112, 112, seed=4)
    answers = {}
    for fast in (False, True):
        with attach(model, PruneVidConfig.preset("paper").replace(fast_decode=fast)):
            answers[fast] = ask(model, tiny_processor, clip, "What moves?", max_new_tokens=NEW_TOKENS)
    assert answers[True].token_ids == answers[False].token_ids and answers[True].text == answers[False].text
    assert answers[True].timings["decode"] > 0  # the first-token clock (a streamer) saw the first token


def test_compiled_step_gives_the_same_tokens(stock_models: dict[str, Any], prompts: dict[str, Any]) -> None:
    model, inputs = stock_models["sdpa"], prompts["single"]
    fast_decode.release(model)
    with attach(model, PruneVidConfig.preset("paper")):
        stock = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        compiled = fast_decode.generate(model, **inputs, max_new_tokens=6, do_sample=False, compile_step=True)
    assert torch.equal(compiled, stock)
    fast_decode.release(model)


def test_a_model_spread_over_devices_is_refused(
    stock_models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model = stock_models["sdpa"]
    model.hf_device_map = {"model.visual": 0, "model.language_model": 1}
    try:
        with pytest.raises(ValueError, match="one device"):
            fast_decode.generate(model, **prompts["single"], max_new_tokens=3)
    finally:
        del model.hf_device_map
