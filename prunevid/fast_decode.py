"""Fast decode: after the usual prefill, decode on static KV buffers with the step captured in a CUDA graph.

Decoding a 7B model one token at a time is launch-bound in eager PyTorch (about 18 ms per token on an H200
whatever the cache length, while reading the weights once takes about 3.5 ms). After PruneVid's prefill
the cache is short and its length is fixed, which is what a static, graph-captured decode step wants:

1. ``model.generate`` prepares everything as usual (generation config, logits processors, stopping
   criteria, M-RoPE positions, streamer) and calls :func:`decode` as its decoding loop
   (transformers' ``custom_generate`` hook, present in 4.57, 5.17 and 5.24);
2. :func:`decode` runs the stock prefill (``prepare_inputs_for_generation`` + ``model(...)``; PruneVid's
   hooks prune it as in any generate call) and picks the first token with generate's own processors;
3. the prefill cache is copied into :class:`StaticRowsCache` buffers of ``rows`` rows per layer: exactly
   the rows the eager decode's cache ends with (the kept length plus the new tokens but the last), or the
   buffers (and graph) of an earlier call when they have at most :data:`REUSE_SLACK_ROWS` rows more than
   needed, so that a video of a similar length reuses them; the rows not written yet are masked out;
4. every decode step calls the stock language model and ``lm_head`` with those buffers (the cache object
   implements the one ``Cache`` method the decode path calls, ``update``), a 4-D attention mask built from
   the pruned cache's valid rows (every supported version and family passes a 4-D mask to the layers as
   is), explicit M-RoPE positions (the unpruned positions ``generate`` would use) and, on 4.57, the
   physical write row as ``cache_position``. On CUDA the step (mask row, forward, ``lm_head``, position and
   row counters) is captured once in a ``torch.cuda.CUDAGraph`` and replayed; on CPU it runs eagerly.

PruneVid's hooks leave the decode steps alone: they act on forwards of ``model.model`` (a prefill, or
tokens appended to a pruned cache) and the steps call its language model directly; the pruned cache's
:class:`~prunevid.models.CacheLayout` gives the valid rows and the positions to continue at.

Token selection, logits processors, stopping criteria and the streamer stay on the host side, exactly
generate's, so greedy and sampled decoding, EOS per sample and ``TextIteratorStreamer`` behave as stock.
Turn it on with ``PruneVidConfig(fast_decode=True)`` (then ``model.generate`` uses it while the pruner is
attached, and so do ``prunevid.ask``, the CLI's ``--fast-decode`` and ``prunevid eval``), or call
:func:`generate` (``model.generate``'s arguments) with or without a pruner.

Choices, measured on an H200 with the 7B architecture (``docs/benchmarks.md``): the step is captured with
``torch.cuda.CUDAGraph`` directly (capture 0.1-0.2 s per buffer size, replay 8.2 ms per token for
``paper`` at 32 frames) rather than through ``torch.compile(mode="reduce-overhead")`` (6.1 ms, but 35-50 s
of compilation on the first call of every shape). ``compile_step=True`` compiles the step with inductor
before the capture (5.7 ms per token, about 47 s once per shape) for long runs of same-shaped questions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from transformers.cache_utils import Cache

from prunevid.models.registry import SUPPORTED_MODEL_TYPES

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# A held engine serves a call needing up to this many rows fewer than it has: a video of a similar length
# reuses its buffers and graph instead of capturing a new one (no new memory either: they are held already).
# New buffers have exactly the rows the call needs, as many as the eager decode's cache ends with.
REUSE_SLACK_ROWS = 256
# Static buffers (and graphs) kept per model, least recently used dropped first.
MAX_ENGINES_PER_MODEL = 2
# Eager steps run before a capture (cuBLAS workspaces, SDPA kernel choice, lazy initialisation).
WARMUP_STEPS = 2
# SDPA backends the decode step may use on CUDA (None: PyTorch's choice).
SDPA_BACKENDS: tuple | None = None

_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict[key, _Engine]
_LAST_STATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> FastDecodeStats


@dataclass
class FastDecodeStats:
    """What the last fast decode of a model did.

    Attributes:
        batch_size: samples decoded together.
        prefill_rows: physical cache rows the prefill left (the kept length after pruning).
        cache_rows: rows of the static buffers: ``prefill_rows`` + new tokens - 1 (the rows the eager
            decode's cache ends with), or a held engine's (at most REUSE_SLACK_ROWS more than needed).
        cache_bytes: bytes of the static key and value buffers of all layers.
        cuda_graph: whether decode steps were graph replays (False: eager static steps, e.g. on CPU).
        captured: whether this call built new buffers (and captured a graph); False when it reused them.
        capture_s: seconds spent building buffers, warming up and capturing in this call (0 when reused).
        decode_steps: forward passes after the prefill.
    """

    batch_size: int
    prefill_rows: int
    cache_rows: int
    cache_bytes: int
    cuda_graph: bool
    captured: bool
    capture_s: float
    decode_steps: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(vars(self))


def last_stats(model: nn.Module) -> FastDecodeStats | None:
    """The :class:`FastDecodeStats` of ``model``'s last fast decode, or None."""
    return _LAST_STATS.get(model)


def release(model: nn.Module) -> None:
    """Free the static buffers and graphs kept for ``model`` (the next fast decode builds them again)."""
    _ENGINES.pop(model, None)


# ----------------------------------------------------------------------------------------------- cache
class _Rows:
    """One layer's static key and value buffers ``[B, kv_heads, rows, head_dim]``."""

    is_compileable = False
    is_sliding = False

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self.keys = keys
        self.values = values


class StaticRowsCache(Cache):
    """Fixed key/value buffers that a decode step writes one row into, at the device index ``write_index``.

    Implements what the Qwen VL decode path calls on a cache when the positions, the mask and (4.57) the
    cache position are given explicitly: ``update(key_states, value_states, layer_idx, ...)``, called as
    ``update(k, v, i, cache_kwargs)`` (4.57), ``update(k, v, i)`` (5.17) and ``update(k, v, i, kwargs=...)``
    (5.24). It returns the whole buffers; the attention mask hides the rows not written yet.
    ``layers[i].keys`` / ``.values`` are the buffers, as in transformers' own caches.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        kv_heads: int,
        rows: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch, kv_heads, rows, head_dim)
        layers = [
            _Rows(
                torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
            )
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.rows = rows
        self.write_index = torch.zeros(
            1, dtype=torch.long, device=device
        )  # [1]: the row the next token takes
        self.filled = 0  # host-side count of rows in use, for get_seq_length

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Write ``key_states``/``value_states`` ``[B, kv_heads, 1, head_dim]`` at row ``write_index``;
        return the layer's whole buffers ``[B, kv_heads, rows, head_dim]``."""
        layer = self.layers[layer_idx]
        layer.keys.index_copy_(2, self.write_index, key_states)
        layer.values.index_copy_(2, self.write_index, value_states)
        return layer.keys, layer.values

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Rows in use (host-side count; the device counter is ``write_index``)."""
        return self.filled

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        """Bytes of every key and value buffer."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.keys, layer.values))


# ----------------------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class _EngineKey:
    batch: int
    rows: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    attention: str
    cuda_graph: bool
    compile_step: bool  # torch.compile (inductor, no cudagraphs of its own) before the capture
    weights: int  # data pointer of lm_head's weight: a moved or reloaded model gets new buffers


class _Engine:
    """Static buffers of one shape and the decode step over them (captured in a CUDA graph or eager)."""

    def __init__(self, model: nn.Module, key: _EngineKey) -> None:
        self.key = key
        self.model = model
        language_model = model.model.language_model
        device = key.device
        self.cache = StaticRowsCache(
            len(language_model.layers), key.batch, key.kv_heads, key.rows, key.head_dim, key.dtype, device
        )
        self.input_ids = torch.zeros(key.batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(3, key.batch, 1, dtype=torch.long, device=device)  # M-RoPE t, h, w
        self.valid = torch.zeros(key.batch, key.rows, dtype=torch.bool, device=device)
        parameters = inspect.signature(language_model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.pass_cache_position = "cache_position" in parameters  # 4.57: the physical row being written
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        self.step_function = torch.compile(self.step, dynamic=False) if key.compile_step else self.step

    def step(self) -> Tensor:
        """One decode step on the buffers: returns float32 logits ``[B, V]`` of the token in ``input_ids``."""
        write = self.cache.write_index
        self.valid.index_fill_(1, write, True)
        if self.key.attention == "sdpa":
            mask = self.valid[:, None, None, :]  # bool, True = attend
        else:  # eager adds the mask to the scores
            mask = torch.zeros(self.valid.shape, dtype=self.key.dtype, device=self.valid.device)
            mask = mask.masked_fill(~self.valid, torch.finfo(self.key.dtype).min)[:, None, None, :]
        kwargs: dict[str, Any] = {self.cache_argument: self.cache}
        if self.pass_cache_position:
            kwargs["cache_position"] = write
        with _sdpa_backends(self.key.device):
            output = self.model.model.language_model(
                input_ids=self.input_ids,
                attention_mask=mask,
                position_ids=self.positions,
                use_cache=True,
                **kwargs,
            )
        logits = self.model.lm_head(output[0][:, -1, :]).float()
        write.add_(1)
        self.positions.add_(1)
        return logits

    def capture(self) -> None:
        """Warm up on a side stream, then capture :meth:`step` (state is reset by :meth:`load` later)."""
        device = self.key.device
        self.valid[:, 0] = True  # keep the warm-up softmax finite
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self.step_function()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.step_function()
        self.graph = graph

    def load(self, kv: list[tuple[Tensor, Tensor]], valid: Tensor, positions: Tensor, tokens: Tensor) -> None:
        """Start a decode: the prefill's rows ``kv`` (per layer ``[B, kv_heads, P, head_dim]``), their
        validity ``valid [B, P]``, the M-RoPE positions ``[3, B]`` and the ids ``[B]`` of the next token."""
        prefill_rows = valid.shape[1]
        for layer, (keys, values) in zip(self.cache.layers, kv, strict=True):
            layer.keys[:, :, :prefill_rows].copy_(keys)
            layer.values[:, :, :prefill_rows].copy_(values)
            layer.keys[:, :, prefill_rows:].zero_()  # rows of an earlier call: masked, but keep them finite
            layer.values[:, :, prefill_rows:].zero_()
        self.valid.zero_()
        self.valid[:, :prefill_rows] = valid
        self.cache.write_index.fill_(prefill_rows)
        self.cache.filled = prefill_rows
        self.positions.copy_(positions[:, :, None])
        self.input_ids.copy_(tokens[:, None])

    def run(self, tokens: Tensor | None) -> Tensor:
        """Feed ``tokens [B]`` (None: the ones :meth:`load` set) and return the logits ``[B, V]``."""
        if tokens is not None:
            self.input_ids.copy_(tokens[:, None])
        self.cache.filled += 1
        if self.graph is None:
            return self.step_function()
        self.graph.replay()
        return self.logits.clone()  # the graph's output is overwritten by the next replay


def _engine_for(model: nn.Module, key: _EngineKey, needed_rows: int) -> tuple[_Engine, float]:
    """An engine for ``model`` with ``key``'s settings and at least ``needed_rows`` rows, and the seconds it
    took: the held one with the fewest rows in ``[needed_rows, needed_rows + REUSE_SLACK_ROWS]``, else a new
    one of ``key.rows`` rows (built, warmed up and captured)."""
    engines: OrderedDict = _ENGINES.setdefault(model, OrderedDict())
    fits = [
        held
        for held in engines
        if held == dataclasses.replace(key, rows=held.rows)
        and needed_rows <= held.rows <= needed_rows + REUSE_SLACK_ROWS
    ]
    if fits:
        held = min(fits, key=lambda k: k.rows)
        engines.move_to_end(held)
        return engines[held], 0.0
    while len(engines) >= MAX_ENGINES_PER_MODEL:
        engines.popitem(last=False)
    started = _clock(key.device)
    engine = _Engine(model, key)
    if key.cuda_graph:
        engine.capture()
    engines[key] = engine
    return engine, _clock(key.device) - started


# ----------------------------------------------------------------------------------------------- decode
def decode(
    model: nn.Module,
    input_ids: Tensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    streamer: Any = None,
    cuda_graph: bool | None = None,
    compile_step: bool = False,
    token_streamer: Any = None,
    **model_kwargs: Any,
) -> Any:
    """The decoding loop of ``model.generate(..., custom_generate=decode)``: stock prefill, static decode.

    Args:
        model: a ``Qwen2_5_VLForConditionalGeneration`` (with or without a PruneVid pruner).
        input_ids: ``[B, L]`` prompt ids (left padded), as ``generate`` passes them.
        logits_processor / stopping_criteria / generation_config / streamer: prepared by ``generate``.
        synced_gpus: must be False.
        cuda_graph: capture and replay the decode step in a CUDA graph (default: when the model is on CUDA);
            False runs the same static step eagerly. Pass it to ``generate`` as a keyword.
        compile_step: compile the step with ``torch.compile`` (inductor, no cudagraphs of its own) before
            the capture; the first call of every new shape pays the compilation.
        token_streamer: the streamer when ``generate`` is called through :func:`generate` (transformers
            hands a ``custom_generate`` callable no ``streamer``); it gets the prompt first, as stock.
        **model_kwargs: the model inputs ``generate`` prepared (pixel values, grids, attention mask,
            position ids, cache, ...).

    Returns:
        ``[B, L + n]`` sequences (finished samples padded with ``pad_token_id`` after their EOS), or a
        ``GenerateDecoderOnlyOutput`` with ``sequences`` (and ``scores`` / ``logits`` when asked) when
        ``return_dict_in_generate``; the cache is not returned (its buffers are reused by the next call).

    Raises:
        ValueError: an option fast decode does not support (beam search, assisted decoding, attentions or
            hidden states in the output, a cache that already holds tokens, use_cache=False, Stage 2
            without Stage 3, sliding-window attention, a model of another family).
    """
    _check_supported(model, generation_config, synced_gpus, model_kwargs)
    streamer = streamer if streamer is not None else token_streamer
    if streamer is not None:
        streamer.put(input_ids.cpu())  # the prompt first, as generate() does for its own loops
    device = input_ids.device
    batch, prompt_length = input_ids.shape
    max_length = getattr(stopping_criteria, "max_length", None) or generation_config.max_length
    steps_left = max_length - prompt_length
    pad_token_id = _pad_token_id(generation_config)
    has_eos_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
    if has_eos_criteria and pad_token_id is None:
        raise ValueError("fast decode needs pad_token_id (or eos_token_id) to pad finished samples")
    want_dict = bool(generation_config.return_dict_in_generate)
    scores_out: list[Tensor] | None = [] if want_dict and generation_config.output_scores else None
    logits_out: list[Tensor] | None = [] if want_dict and generation_config.output_logits else None

    # ---- prefill: the stock forward (PruneVid's hooks prune it)
    prefill_kwargs = dict(model_kwargs)
    parameters = inspect.signature(model.prepare_inputs_for_generation).parameters
    if "is_first_iteration" in parameters:
        prefill_kwargs["is_first_iteration"] = True
    if "cache_position" in parameters and prefill_kwargs.get("cache_position") is None:
        prefill_kwargs["cache_position"] = torch.arange(prompt_length, device=device)  # 4.57
    model_inputs = model.prepare_inputs_for_generation(input_ids, **prefill_kwargs)
    outputs = model(**model_inputs, return_dict=True)
    prefill_cache = _output_cache(outputs)
    logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=device)
    del outputs, model_inputs

    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    stats = None
    engine: _Engine | None = None
    tokens: Tensor | None = None
    steps = 0
    while True:
        scores = logits_processor(input_ids, logits)
        if scores_out is not None:
            scores_out.append(scores)
        if logits_out is not None:
            logits_out.append(logits)
        if generation_config.do_sample:
            tokens = torch.multinomial(nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        if has_eos_criteria:
            tokens = tokens * unfinished + pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~stopping_criteria(input_ids, scores)
        if input_ids.shape[1] >= max_length or not bool(unfinished.any()):
            break
        with _static_mode():
            if engine is None:
                engine, stats = _start(
                    model,
                    prefill_cache,
                    model_kwargs,
                    prompt_length,
                    steps_left,
                    tokens,
                    cuda_graph,
                    compile_step,
                )
                prefill_cache = None
            logits = engine.run(tokens if steps else None)
        steps += 1

    if streamer is not None:
        streamer.end()
    if stats is not None:
        stats.decode_steps = steps
        _LAST_STATS[model] = stats
    if not want_dict:
        return input_ids
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return GenerateDecoderOnlyOutput(
        sequences=input_ids,
        scores=None if scores_out is None else tuple(scores_out),
        logits=None if logits_out is None else tuple(logits_out),
    )


def _start(
    model: nn.Module,
    prefill_cache: Any,
    model_kwargs: dict,
    prompt_length: int,
    steps_left: int,
    tokens: Tensor,
    cuda_graph: bool | None,
    compile_step: bool,
) -> tuple[_Engine, FastDecodeStats]:
    """Move the prefill cache into static buffers (built or reused) and set the decode state."""
    kv = [(layer.keys, layer.values) for layer in prefill_cache.layers]
    lengths = {keys.shape[-2] for keys, _ in kv}
    if len(lengths) != 1:
        raise ValueError(
            "fast decode needs the same cache length in every layer; with Stage 2 on, turn Stage 3 "
            "(enable_cache_compression) on too"
        )
    keys0 = kv[0][0]
    batch, kv_heads, prefill_rows, head_dim = keys0.shape
    valid, positions = _decode_start(model, prefill_cache, model_kwargs, prompt_length, prefill_rows)
    use_graph = keys0.device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
    if use_graph and keys0.device.type != "cuda":
        raise ValueError("cuda_graph=True needs the model on a CUDA device")
    # The last new token is never fed back: the decode steps write steps_left - 1 rows. The capture's
    # warm-up steps write WARMUP_STEPS + 1 rows before load() resets them.
    needed_rows = prefill_rows + steps_left - 1
    rows = max(needed_rows, WARMUP_STEPS + 1)
    key = _EngineKey(
        batch=batch,
        rows=rows,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=keys0.dtype,
        device=keys0.device,
        attention=model.model.language_model.config._attn_implementation,
        cuda_graph=use_graph,
        compile_step=bool(compile_step),
        weights=model.lm_head.weight.data_ptr(),
    )
    engine, build_s = _engine_for(model, key, needed_rows)
    engine.load(kv, valid.to(keys0.device), positions.to(keys0.device), tokens)
    rows = engine.key.rows
    for layer in prefill_cache.layers:  # the rows live in the static buffers now
        layer.keys = layer.keys[..., :0, :].clone()
        layer.values = layer.values[..., :0, :].clone()
    stats = FastDecodeStats(
        batch_size=batch,
        prefill_rows=prefill_rows,
        cache_rows=rows,
        cache_bytes=engine.cache.nbytes,
        cuda_graph=use_graph,
        captured=build_s > 0,
        capture_s=build_s,
        decode_steps=0,
    )
    return engine, stats


def _decode_start(
    model: nn.Module, cache: Any, model_kwargs: dict, prompt_length: int, rows: int
) -> tuple[Tensor, Tensor]:
    """Validity ``[B, rows]`` bool of the prefill cache rows and M-RoPE positions ``[3, B]`` of the first
    decoded token, as the eager decode of the same cache would use them.

    A cache PruneVid pruned carries its :class:`~prunevid.models.CacheLayout` (valid rows, next position).
    Otherwise the rows are the prompt's (valid where its attention mask is 1) and the positions those the
    installed ``generate`` computes: 5.x prepared ``position_ids`` ``[4, B, L]`` (row 0 plain text
    positions) and continues at the last column + 1; 4.57 adds the ``rope_deltas`` the prefill stored to the
    logical cache position ``L``.
    """
    from prunevid.models import cache_layout

    layout = cache_layout(cache)
    if layout is not None:
        if layout.upper_valid is not None:
            raise ValueError(
                "fast decode needs the same cache rows in every layer; with Stage 2 on, turn Stage 3 "
                "(enable_cache_compression) on too"
            )
        if layout.valid.shape[1] != rows:
            raise RuntimeError("the pruned cache's layout does not match its length")
        return layout.valid.bool(), layout.next_position
    if rows != prompt_length:
        raise RuntimeError(
            "the prefill cache is shorter than the prompt but PruneVid describes no layout for it"
        )
    mask = model_kwargs.get("attention_mask")
    batch = cache.layers[0].keys.shape[0]
    valid = torch.ones(batch, rows, dtype=torch.bool) if mask is None else mask.bool()
    position_ids = model_kwargs.get("position_ids")
    if _TRANSFORMERS_MAJOR >= 5 and position_ids is not None and position_ids.ndim == 3:
        return valid, position_ids[-3:, :, -1] + 1
    deltas = model.model.rope_deltas
    if deltas is None:
        raise RuntimeError("the prefill stored no rope_deltas: cannot continue its M-RoPE positions")
    return valid, (prompt_length + deltas.reshape(-1)).expand(3, -1).clone()


def _check_supported(model: nn.Module, generation_config: Any, synced_gpus: bool, model_kwargs: dict) -> None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"fast decode supports {SUPPORTED_MODEL_TYPES} (checked against the eager decode); this model is "
            f"{model_type!r}: use fast_decode=False"
        )
    device_map = getattr(model, "hf_device_map", None) or {}
    if len({str(device) for device in device_map.values()}) > 1:
        raise ValueError(
            "fast decode needs the whole model on one device (its decode step is one CUDA graph); this model "
            f"is spread over {sorted({str(d) for d in device_map.values()})}: use fast_decode=False"
        )
    text_config = model.model.language_model.config
    if getattr(text_config, "use_sliding_window", False):
        raise ValueError("fast decode does not support sliding-window attention layers")
    if text_config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"fast decode supports sdpa and eager attention, not {text_config._attn_implementation!r}"
        )
    if synced_gpus:
        raise ValueError("fast decode does not support synced_gpus")
    if (generation_config.num_beams or 1) > 1:
        raise ValueError("fast decode is greedy or sampled decoding: num_beams must be 1")
    if getattr(generation_config, "prefill_chunk_size", None) is not None:
        raise ValueError("fast decode does not support prefill_chunk_size")
    if generation_config.use_cache is False or model_kwargs.get("use_cache") is False:
        raise ValueError("fast decode needs use_cache=True")
    if generation_config.return_dict_in_generate and (
        generation_config.output_attentions or generation_config.output_hidden_states
    ):
        raise ValueError("fast decode does not return attentions or hidden states; turn fast decode off")
    for name in ("cache", "past_key_values"):
        cache = model_kwargs.get(name)
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("fast decode starts from an empty cache; do not pass a filled cache")


def _pad_token_id(generation_config: Any) -> int | None:
    pad = generation_config.pad_token_id
    if pad is None:
        eos = generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    if isinstance(pad, Tensor):
        pad = int(pad.flatten()[0])
    return pad


def _output_cache(outputs: Any) -> Any:
    for name in ("cache", "past_key_values"):
        cache = getattr(outputs, name, None)
        if cache is not None:
            return cache
    raise RuntimeError("the prefill returned no cache")


@contextlib.contextmanager
def _sdpa_backends(device: torch.device) -> Iterator[None]:
    if SDPA_BACKENDS is None or device.type != "cuda":
        yield
        return
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(list(SDPA_BACKENDS)):
        yield


@contextlib.contextmanager
def _static_mode() -> Iterator[None]:
    """No autograd, and not inference mode: the static buffers outlive this call and are updated in place
    by later calls, which may or may not run under ``torch.inference_mode``."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------- entry points
def generate(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``model.generate(*args, **kwargs)`` with fast decode: the same arguments and outputs.

    ``max_new_tokens``, ``eos_token_id``, ``pad_token_id``, ``do_sample`` / ``temperature`` / ``top_k`` /
    ``top_p``, ``repetition_penalty``, ``min_new_tokens``, ``streamer`` (e.g. ``TextIteratorStreamer``),
    ``return_dict_in_generate`` with ``output_scores`` / ``output_logits`` work as in ``generate``; pass
    ``cuda_graph=False`` to run the static step without a graph, ``compile_step=True`` to compile it with
    inductor before the capture (faster steps, about 45 s of compilation per new shape on a 7B model). Returns
    what ``generate`` returns. See :func:`decode` for what is refused.
    """
    return type(model).generate(model, *args, **generate_kwargs(kwargs))


def generate_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate`` keyword arguments that make it decode with :func:`decode`.

    ``generate`` hands a ``custom_generate`` callable only the keyword arguments its own sampling loop does
    not take (4.57, 5.17 and 5.24 alike), which drops ``streamer``: it travels as ``token_streamer``.
    Raises ValueError for arguments fast decode cannot honour (another ``custom_generate``, an assistant).
    """
    kwargs = dict(kwargs)
    if kwargs.get("custom_generate") not in (None, decode) or kwargs.get("assistant_model") is not None:
        raise ValueError(
            "fast decode cannot be combined with another custom_generate or an assistant_model; "
            "turn fast decode off (PruneVidConfig(fast_decode=False)) for those"
        )
    kwargs["custom_generate"] = decode
    streamer = kwargs.pop("streamer", None)
    if streamer is not None:
        kwargs["token_streamer"] = streamer
    return kwargs
