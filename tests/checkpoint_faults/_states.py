"""Deterministic checkpoint states: ``state_for(i)`` is the one state ever saved as index ``i``.

Invariant: two different indexes never share a state and a state's content depends only on (i, size), so a
test can tell exactly which save produced what it loaded, and that nothing was mixed between two saves.
"""

from __future__ import annotations

import hashlib
from typing import Any


def state_for(index: int, size: int = 256) -> dict[str, Any]:
    """A plain-JSON state (stored as ``state.json``) with ``size`` characters of index-specific filler."""
    seed = hashlib.sha256(f"grd-state-{index}".encode()).hexdigest()
    filler = (seed * (size // len(seed) + 1))[:size]
    return {"step": index, "filler": filler, "history": [index * 3, index * 7], "tag": f"save-{index}"}
