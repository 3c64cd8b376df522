"""The adaptive (L-GreCo) variant of the compression hook: same state + function shape.

    state = LGreCoState(ddp_model, "powersgd", rank=4, lgreco={"period": 500})
    ddp_model.register_comm_hook(state, lgreco_hook)
    ...
    for row in state.plan():  # per-layer table for logging
        print(row["name"], row["setting"], row["bytes"], row["error"])

The uniform setting (rank / density / bits) is the budget: each plan minimises bytes while the
total compression error stays <= alpha x what the uniform setting would cause.
"""

from torch import nn

from distcomp.compression.lgreco import LGreCoConfig
from distcomp.hooks.ddp import CompressionState, compression_hook


class LGreCoState(CompressionState):
    """:class:`~distcomp.hooks.ddp.CompressionState` with adaptive planning on by default.

    lgreco: :class:`~distcomp.compression.lgreco.LGreCoConfig` or a dict of its fields
    (warmup_steps, period, window, alpha, error_measure, gamma, beta, topk_span, topk_points,
    qsgd_bits, bins). Everything else (process_group, rank, timeout_s, ...) as for CompressionState.
    """

    def __init__(self, model: nn.Module, method: str = "powersgd", *,
                 lgreco: "LGreCoConfig | dict | None" = None, **options):
        super().__init__(model, method, lgreco=LGreCoConfig() if lgreco is None else lgreco,
                         **options)


lgreco_hook = compression_hook
