"""Cosine similarity to the API's 0-100 score (api/README.md section 6).

With cosine ``s`` clipped to [0, 1] and the recognizer's calibrated raw decision threshold
``t`` (manifest ``match_cosine``): ``82 * s / t`` below ``t``, ``82 + 18 * (s - t) / (1 - t)``
from ``t`` on. So the model's own decision threshold lands on 82 (the default
MATCH_THRESHOLD), 0 maps to 0 and 1 to 100, whatever model is active. For t = 0.55 this
is exactly upstream's ``60 + 40 * s``.
"""

from __future__ import annotations

import base64

import numpy as np

ANCHOR_SCORE = 82.0


def cosine_to_score(cosine: float, match_cosine: float) -> float:
    s = min(1.0, max(0.0, float(cosine)))
    t = float(match_cosine)
    if s < t:
        return ANCHOR_SCORE * s / t
    return ANCHOR_SCORE + (100.0 - ANCHOR_SCORE) * (s - t) / (1.0 - t)


def cosines_to_scores(cosines: np.ndarray, match_cosine: float) -> np.ndarray:
    """``cosine_to_score`` over an array (searchbyimage scores thousands at once)."""
    s = np.clip(np.asarray(cosines, np.float64), 0.0, 1.0)
    t = float(match_cosine)
    return np.where(s < t, ANCHOR_SCORE * s / t,
                    ANCHOR_SCORE + (100.0 - ANCHOR_SCORE) * (s - t) / (1.0 - t))


def feature_to_base64(feature: np.ndarray) -> str:
    """The wire format of features: base64 of little-endian float32, L2-normalised (4.3)."""
    return base64.b64encode(np.ascontiguousarray(feature, dtype="<f4").tobytes()).decode("ascii")
