"""flash-linear-attention (Triton) kernels for the gated delta rule on CUDA, when the package is installed."""

from __future__ import annotations

import functools
import os


@functools.cache
def available() -> bool:
    """True when fla imports and OMNISTREAM_NO_FLA is not set."""
    if os.environ.get("OMNISTREAM_NO_FLA"):
        return False
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception:
        return False
    return True


def gated_delta_rule(q, k, v, g, beta, state=None):
    """Same contract as modules.deltanet.chunk_gated_delta_rule, computed by fla's chunk / fused-recurrent kernels."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    op = fused_recurrent_gated_delta_rule if q.shape[1] == 1 else chunk_gated_delta_rule
    out, final = op(q, k, v, g=g.float(), beta=beta, initial_state=None if state is None else state.float(),
                    output_final_state=True, use_qk_l2norm_in_kernel=True)
    return out.to(v.dtype), final.float()
