"""Frames through SAIL's hardware decoder on the SE5 (``sail.Decoder``: VPU for H.264/H.265,
JPU for JPEG), written to the calling contract in ``reference/sail.md`` section 1.4 and
tested off-device against the fake ``sophon.sail`` in tests/fakes/sail.py.

What a frame goes through (SAIL v3.10.7 src/cvwrapper.cpp): ``Decoder.read(handle, image)``
decodes one frame into device memory and, for the VPU's (compressed) NV12 output, converts
it with the VPP into ``image`` as ``FORMAT_BGR_PLANAR``; streams the VPU does not output as
NV12 arrive as ``FORMAT_YUV420P``. ``BMImage.asmat()`` then copies the picture to a packed
BGR numpy array through sophon-opencv's ``toMAT``, which converts either format (SAIL's own
samples call ``asmat()`` straight on decoder output), so no ``Bmcv.convert_format`` pass
is added here; the layout of what ``asmat()`` returns is still checked, so a SAIL build that
behaves otherwise fails with a clear SourceError instead of a strange array downstream.

RTSP: SAIL opens streams over TCP with a 20 s socket timeout by default (the
``SAIL_DECODER_rtsp_transport`` / ``SAIL_DECODER_stimeout`` environment variables change
that for every decoder of the process); the reader's own read timeout notices a silent
camera sooner.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from typing import Any, Optional

import numpy as np

from ..backends.sail import SAIL_INSTALL_HINT
from .frames import SourceError, redacted_url

log = logging.getLogger(__name__)

#: Frame rates outside this range are container noise (FFmpeg's avg_frame_rate of an RTSP
#: stream can be 0/0 or the 90 kHz RTP clock), reported as "unknown" (0.0).
_MAX_PLAUSIBLE_FPS = 120.0


def load_sail_decoder(sail_module: Optional[Any] = None) -> Any:
    """A ``sophon.sail`` that can decode video (``sail_module`` if given), or SourceError."""
    if sail_module is None:
        try:
            sail_module = importlib.import_module("sophon.sail")
        except Exception as exc:  # a broken vendor build fails with OSError (libbmrt.so), not only ImportError
            raise SourceError(f"cannot import sophon.sail ({exc}); {SAIL_INSTALL_HINT}") from exc
    # The PyPI placeholder installs an empty sophon/sail.py: the import succeeds and only
    # the missing classes tell it apart from SOPHGO's extension module.
    if not hasattr(sail_module, "Decoder"):
        where = getattr(sail_module, "__file__", None) or repr(sail_module)
        raise SourceError(
            f"sophon.sail at {where} has no Decoder: it is the empty PyPI placeholder, "
            f"not SOPHGO's SAIL; {SAIL_INSTALL_HINT}")
    if not hasattr(getattr(sail_module, "BMImage", None), "asmat"):
        raise SourceError(
            "this sophon.sail has no BMImage.asmat(): it was built without OpenCV, so decoded "
            "frames cannot be copied to memory; install SOPHGO's SoC wheel, or set "
            "video.decoder: opencv")
    return sail_module


class SailFrameSource:
    """One ``sail.Decoder`` over a file or ``rtsp://`` URL; a ``FrameSource`` (frames.py).

    Threading: one decoder, one thread. A decoder is an FFmpeg demux/decode context with
    no lock around it, so the reader's decode thread opens, reads and closes it, and
    nothing else touches it. ``Decoder.read`` releases the GIL while the VPU decodes, so
    the other threads keep running meanwhile.

    Each ``read`` decodes into a fresh, empty ``BMImage``: the decoder fills an empty one
    with the frame as decoded, but *scales* into one that already has another size, so
    reusing one would silently shrink or stretch every frame after a camera changes its
    resolution. The frame's device memory is freed as soon as ``asmat`` has copied it out.
    """

    def __init__(self, url: str, dev_id: int = 0, sail_module: Optional[Any] = None) -> None:
        self._url = url
        self._is_stream = url.startswith("rtsp://")
        self._dev_id = int(dev_id)
        self._sail_module = sail_module
        self._sail: Optional[Any] = None
        self._handle: Optional[Any] = None
        self._decoder: Optional[Any] = None
        self._fps = 0.0

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        self.close()
        sail = load_sail_decoder(self._sail_module)
        if not self._is_stream and not os.path.isfile(self._url):
            # SAIL would only print "Failed to open input file" (the reason goes to its log).
            raise SourceError(f"no such file: {self._url}")
        try:
            handle = sail.Handle(self._dev_id)
            # Positional only: the pybind constructor declares no argument names. True asks
            # the VPU for compressed NV12 (less memory bandwidth); read() converts it to BGR.
            decoder = sail.Decoder(self._url, True, self._dev_id)
        except Exception as exc:  # SAIL >= 3: RuntimeError("Failed to open input file") etc.
            raise SourceError(f"SAIL cannot open {redacted_url(self._url)} on device "
                              f"{self._dev_id}: {exc}") from exc
        try:
            if not decoder.is_opened():  # how SAIL before 3.x reports a failed open
                raise SourceError(f"SAIL cannot open {redacted_url(self._url)}")
            fps = _native_fps(decoder)
        except BaseException:
            decoder.release()
            raise
        self._sail, self._handle, self._decoder, self._fps = sail, handle, decoder, fps
        log.info("SAIL decoder on device %s opened %s (%.2f fps)",
                 self._dev_id, redacted_url(self._url), fps)

    def read(self) -> Optional[np.ndarray]:
        decoder = self._decoder
        if decoder is None or self._sail is None:
            raise SourceError("source is not open")
        image = self._sail.BMImage()
        try:
            status = decoder.read(self._handle, image)
        except Exception as exc:  # RuntimeError("VPU is hung. VPU requires a reset!")
            raise SourceError(f"SAIL decoder failed on {redacted_url(self._url)}: {exc}") from exc
        if status != 0:
            if self._is_stream:
                raise SourceError(f"stream ended or broke: {redacted_url(self._url)} "
                                  f"(SAIL status {status})")
            log.debug("end of %s (SAIL status %s)", self._url, status)
            return None
        try:
            image_bgr = image.asmat()
        except Exception as exc:  # SailBMImageError
            raise SourceError(f"cannot copy a decoded frame of {redacted_url(self._url)}: {exc}") from exc
        if not (isinstance(image_bgr, np.ndarray) and image_bgr.dtype == np.uint8
                and image_bgr.ndim == 3 and image_bgr.shape[2] == 3):
            raise SourceError(
                f"BMImage.asmat() gave {getattr(image_bgr, 'shape', None)} "
                f"{getattr(image_bgr, 'dtype', type(image_bgr).__name__)} for a frame in "
                f"format {image.format()!r}, not H x W x 3 uint8 BGR")
        return image_bgr

    def close(self) -> None:
        decoder, self._decoder = self._decoder, None
        self._handle = None
        if decoder is not None:
            try:
                decoder.release()
            except Exception:  # closing must not fail; the decoder is dropped either way
                log.warning("SAIL decoder release failed for %s", redacted_url(self._url),
                            exc_info=True)


def _native_fps(decoder: Any) -> float:
    """The stream's frame rate, or 0.0 when unknown. Every public SAIL source (v3.9.0 on)
    binds ``Decoder.get_fps``; an older SDK wheel may lack it, and then the rate is unknown."""
    get_fps = getattr(decoder, "get_fps", None)
    if get_fps is None:
        return 0.0
    fps = float(get_fps())  # avg_frame_rate as num/den: NaN for 0/0, -1 without a stream
    return fps if math.isfinite(fps) and 0.0 < fps <= _MAX_PLAUSIBLE_FPS else 0.0
