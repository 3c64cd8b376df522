"""A DDP hook that communicates nothing: each rank keeps its own gradient.

Used as the compute-only lower bound in benchmarks, and by local-updating methods (CO2) that
average parameters, not gradients, on their own schedule.
"""

import torch
import torch.distributed as dist


def local_hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Return the bucket unchanged, already completed; ``state`` is ignored (pass None)."""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut
