"""What a prefill did to the prompt: token counts per stage, kept positions, KV-cache size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class VideoStats:
    """One video of one sample.

    Attributes:
        tokens_in: video tokens the vision tower produced for it.
        tokens_after_stage1: tokens left after Stage 1 (``tokens_in`` when Stage 1 is off).
        tokens_after_stage2: tokens left after Stage 2 (``tokens_after_stage1`` when it is off or skipped).
        kept_indices: position in the original prompt of each token that reached the last layer (a merged
            token is named by its representative source token), increasing.
        merged_into: for each source token of the video, in grid order (t, row, col), the position in the
            original prompt of the representative of the Stage-1 token that contains it: its own position
            when Stage 1 is off, -1 for a token a reference method dropped before the LLM. With
            ``kept_indices`` it shows which parts of the video the LLM still saw.
    """

    tokens_in: int
    tokens_after_stage1: int
    tokens_after_stage2: int
    kept_indices: list[int] = field(default_factory=list)
    merged_into: list[int] = field(default_factory=list)

    @property
    def retention(self) -> float:
        """Fraction of this video's tokens that reached the last layer."""
        return self.tokens_after_stage2 / self.tokens_in if self.tokens_in else 1.0


@dataclass
class SampleStats:
    """One sample (row of the batch).

    Attributes:
        prompt_length: tokens of the prompt as the processor made it (padding included).
        videos: one entry per video of the sample, in prompt order.
        stage2_skipped: why Stage 2 did not run for this sample, or None if it ran (or is off).
        question_rows: prompt positions of the rows whose attention Stage 2 scored (valid rows only).
        question_source: where those rows came from: ``"user turn"`` (the text of the chat turn that holds
            the videos, before, between and after them, up to the end of the prompt) or ``"after the last
            video"`` (a raw prompt without a chat template); None when Stage 2 did not run.
        stage1_positions: for each row of the sequence that layers ``0..M`` see (after Stage 1), its
            position in the prompt; -1 for padding rows the pruner added. Rows of
            ``output_hidden_states[0..M]``.
        output_positions: for each row after layer ``M`` (the rows of ``logits`` and of
            ``output_hidden_states[M+1:]``), its position in the prompt; -1 for padding rows. Equal to
            ``stage1_positions`` when Stage 2 is off, and to ``range(prompt_length)`` when nothing was pruned.
    """

    prompt_length: int
    videos: list[VideoStats] = field(default_factory=list)
    stage2_skipped: str | None = None
    question_rows: list[int] = field(default_factory=list)
    question_source: str | None = None
    stage1_positions: list[int] = field(default_factory=list)
    output_positions: list[int] = field(default_factory=list)


@dataclass
class PruneStats:
    """Statistics of the last prefill.

    Attributes:
        samples: per sample of the batch.
        kv_cache_length: cached tokens per LLM layer after prefill (empty without a cache).
        kv_cache_bytes: bytes of all cached keys and values after prefill.
        kv_cache_bytes_unpruned: bytes the cache would hold had nothing been pruned.
        pruning_layer: the LLM layer where Stage 2 selected, or None when it is off.
        not_pruned: why the pruner left this prompt as stock although a stage is enabled (no video data,
            ``inputs_embeds`` only, ...), or None.
    """

    samples: list[SampleStats] = field(default_factory=list)
    kv_cache_length: list[int] = field(default_factory=list)
    kv_cache_bytes: int = 0
    kv_cache_bytes_unpruned: int = 0
    pruning_layer: int | None = None
    not_pruned: str | None = None

    @property
    def video_tokens_in(self) -> int:
        """Video tokens entering, over the batch."""
        return sum(v.tokens_in for s in self.samples for v in s.videos)

    @property
    def video_tokens_after_stage1(self) -> int:
        """Video tokens after Stage 1, over the batch."""
        return sum(v.tokens_after_stage1 for s in self.samples for v in s.videos)

    @property
    def video_tokens_after_stage2(self) -> int:
        """Video tokens after Stage 2, over the batch."""
        return sum(v.tokens_after_stage2 for s in self.samples for v in s.videos)

    @property
    def retention(self) -> float:
        """Fraction of the batch's video tokens that reached the last layer."""
        total = self.video_tokens_in
        return self.video_tokens_after_stage2 / total if total else 1.0

    def to_dict(self, per_token: bool = False) -> dict:
        """A JSON-ready dict, with the totals.

        Args:
            per_token: keep the per-token lists of each sample and video (``kept_indices``,
                ``merged_into``, question rows, positions: thousands of numbers on a real model); by
                default they are left out and only the counts remain.
        """
        out = asdict(self)
        if not per_token:
            for sample in out["samples"]:
                for record in (sample, *sample.get("videos", ())):
                    for name in [k for k, v in record.items() if isinstance(v, list) and k != "videos"]:
                        del record[name]
        out.update(
            video_tokens_in=self.video_tokens_in,
            video_tokens_after_stage1=self.video_tokens_after_stage1,
            video_tokens_after_stage2=self.video_tokens_after_stage2,
            retention=self.retention,
        )
        return out

    def summary(self) -> str:
        """One line per video: tokens per stage and retention; the KV cache size on the last line (or on the
        only one), e.g. ``"video: 512 tokens -> 94 after stage 1 -> 35 after stage 2 (6.8% kept); KV cache
        0.41 MiB (unpruned 1.20 MiB)"``."""
        lines = []
        for b, sample in enumerate(self.samples):
            for v, video in enumerate(sample.videos):
                name = (
                    "video" if len(self.samples) == 1 and len(sample.videos) == 1 else f"sample {b} video {v}"
                )
                lines.append(
                    f"{name}: {video.tokens_in} tokens -> {video.tokens_after_stage1} after stage 1 -> "
                    f"{video.tokens_after_stage2} after stage 2 ({video.retention:.1%} kept)"
                )
        if not lines:
            lines.append("no video tokens" + (f" (not pruned: {self.not_pruned})" if self.not_pruned else ""))
        unpruned = self.kv_cache_bytes_unpruned / 2**20
        kv = f"KV cache {self.kv_cache_bytes / 2**20:.2f} MiB (unpruned {unpruned:.2f} MiB)"
        if len(lines) == 1:
            return f"{lines[0]}; {kv}"
        return "\n".join([*lines, kv])

    def __str__(self) -> str:
        return self.summary()
