"""Layer pruning guided by q-similarity (TAPPA, Section 6) next to ShortGPT's block influence.

`scores` (calibration chunks, block influence, q-similarity, removal orders, score records), `removal` (a pruned
copy of a model, or layers removed for the duration of a block), `evaluate` (quality of each order on held-out
text), `report` (tables, files, figures) and `cli` (`python -m tappa_utils prune-eval`). The functions of
`scores` and `removal` are re-exported here:

>>> from tappa_utils import prune
>>> prune.tappa_order(bi=[0.2, 0.1, 0.3], qsim=[0.9, 0.1, 0.5], beta=0.0)  # beta = 0: ShortGPT's order
[1, 0, 2]
>>> prune.tappa_order(bi=[0.2, 0.1, 0.3], qsim=[0.9, 0.1, 0.5], beta=1.0)  # self-similar queries go first
[0, 1, 2]
"""
from __future__ import annotations

from .removal import layers_removed, remove_layers
from .scores import (
                     QSIM_MODES,
                     QSIM_ROPE,
                     LayerScores,
                     block_influence,
                     calibration_ids,
                     calibration_text,
                     layer_scores,
                     load_score_record,
                     minmax,
                     order_change_betas,
                     prune_order,
                     query_similarity,
                     query_similarity_of,
                     query_similarity_variants,
                     save_score_record,
                     score_record,
                     shortgpt_order,
                     tappa_order,
                     tappa_scores,
)

__all__ = ["QSIM_MODES", "QSIM_ROPE", "LayerScores", "block_influence", "calibration_ids", "calibration_text",
           "layer_scores", "layers_removed", "load_score_record", "minmax", "order_change_betas", "prune_order",
           "query_similarity", "query_similarity_of", "query_similarity_variants", "remove_layers",
           "save_score_record", "score_record",
           "shortgpt_order", "tappa_order", "tappa_scores"]
