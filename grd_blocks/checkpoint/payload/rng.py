"""Capture and restore random number generator state so a resumed run draws the same numbers.

Invariant: ``capture_rng_state`` returns only tensors, ints, floats, strings, lists, dicts and None, so it
loads under ``torch.load(weights_only=True)`` with no allow-listing;
``restore_rng_state(capture_rng_state())``
leaves every captured generator exactly where it was. Captured: torch CPU, every CUDA device when
``torch.cuda.is_available()``, Python's ``random``, numpy's legacy global state, and numpy ``Generator``
objects
passed by name.

Importing this module imports neither torch nor numpy (``RNG_MARKER`` is all the handlers need); the two
functions import them when called.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from grd_blocks.errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np

RNG_MARKER = "__grd_rng__"


def _to_plain(value: Any) -> Any:
    """numpy arrays/scalars -> tagged lists/ints so the result pickles under weights_only."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    return value


def _from_plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {key: _from_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_plain(item) for item in value]
    return value


def capture_rng_state(*, numpy_generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """Snapshot every RNG grd knows about (plus ``numpy_generators`` by name) as weights-only-safe data."""
    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        RNG_MARKER: 1,
        "torch_cpu": torch.get_rng_state().clone(),
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy_global": _to_plain(np.random.get_state(legacy=False)),
        "numpy_generators": {
            name: _to_plain(gen.bit_generator.state) for name, gen in (numpy_generators or {}).items()
        },
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [tensor.clone() for tensor in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(
    state: Mapping[str, Any], *, numpy_generators: Mapping[str, np.random.Generator] | None = None
) -> None:
    """Put every generator back where ``capture_rng_state`` found it.

    Each name in ``numpy_generators`` must have been captured; a missing one raises ``CheckpointError``.
    CUDA state is restored only when CUDA is available now.
    """
    import numpy as np
    import torch

    if state.get(RNG_MARKER) != 1:
        raise CheckpointError(
            "restore_rng_state got a value that capture_rng_state did not produce; pass state['rng'] "
            "(whatever key you saved capture_rng_state() under)"
        )
    torch.set_rng_state(state["torch_cpu"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state(_from_plain(state["numpy_global"]))
    saved = state.get("numpy_generators", {})
    for name, gen in (numpy_generators or {}).items():
        if name not in saved:
            raise CheckpointError(
                f"numpy generator {name!r} is not in the saved RNG state (saved: {sorted(saved)}); "
                "pass the same numpy_generators names to capture_rng_state and restore_rng_state"
            )
        gen.bit_generator.state = _from_plain(saved[name])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["torch_cuda"]))
