"""Every way a transformers user calls the model behaves like the main path or fails with a clear error.

Autograd, ``generate(use_cache=False)``, right padding, continuing (a copy of) a pruned cache, a generated
``<|video_pad|>``, the question before the video, threads, ``torch.compile``, ``labels``, gradient
checkpointing, inputs without video data, and the row mapping of pruned forward outputs.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
import transformers
from test_pruning import capture_llm_inputs, mask_pruned_keys, stage1_origins
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicCache

import prunevid.models.pruner as adapter
import prunevid.prompt as prompt_module
from prunevid import PruneVidConfig, attach
from prunevid.prompt import build_inputs
from prunevid.qwen2_5_vl import cache_layout

pytestmark = pytest.mark.usefixtures("stock_models")

GREEDY = dict(do_sample=False, return_dict_in_generate=True, output_logits=True)


def _no_grad_generate(model: Any, inputs: Any, new_tokens: int = 4, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, **GREEDY, **kwargs)


# ------------------------------------------------------------------------------------------- 1. autograd
@pytest.mark.parametrize(
    "config",
    [
        PruneVidConfig.preset("paper"),
        PruneVidConfig.preset("stage1_only"),
        PruneVidConfig.preset("coverage").replace(static_time="ends"),  # every opt-in, two tokens per run
    ],
    ids=["paper", "stage1_only", "coverage+ends"],
)
def test_forward_under_autograd_equals_no_grad_and_backward_reaches_vision_and_llm(
    models: dict[str, Any], prompts: dict[str, Any], config: PruneVidConfig
) -> None:
    model, inputs = models["sdpa"], prompts["padded"]
    with attach(model, config) as pruner:
        with torch.no_grad():
            expected = model(**inputs).logits
        assert pruner.last_stats.retention < 1.0
        try:
            logits = model(**inputs).logits
            assert logits.requires_grad
            assert torch.equal(logits.detach(), expected)
            logits.float().square().mean().backward()
            vision = model.model.visual.blocks[0].attn.qkv.weight.grad
            llm = model.model.language_model.layers[-1].mlp.down_proj.weight.grad
            assert vision is not None and bool(vision.abs().sum() > 0)
            assert llm is not None and bool(llm.abs().sum() > 0)
        finally:
            model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- 2. generate(use_cache=False)
def test_generate_without_cache_is_refused_before_anything_is_selected(
    models: dict[str, Any], prompts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    selections = []
    original = adapter.select_tokens
    monkeypatch.setattr(adapter, "select_tokens", lambda *a, **k: selections.append(1) or original(*a, **k))
    model = models["sdpa"]
    with attach(model, PruneVidConfig.preset("paper")):
        with pytest.raises(ValueError, match="needs the KV cache"):
            _no_grad_generate(model, prompts["single"], use_cache=False)
        generation_config = copy.deepcopy(model.generation_config)
        generation_config.use_cache = False
        with pytest.raises(ValueError, match="needs the KV cache"):
            _no_grad_generate(model, prompts["single"], generation_config=generation_config)
    assert selections == []
    # With every stage off, use_cache=False is stock.
    stock = _no_grad_generate(model, prompts["single"], use_cache=False)
    with attach(model, PruneVidConfig.preset("baseline")):
        ours = _no_grad_generate(model, prompts["single"], use_cache=False)
    assert torch.equal(ours.sequences, stock.sequences)


# ------------------------------------------------------------------------------------- 3. right padding
def _right_padded(inputs: Any) -> dict[str, Any]:
    """The same left-padded batch with every row's padding moved to its end."""
    out = dict(inputs)
    mask = inputs["attention_mask"]
    for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if name in inputs:
            rows = [torch.roll(row, -int((m == 0).sum())) for row, m in zip(inputs[name], mask, strict=True)]
            out[name] = torch.stack(rows)
    return out


def test_right_padded_batch_selects_what_each_sample_selects_alone(
    models: dict[str, Any], prompts: dict[str, Any], tiny_processor: Any, make_video_clip: Any
) -> None:
    model = models["sdpa"]
    first = make_video_clip(12, 112, 112, seed=1, scene_cut_at=6)
    second = make_video_clip(8, 112, 140, seed=2)
    questions = ["What moves in the video?", "Which colour is the disc at the end?"]
    batch = _right_padded(prompts["padded"])
    assert bool((batch["attention_mask"][:, -1] == 0).any())  # really right padded
    config = PruneVidConfig.preset("stage2_only")
    with attach(model, config) as pruner:
        with torch.no_grad():
            model(**batch)
        together = pruner.last_stats
        alone = []
        for clip, question in zip([first, second], questions, strict=True):
            with torch.no_grad():
                model(**build_inputs(tiny_processor, clip, question))
            alone.append(pruner.last_stats.samples[0])
    for sample, single in zip(together.samples, alone, strict=True):
        assert [v.kept_indices for v in sample.videos] == [v.kept_indices for v in single.videos]
        assert sample.question_rows == single.question_rows
        assert sample.videos[0].tokens_after_stage2 < sample.videos[0].tokens_in


# ---------------------------------------------------------------------- 4. continuing a pruned cache
def _follow_up_ids(processor: Any, sequences: torch.Tensor, question: str) -> torch.Tensor:
    turn = f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    follow = processor.tokenizer(turn, return_tensors="pt").input_ids.expand(sequences.shape[0], -1)
    return torch.cat([sequences, follow], dim=1)


def _masked_conversation(
    eager: Any, llm_inputs: dict, origin: list[int], kept: set[int], layer: int, chunks: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Stock eager run of prompt + ``chunks`` (batch 1), pruned tokens hidden by masks; the logits
    ``[V]`` after the prompt and after each chunk's last token."""
    embeds, positions = llm_inputs["inputs_embeds"], llm_inputs["position_ids"][-3:]
    length = embeds.shape[1]
    keep = torch.tensor([[o in kept for o in origin]])
    visible = {"upper": keep, "lower": torch.ones(1, length, dtype=torch.bool), "queries": length}

    handles = mask_pruned_keys(eager.model.language_model.layers, layer, visible)
    cache, logits, next_position = DynamicCache(), [], positions[:, :, -1:] + 1
    try:
        with torch.no_grad():
            hidden = eager.model.language_model(
                inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state
            logits.append(eager.lm_head(hidden[0, -1]))
            visible["lower"] = keep  # Stage 3: layers 0..M keep only the kept prompt tokens
            for chunk in chunks:
                n = chunk.shape[1]
                for key in ("lower", "upper"):
                    visible[key] = torch.cat([visible[key], torch.ones(1, n, dtype=torch.bool)], dim=1)
                visible["queries"] = n
                hidden = eager.model.language_model(
                    inputs_embeds=eager.model.language_model.embed_tokens(chunk),
                    position_ids=next_position + torch.arange(n),
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state
                next_position = next_position + n
                logits.append(eager.lm_head(hidden[0, -1]))
    finally:
        for handle in handles:
            handle.remove()
    return logits


@pytest.mark.parametrize("copy_cache", [False, True])
def test_follow_up_question_continues_the_pruned_cache_like_the_masked_oracle(
    models: dict[str, Any], prompts: dict[str, Any], tiny_processor: Any, copy_cache: bool
) -> None:
    model, eager, inputs = models["sdpa"], models["eager"], prompts["single"]
    config = PruneVidConfig.preset("paper")
    origins = stage1_origins(eager, inputs, config)
    with attach(model, config) as pruner:
        calls, handle = capture_llm_inputs(model)
        first = _no_grad_generate(model, inputs)
        handle.remove()
        stats = pruner.last_stats
        cache = first.past_key_values
        layout = cache_layout(cache)
        assert layout is not None and layout.logical_length == first.sequences.shape[1] - 1
        ids = _follow_up_ids(tiny_processor, first.sequences, "And which colour is it?")
        continued = copy.deepcopy(cache) if copy_cache else cache
        second = _no_grad_generate(
            model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, past_key_values=continued
        )
        # The copy carried its own layout; the original cache is untouched by the copy's continuation.
        if copy_cache:
            assert cache_layout(cache).logical_length == layout.logical_length
        assert cache_layout(continued).logical_length == second.sequences.shape[1] - 1
    video = inputs["input_ids"][0] == model.config.video_token_id
    kept = set(torch.nonzero(~video).flatten().tolist()) | set(stats.samples[0].videos[0].kept_indices)
    prompt_length = inputs["input_ids"].shape[1]
    generated = first.sequences[:, prompt_length:]
    chunks = [generated[:, i : i + 1] for i in range(generated.shape[1])]
    chunks[-1] = ids[:, prompt_length + generated.shape[1] - 1 :]  # last answer token + the follow-up turn
    expected = _masked_conversation(eager, calls[0], origins[0], kept, pruner.pruning_layer, chunks)
    for step in range(generated.shape[1]):
        torch.testing.assert_close(first.logits[step][0], expected[step], atol=1e-5, rtol=0)
    torch.testing.assert_close(second.logits[0][0], expected[-1], atol=1e-5, rtol=0)
    assert int(second.logits[0][0].argmax()) == int(expected[-1].argmax())
    assert second.sequences[0, ids.shape[1]] == expected[-1].argmax()


def test_a_new_video_in_a_continuation_is_a_clear_error(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model, inputs = models["sdpa"], prompts["single"]
    with attach(model, PruneVidConfig.preset("paper")):
        out = _no_grad_generate(model, inputs)
        follow_up = dict(inputs)
        follow_up["input_ids"] = out.sequences
        follow_up["attention_mask"] = torch.ones_like(out.sequences)
        if "mm_token_type_ids" in follow_up:
            follow_up["mm_token_type_ids"] = torch.nn.functional.pad(
                inputs["mm_token_type_ids"], (0, out.sequences.shape[1] - inputs["input_ids"].shape[1])
            )
        with pytest.raises((ValueError, RuntimeError), match="pixel_values_videos|empty cache"):
            _no_grad_generate(model, follow_up, past_key_values=out.past_key_values)


def test_a_conversation_that_does_not_start_with_the_cached_tokens_is_refused(
    models: dict[str, Any], prompts: dict[str, Any], tiny_processor: Any
) -> None:
    model, inputs = models["sdpa"], prompts["single"]
    with attach(model, PruneVidConfig.preset("paper")):
        out = _no_grad_generate(model, inputs)
        ids = _follow_up_ids(tiny_processor, out.sequences, "And then?")
        ids[:, inputs["input_ids"].shape[1] + 1] += (
            1  # a token of the answer, changed (a re-tokenized answer)
        )
        with pytest.raises(ValueError, match="does not start with the tokens this pruned cache holds"):
            _no_grad_generate(
                model,
                {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                past_key_values=out.past_key_values,
            )


def test_a_cropped_pruned_cache_is_refused(models: dict[str, Any], prompts: dict[str, Any]) -> None:
    model, inputs = models["sdpa"], prompts["single"]
    with attach(model, PruneVidConfig.preset("paper")):
        out = _no_grad_generate(model, inputs)
        cache = out.past_key_values
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[..., :-1, :], layer.values[..., :-1, :]
        ids = out.sequences
        with pytest.raises(RuntimeError, match="cropped or changed outside PruneVid"):
            _no_grad_generate(
                model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, past_key_values=cache
            )


# ---------------------------------------------------------------------------- 5. a generated video token
class _ForceToken(LogitsProcessor):
    """Forces ``token`` at the first ``steps`` generation steps."""

    def __init__(self, token: int, steps: int) -> None:
        self.token, self.steps, self.calls = token, steps, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.steps:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token] = 0.0
        return scores


def test_text_prompt_that_generates_video_tokens_decodes_like_stock(
    models: dict[str, Any], tiny_processor: Any
) -> None:
    model = models["sdpa"]
    text = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Describe a video."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = dict(tiny_processor.tokenizer([text], return_tensors="pt"))
    video = model.config.video_token_id

    def run() -> Any:
        processors = LogitsProcessorList([_ForceToken(video, 2)])
        return _no_grad_generate(model, inputs, new_tokens=4, logits_processor=processors)

    stock = run()
    assert bool((stock.sequences == video).any())
    with attach(model, PruneVidConfig.preset("paper")):
        ours = run()
    assert torch.equal(ours.sequences, stock.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ours.logits, stock.logits, strict=True))


# ---------------------------------------------------------------------- 6. question before the video
def test_question_rows_are_the_user_turn_on_either_side_of_the_video(
    models: dict[str, Any], tiny_processor: Any, make_video_clip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = models["sdpa"]
    clip = make_video_clip(12, 112, 112, seed=1, scene_cut_at=6)
    question = "Which colour is the disc at the end?"
    # Layer 0 scores the embeddings themselves, which do not depend on the order: the same question must
    # then select the same video tokens whichever side of the video it stands on.
    config = PruneVidConfig.preset("paper").replace(pruning_layer=0)
    results = {}
    original = prompt_module.build_messages
    for order in ("video first", "question first"):
        if order == "question first":

            def question_first(q: str, *, system_prompt: str | None = None) -> list[dict[str, Any]]:
                messages = original(q, system_prompt=system_prompt)
                messages[-1]["content"] = messages[-1]["content"][::-1]
                return messages

            monkeypatch.setattr(prompt_module, "build_messages", question_first)
        inputs = build_inputs(tiny_processor, clip, question)
        ids = inputs["input_ids"][0]
        with attach(model, config) as pruner:
            with torch.no_grad():
                model(**inputs)
        sample = pruner.last_stats.samples[0]
        video_start = int(torch.nonzero(ids == model.config.video_token_id)[0])
        results[order] = (
            sorted(ids[sample.question_rows].tolist()),
            sample.question_source,
            [i - video_start for i in sample.videos[0].kept_indices],
            ids,
        )
    (rows_a, source_a, kept_a, ids_a), (rows_b, source_b, kept_b, ids_b) = results.values()
    assert source_a == source_b == "user turn"
    assert (
        rows_a == rows_b
    )  # the same tokens: question, template and assistant prefix, never the system prompt
    question_ids = tiny_processor.tokenizer(question).input_ids
    assert len(rows_a) < len(question_ids) + 10
    assert kept_a == kept_b
    assert not torch.equal(ids_a, ids_b)  # the two prompts really differ


def test_raw_prompt_without_chat_template_scores_the_tokens_after_the_video(
    models: dict[str, Any], tiny_processor: Any, make_video_clip: Any
) -> None:
    model = models["sdpa"]
    clip = make_video_clip(8, 56, 56)
    text = "<|vision_start|><|video_pad|><|vision_end|>What moves?"
    kwargs: dict[str, Any] = {"do_sample_frames": False}
    if int(transformers.__version__.split(".")[0]) >= 5:
        kwargs["video_metadata"] = [{"fps": 4.0, "total_num_frames": 8, "frames_indices": list(range(8))}]
    inputs = tiny_processor(text=[text], videos=[clip.frames], return_tensors="pt", **kwargs)
    with attach(model, PruneVidConfig.preset("stage2_only")) as pruner:
        with torch.no_grad():
            model(**inputs)
    sample = pruner.last_stats.samples[0]
    end = int(torch.nonzero(inputs["input_ids"][0] == model.config.video_token_id)[-1]) + 1
    assert sample.question_source == "after the last video"
    assert sample.question_rows == list(range(end, inputs["input_ids"].shape[1]))


# ------------------------------------------------------------------------ 8. threads, compile, labels
def test_two_threads_pruning_at_once_get_what_each_gets_alone(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model = models["sdpa"]
    names = ["single", "system"]
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        alone = {name: _no_grad_generate(model, prompts[name]).sequences for name in names}
        # Both threads stop inside layer M of their prefill at the same time, so their states interleave.
        barrier = threading.Barrier(2, timeout=60)
        layer = model.model.language_model.layers[pruner.pruning_layer]
        seen: set[int] = set()

        def meet(module: Any, args: tuple) -> None:
            if args[0].shape[1] > 1 and threading.get_ident() not in seen:
                seen.add(threading.get_ident())
                barrier.wait()

        handle = layer.register_forward_pre_hook(meet)
        results: dict[str, Any] = {}
        errors: list[BaseException] = []

        def work(name: str) -> None:
            try:
                results[name] = _no_grad_generate(model, prompts[name]).sequences
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        handle.remove()
    assert not errors, errors
    assert len(seen) == 2
    for name in names:
        assert torch.equal(results[name], alone[name])


def test_compiled_language_model_is_refused(tiny_checkpoint: Any, prompts: dict[str, Any]) -> None:
    from conftest import load_tiny_model

    model = load_tiny_model(tiny_checkpoint, "sdpa")
    model.model.language_model.compile()
    with attach(model, PruneVidConfig.preset("paper")):
        with pytest.raises(RuntimeError, match="torch.compile"):
            with torch.no_grad():
                model(**prompts["single"])


def test_labels_are_refused_when_pruning_and_stock_otherwise(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model, inputs = models["sdpa"], prompts["single"]
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        stock = model(**inputs, labels=labels).loss
    with attach(model, PruneVidConfig.preset("baseline")), torch.no_grad():
        assert torch.equal(model(**inputs, labels=labels).loss, stock)
    with attach(model, PruneVidConfig.preset("paper")), torch.no_grad():
        with pytest.raises(ValueError, match="labels"):
            model(**inputs, labels=labels)
        model(**inputs)  # the refusal leaves nothing behind: the next forward prunes as usual


def test_gradient_checkpointing_is_refused_with_stage2(tiny_checkpoint: Any, prompts: dict[str, Any]) -> None:
    from conftest import load_tiny_model

    model = load_tiny_model(tiny_checkpoint, "sdpa")
    model.gradient_checkpointing_enable()
    model.train()
    with attach(model, PruneVidConfig.preset("paper")):
        with pytest.raises(RuntimeError, match="gradient checkpointing"):
            model(**prompts["single"])
    with attach(model, PruneVidConfig.preset("stage1_only")):
        model(**prompts["single"]).logits.float().mean().backward()  # Stage 1 only: before the LLM, fine


# --------------------------------------------------------------- 9. inputs stock accepts, stages off/on
def _video_ids_without_data(inputs: Any) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}


@pytest.mark.parametrize("preset", ["baseline", "fast", "paper"])
def test_video_token_ids_without_video_data_are_stock(
    models: dict[str, Any], prompts: dict[str, Any], preset: str
) -> None:
    model = models["sdpa"]
    inputs = _video_ids_without_data(prompts["padded"])
    with torch.no_grad():
        stock = model(**inputs).logits
    with attach(model, PruneVidConfig.preset(preset)) as pruner, torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)
    if preset == "paper":
        assert "without video data" in pruner.last_stats.not_pruned
        assert pruner.last_stats.retention == 1.0


@pytest.mark.parametrize("preset", ["baseline", "paper"])
def test_explicit_2d_position_ids_with_video_token_ids_are_stock(
    models: dict[str, Any], prompts: dict[str, Any], preset: str
) -> None:
    model = models["sdpa"]
    inputs = _video_ids_without_data(prompts["single"])
    inputs["position_ids"] = torch.arange(inputs["input_ids"].shape[1])[None]
    with torch.no_grad():
        stock = model(**inputs).logits
    with attach(model, PruneVidConfig.preset(preset)), torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)


def test_inputs_embeds_only_is_stock_and_says_why(models: dict[str, Any], prompts: dict[str, Any]) -> None:
    model, inputs = models["sdpa"], prompts["single"]
    embeds = model.model.language_model.embed_tokens(inputs["input_ids"]).detach()
    with torch.no_grad():
        stock = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    with attach(model, PruneVidConfig.preset("paper")) as pruner, torch.no_grad():
        ours = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    assert torch.equal(ours, stock)
    assert "inputs_embeds" in pruner.last_stats.not_pruned


# ------------------------------------------------------------------------ 10. pruned forward outputs
def test_output_rows_map_to_prompt_positions(tiny_checkpoint: Any, prompts: dict[str, Any]) -> None:
    from conftest import load_tiny_model

    # A model of its own: transformers 5.x keeps hooks for output_hidden_states on the modules it captured.
    model, inputs = load_tiny_model(tiny_checkpoint, "sdpa"), prompts["padded"]
    with attach(model, PruneVidConfig.preset("paper")) as pruner, torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    stats, layer = pruner.last_stats, pruner.pruning_layer
    for b, sample in enumerate(stats.samples):
        output_positions = sample.output_positions
        assert len(output_positions) == out.logits.shape[1]
        assert len(sample.stage1_positions) == out.hidden_states[0].shape[1]
        assert all(h.shape[1] == len(sample.stage1_positions) for h in out.hidden_states[: layer + 1])
        assert all(h.shape[1] == len(output_positions) for h in out.hidden_states[layer + 1 :])
        valid = [p for p in output_positions if p >= 0]
        assert valid == sorted(valid) and valid[-1] == inputs["input_ids"].shape[1] - 1
        ids = inputs["input_ids"][b]
        video = model.config.video_token_id
        kept_video = [p for p in valid if ids[p] == video]
        assert kept_video == sorted(i for v in sample.videos for i in v.kept_indices)
        mask = inputs["attention_mask"][b]
        assert [p for p in valid if ids[p] != video] == [
            p for p in range(len(ids)) if ids[p] != video and mask[p]
        ]
    # The last row is the prompt's last token: the logits generate() continues from.
    with attach(model, PruneVidConfig.preset("paper")):
        first_step = _no_grad_generate(model, inputs, new_tokens=1).logits[0]
    torch.testing.assert_close(out.logits[:, -1], first_step, atol=1e-5, rtol=0)


# ------------------------------------------------- the ways transformers' own model tests call the model
def test_beam_search_and_sampling_return_dict_outputs_and_prune_every_row(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    model, inputs = models["sdpa"], prompts["single"]
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        greedy = _no_grad_generate(model, inputs)
        with torch.no_grad():
            beams = model.generate(
                **inputs, max_new_tokens=4, num_beams=2, num_return_sequences=2, return_dict_in_generate=True
            )
        stats = pruner.last_stats
        with torch.no_grad():
            top1 = model.generate(
                **inputs, max_new_tokens=4, do_sample=True, top_k=1, return_dict_in_generate=True
            )
    assert beams.sequences.shape[0] == 2
    # Both beams are the same prompt, pruned the same way.
    assert len(stats.samples) == 2
    assert stats.samples[0].videos[0].kept_indices == stats.samples[1].videos[0].kept_indices
    assert stats.retention < 1.0
    assert torch.equal(top1.sequences, greedy.sequences)  # sampling from one token is greedy


def test_copy_of_a_pruned_model_prunes_like_the_original(
    models: dict[str, Any], prompts: dict[str, Any]
) -> None:
    from prunevid.qwen2_5_vl import pruner_of

    model, inputs = models["sdpa"], prompts["padded"]
    with attach(model, PruneVidConfig.preset("paper")):
        expected = _no_grad_generate(model, inputs)
        twin = copy.deepcopy(model)
    twin_pruner = pruner_of(twin)
    assert twin_pruner is not None and twin_pruner.model is twin
    ours = _no_grad_generate(twin, inputs)
    assert torch.equal(ours.sequences, expected.sequences)
    assert twin_pruner.last_stats.retention < 1.0
    twin_pruner.detach()


def test_resized_embeddings_keep_pruning(tiny_checkpoint: Any, prompts: dict[str, Any]) -> None:
    from conftest import load_tiny_model

    model = load_tiny_model(tiny_checkpoint, "sdpa")
    model.resize_token_embeddings(model.config.text_config.vocab_size + 8)
    with attach(model, PruneVidConfig.preset("paper")) as pruner:
        out = _no_grad_generate(model, prompts["single"])
    assert out.logits[0].shape[-1] == model.config.text_config.vocab_size
    assert pruner.last_stats.retention < 1.0
