"""A torchrun worker that fails for real: rank 1 raises, rank 0 waits in a collective that never completes
(torchrun stops it once rank 1 has failed). Neither stops for its budget, so neither creates
GRD_TIMEOUT_FILE."""

from __future__ import annotations

import torch.distributed as dist

dist.init_process_group("gloo")
if dist.get_rank() == 1:
    raise RuntimeError("rank 1 fails on purpose")
dist.barrier()
