"""The optional face-analysis models of a worker: age and gender, mask, RGB liveness.

Each exists only when the profile's manifest names it and its file was found
(workers/models.py); what a missing model would compute is "not assessed": attributes
``null``, FIQA ``mask: -1``, and ``liveness_rgb`` unsupported. They run only when a request
or a setting asks for them, so plain detection, search and compare cost nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..backends.base import Backend
from ..manifest.schema import ModelSpec
from .attributes import AgeGenderEstimator, age_bucket
from .liveness import RgbLiveness
from .mask import MaskClassifier
from .types import DetectedFace

#: A face whose mask probability reaches this wears a mask (``mask: "yes"``, FIQA fails).
MASK_THRESHOLD = 0.5

Attributes = Dict[str, Optional[str]]


@dataclass
class FaceExtras:
    attributes: Optional[AgeGenderEstimator] = None
    mask: Optional[MaskClassifier] = None
    liveness: Optional[RgbLiveness] = None

    def describe(self, image_bgr: np.ndarray, faces: Sequence[DetectedFace]) -> List[Attributes]:
        """``{age, gender, glasses, mask}`` per face (api/README.md 8.3); ``None`` for what
        no model computes (glasses always: no model with a usable licence exists)."""
        out: List[Attributes] = [{"age": None, "gender": None, "glasses": None, "mask": None}
                                 for _ in faces]
        if not faces:
            return out
        if self.attributes is not None:
            for item, (age_years, gender) in zip(out, self.attributes.estimate(image_bgr, faces)):
                item["age"], item["gender"] = age_bucket(age_years), gender
        if self.mask is not None:
            for item, probability in zip(out, self.mask.mask_scores(image_bgr, faces)):
                item["mask"] = "yes" if probability >= MASK_THRESHOLD else "no"
        return out

    def wears_mask(self, image_bgr: np.ndarray, face: DetectedFace) -> Optional[bool]:
        """None when there is no mask model (FIQA then reports ``mask: -1``)."""
        if self.mask is None:
            return None
        return self.mask.mask_scores(image_bgr, [face])[0] >= MASK_THRESHOLD

    def live_score(self, image_bgr: np.ndarray, face: DetectedFace) -> Optional[float]:
        """Probability that the face is a live person, or None without liveness models."""
        if self.liveness is None:
            return None
        return float(self.liveness.live_score(image_bgr, face))

    def close(self) -> None:
        for model in (self.attributes, self.mask, self.liveness):
            if model is not None:
                model.close()


def build_extras(backends: Mapping[str, Tuple[Backend, ModelSpec]]) -> FaceExtras:
    """The optional models from their opened backends, by manifest role. Age and gender
    come as a pair (both or neither); liveness uses every ``liveness_*`` model found."""
    extras = FaceExtras()
    if "age" in backends and "gender" in backends:
        extras.attributes = AgeGenderEstimator(age=backends["age"], gender=backends["gender"])
    elif "age" in backends or "gender" in backends:
        for role in ("age", "gender"):
            if role in backends:
                backends[role][0].close()
    if "mask" in backends:
        extras.mask = MaskClassifier(*backends["mask"])
    liveness = [backends[role] for role in sorted(backends) if role.startswith("liveness_")]
    if liveness:
        extras.liveness = RgbLiveness(liveness)
    return extras
