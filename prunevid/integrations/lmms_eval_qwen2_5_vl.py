"""lmms-eval's own Qwen2.5-VL chat model with PruneVid attached: ``--model prunevid_qwen2_5_vl``.

See :mod:`prunevid.integrations.lmms_eval_model` for what is added; everything else is
``lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL``'s.
"""

from __future__ import annotations

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

from prunevid.integrations.lmms_eval_model import PruneVidLmmsModel

__all__ = ["PruneVidQwen2_5_VL"]


class PruneVidQwen2_5_VL(PruneVidLmmsModel, Qwen2_5_VL):
    """lmms-eval's Qwen2.5-VL (chat) with a PruneVid pruner attached to its model."""

    is_simple = False
