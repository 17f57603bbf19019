"""The result of one simulated GEE round (shared by the loop, its outputs and the log bridge)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class RoundResult:
    record: dict                          # JSON-serialisable summary (one history line)
    item_ids: np.ndarray                  # [N] pool item ids, index = pool position
    interactions: dict[str, np.ndarray]   # persona [S], shown [S, K], clicked [S] (pool positions)
