"""Measuring TAPPA's assumptions and bounds on a model's heads (chapters 3-6): logit jump vs query jump, column
stability of re-accessed keys, Toeplitz deviation of diagonals, the dominant-channel intervention, periodic inputs.

Everything works on one head's pre-RoPE queries/keys in float64 (`HeadData`, from `capture_head`); the logit of
query t on key j is `scale * q_t^T R(t-j) k_j` with the model's own theta (`rope.channel_frequencies`).
"""
from __future__ import annotations

from .assumptions import *  # noqa: F401,F403
from .diagonal import *  # noqa: F401,F403
from .head import *  # noqa: F401,F403  (re-exported: `patterns.capture_head`, ...)
from .head import _check_head  # noqa: F401
from .predictable import *  # noqa: F401,F403
from .seasonal import *  # noqa: F401,F403
from .vertical import *  # noqa: F401,F403
