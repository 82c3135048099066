"""lmms-eval's own Qwen3-VL chat model with PruneVid attached: ``--model prunevid_qwen3_vl``.

See :mod:`prunevid.integrations.lmms_eval_model` for what is added; everything else is
``lmms_eval.models.chat.qwen3_vl.Qwen3_VL``'s (Qwen3-VL and Qwen3-VL-MoE checkpoints).
"""

from __future__ import annotations

from lmms_eval.models.chat.qwen3_vl import Qwen3_VL

from prunevid.integrations.lmms_eval_model import PruneVidLmmsModel

__all__ = ["PruneVidQwen3_VL"]


class PruneVidQwen3_VL(PruneVidLmmsModel, Qwen3_VL):
    """lmms-eval's Qwen3-VL (chat) with a PruneVid pruner attached to its model."""

    is_simple = False
