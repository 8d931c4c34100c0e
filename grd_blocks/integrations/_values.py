"""What the integrations hand to the store from a framework's own objects (shared by every integration).

Invariant: ``plain`` and ``scalar_metrics`` only convert; they never drop a value the store could hold.
``plain`` leaves what it does not know unchanged, so the store's own check (``check_plain``) names anything
that a weights-only load could not read back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def plain(value: Any) -> Any:
    """``value`` as plain data a weights-only load accepts: mappings (AttributeDict, OrderedDict) as dicts,
    namedtuples as tuples; anything else unchanged (the store refuses what is not plain, naming it)."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    return value


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a metrics mapping (0-d / 1-element tensors and numbers, not bools) as floats."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[str(key)] = float(value.item())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out
