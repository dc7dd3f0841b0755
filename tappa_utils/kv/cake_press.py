"""`CAKEPress`: CAKE's per-layer budgets (entropy x variance of the window attention), the paper's baseline."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .preference import cake_preference
from .tappa_press import TAPPAPress


@dataclass
class CAKEPress(TAPPAPress):
    """CAKE: layer budgets from `P_l = D_l^(1/tau1) * V_l^(1/tau2)` of the observation window's attention.

    Cascading and Adaptive KV cache Eviction (Qin et al., ICLR 2025, https://arxiv.org/abs/2503.12491), as the
    official TAPPA code runs it for its CAKE baseline: the TAPPAPress machinery (same window, CAKE token score,
    allocation, eviction) with only the layer preference replaced (q-similarity is still recorded, unused).
    All parameters as `TAPPAPress`; `alpha` is ignored.
    """

    def preference(self, qsim: float, attn: torch.Tensor) -> float:
        """CAKE's preference of the layer (see `preference.cake_preference`)."""
        return cake_preference(attn, self.tau1, self.tau2)
