"""SailFrameSource against the fake ``sophon.sail`` (tests/fakes/sail.py), whose Decoder
reads real MJPEG files with OpenCV and enforces SAIL's decoder contract: a str path given
positionally, a Handle of the decoder's device, a BMImage to read into, no read after
release, one thread at a time.

Each clip frame is a flat colour whose blue channel counts frames, so order and loss show.
"""

from __future__ import annotations

import math
import types
import threading
from pathlib import Path
from typing import Any, List

import cv2
import numpy as np
import pytest

from sophon_face.video.frames import SourceError
from sophon_face.video.sail_source import SailFrameSource, load_sail_decoder
from tests.fakes import sail as fake_sail_module
from tests.rtsp_server import RtspServer, rtsp_unavailable_reason

WIDTH, HEIGHT, FPS, FRAMES = 320, 240, 25, 20
BLUE_STEP = 10


def write_clip(path: Path, frames: int = FRAMES) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), (BLUE_STEP * index, 100, 200), dtype=np.uint8))
    writer.release()
    return path


def frame_number(image_bgr: np.ndarray) -> int:
    return int(round(float(image_bgr[..., 0].mean()) / BLUE_STEP))


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.avi")


def read_all(source: SailFrameSource, limit: int = 1000) -> List[np.ndarray]:
    frames = []
    for _ in range(limit):
        image = source.read()
        if image is None:
            return frames
        frames.append(image)
    raise AssertionError("no end of file")


# -- reading a file ------------------------------------------------------------------------

@pytest.mark.parametrize("decoded_format, tolerance", [
    ("FORMAT_BGR_PLANAR", 4),  # the VPU's NV12 frames, converted inside Decoder.read
    ("FORMAT_YUV420P", 6),     # other streams: asmat() converts (I420 costs a little colour)
])
def test_reads_every_frame_in_order_then_none(fake_sail: Any, clip: Path, decoded_format: str,
                                              tolerance: int) -> None:
    fake_sail.DECODER_FORMAT = fake_sail.Format[decoded_format]
    source = SailFrameSource(str(clip))
    source.open()
    try:
        assert source.fps == pytest.approx(FPS)
        frames = read_all(source)
        assert source.read() is None  # and stays at the end
    finally:
        source.close()

    assert len(frames) == FRAMES
    for index, image in enumerate(frames):
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        expected = np.array([BLUE_STEP * index, 100, 200])
        assert np.abs(image.reshape(-1, 3).mean(axis=0) - expected).max() <= tolerance, index
    assert [frame_number(f) for f in frames] == list(range(FRAMES))
    decoder = fake_sail.DECODERS[0]
    assert (decoder.file_path, decoder.dev_id, decoder.released) == (str(clip), 0, True)


def test_frames_are_independent_copies(fake_sail: Any, clip: Path) -> None:
    source = SailFrameSource(str(clip))
    source.open()
    first = source.read()
    first[:] = 255  # a caller drawing on its frame must not touch the next one
    second = source.read()
    source.close()
    assert frame_number(second) == 1


def test_each_read_decodes_into_an_empty_bmimage(fake_sail: Any, clip: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A created BMImage of another size would make the decoder scale the frame into it.
    sizes = []
    real_read = fake_sail.Decoder.read

    def spying_read(self: Any, handle: Any, image: Any = None) -> Any:
        sizes.append((image.width(), image.height()))
        return real_read(self, handle, image)

    monkeypatch.setattr(fake_sail.Decoder, "read", spying_read)
    source = SailFrameSource(str(clip))
    source.open()
    read_all(source)
    source.close()
    assert sizes == [(0, 0)] * (FRAMES + 1)


def test_opening_again_starts_from_the_first_frame(fake_sail: Any, clip: Path) -> None:
    source = SailFrameSource(str(clip))
    source.open()
    for _ in range(5):
        source.read()
    source.open()  # releases the first decoder
    assert frame_number(source.read()) == 0
    source.close()
    assert [d.released for d in fake_sail.DECODERS] == [True, True]


# -- opening failures ----------------------------------------------------------------------

def test_missing_file_fails_at_open(fake_sail: Any, tmp_path: Path) -> None:
    source = SailFrameSource(str(tmp_path / "absent.avi"))
    with pytest.raises(SourceError, match="no such file"):
        source.open()
    assert fake_sail.DECODERS == []
    source.close()  # after a failed open: fine


def test_a_file_the_decoder_cannot_open_fails_at_open(fake_sail: Any, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.avi"
    bogus.write_bytes(b"not a video at all")
    with pytest.raises(SourceError, match="SAIL cannot open .*bogus.avi.*Failed to open input file"):
        SailFrameSource(str(bogus)).open()


def test_old_sail_reporting_a_failed_open_with_is_opened(fake_sail: Any, clip: Path) -> None:
    class NotOpenedDecoder(fake_sail.Decoder):
        def is_opened(self) -> bool:
            return False

    module = _module_with(fake_sail, Decoder=NotOpenedDecoder)
    with pytest.raises(SourceError, match="SAIL cannot open"):
        SailFrameSource(str(clip), sail_module=module).open()
    assert fake_sail.DECODERS[0].released


def test_absent_device_fails_at_open(fake_sail: Any, clip: Path) -> None:
    with pytest.raises(SourceError, match="device 1"):
        SailFrameSource(str(clip), dev_id=1).open()


def test_missing_sail_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    fake_sail_module.install_missing(monkeypatch)
    with pytest.raises(SourceError, match="cannot import sophon.sail.*SDK wheel"):
        SailFrameSource(str(clip)).open()


def test_pypi_placeholder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    fake_sail_module.install_placeholder(monkeypatch)
    with pytest.raises(SourceError, match="no Decoder: it is the empty PyPI placeholder"):
        SailFrameSource(str(clip)).open()


def test_sail_built_without_opencv_is_a_clear_error(fake_sail: Any) -> None:
    class BMImageWithoutMat:
        pass

    with pytest.raises(SourceError, match="no BMImage.asmat"):
        load_sail_decoder(_module_with(fake_sail, BMImage=BMImageWithoutMat))


# -- frame rate ----------------------------------------------------------------------------

@pytest.mark.parametrize("reported", [math.nan, -1.0, 0.0, 90000.0])
def test_an_implausible_frame_rate_is_unknown(fake_sail: Any, clip: Path, reported: float) -> None:
    class OddFpsDecoder(fake_sail.Decoder):
        def get_fps(self) -> float:
            return reported

    source = SailFrameSource(str(clip), sail_module=_module_with(fake_sail, Decoder=OddFpsDecoder))
    source.open()
    assert source.fps == 0.0
    source.close()


def test_a_sail_without_get_fps_gives_an_unknown_rate(fake_sail: Any, clip: Path) -> None:
    class OldDecoder(fake_sail.Decoder):
        def __getattribute__(self, name: str) -> Any:
            if name == "get_fps":
                raise AttributeError(name)
            return super().__getattribute__(name)

    source = SailFrameSource(str(clip), sail_module=_module_with(fake_sail, Decoder=OldDecoder))
    source.open()
    assert source.fps == 0.0
    assert frame_number(source.read()) == 0
    source.close()


# -- streams -------------------------------------------------------------------------------

def test_a_stream_that_stops_raises_instead_of_ending(fake_sail: Any, clip: Path) -> None:
    class CameraDecoder(fake_sail.Decoder):
        """An rtsp:// camera that sends the clip's frames, then breaks."""

        def __init__(self, url: str, compressed: bool = True, dev_id: int = 0, /) -> None:
            assert url == "rtsp://user:secret@10.0.0.7/stream"
            super().__init__(str(clip), compressed, dev_id)
            self._is_rtsp = True

    source = SailFrameSource("rtsp://user:secret@10.0.0.7/stream",
                             sail_module=_module_with(fake_sail, Decoder=CameraDecoder))
    source.open()
    frames = [source.read() for _ in range(FRAMES)]
    assert [frame_number(f) for f in frames] == list(range(FRAMES))
    with pytest.raises(SourceError, match="stream ended or broke") as raised:
        source.read()
    assert "secret" not in str(raised.value)
    source.close()


def test_a_real_rtsp_camera_that_dies(fake_sail: Any, clip: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with the GStreamer test camera: the fake decoder reads it with FFmpeg."""
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    with RtspServer(clip) as server:
        source = SailFrameSource(server.url)
        source.open()
        try:
            assert source.fps == pytest.approx(FPS)
            frames = [source.read() for _ in range(FRAMES + 5)]  # past the end: it loops
            assert [frame_number(f) for f in frames] == list(range(FRAMES)) + list(range(5))
            server.stop()
            with pytest.raises(SourceError, match="stream ended or broke"):
                for _ in range(50):  # frames already in flight may still arrive
                    source.read()
        finally:
            source.close()


def test_a_decoder_exception_becomes_a_source_error(fake_sail: Any, clip: Path) -> None:
    class HungDecoder(fake_sail.Decoder):
        def read(self, handle: Any, image: Any = None) -> Any:
            raise RuntimeError("VPU is hung. VPU requires a reset!")

    source = SailFrameSource(str(clip), sail_module=_module_with(fake_sail, Decoder=HungDecoder))
    source.open()
    with pytest.raises(SourceError, match="VPU is hung"):
        source.read()
    source.close()


# -- closing -------------------------------------------------------------------------------

def test_close_twice_and_read_after_close(fake_sail: Any, clip: Path) -> None:
    source = SailFrameSource(str(clip))
    source.close()  # before open: fine
    with pytest.raises(SourceError, match="not open"):
        source.read()
    source.open()
    assert source.read() is not None
    source.close()
    source.close()
    with pytest.raises(SourceError, match="not open"):
        source.read()  # a SourceError, never a use-after-release inside SAIL
    assert fake_sail.DECODERS[0].released


# -- the fake enforces the decoder contract --------------------------------------------------

def test_fake_decoder_takes_a_str_path_positionally(fake_sail: Any, clip: Path) -> None:
    with pytest.raises(TypeError):
        fake_sail.Decoder(str(clip).encode(), True, 0)
    with pytest.raises(TypeError):
        fake_sail.Decoder(clip, True, 0)
    with pytest.raises(TypeError):
        fake_sail.Decoder(str(clip), compressed=True, dev_id=0)
    with pytest.raises(RuntimeError, match="Failed to open input file"):
        fake_sail.Decoder(str(clip) + ".missing", True, 0)
    decoder = fake_sail.Decoder(str(clip))
    assert decoder.is_opened() and decoder.get_fps() == pytest.approx(FPS)
    assert decoder.get_frame_shape() == [1, 3, HEIGHT, WIDTH]
    decoder.release()
    decoder.release()
    assert not decoder.is_opened()


def test_fake_decoder_reads_into_a_bmimage_with_its_devices_handle(
        fake_sail: Any, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_sail, "TPU_COUNT", 2)
    decoder = fake_sail.Decoder(str(clip), True, 0)
    image = fake_sail.BMImage()
    with pytest.raises(TypeError):
        decoder.read(fake_sail.Handle(0), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    assert decoder.read(fake_sail.Handle(0), image) == 0
    assert (image.width(), image.height(), image.format()) == (WIDTH, HEIGHT, fake_sail.FORMAT_BGR_PLANAR)
    mat = image.asmat()
    mat[:] = 0
    assert frame_number(image.asmat()) == 0 and image.asmat()[0, 0, 2] > 150  # asmat copies
    assert frame_number(decoder.read(fake_sail.Handle(0)).asmat()) == 1
    with pytest.raises(AssertionError, match="Handle of device 1"):
        decoder.read(fake_sail.Handle(1), fake_sail.BMImage())
    decoder.release()
    with pytest.raises(AssertionError, match="after release"):
        decoder.read(fake_sail.Handle(0), fake_sail.BMImage())
    with pytest.raises(fake_sail.SailBMImageError):
        fake_sail.BMImage().asmat()
    assert len(fake_sail.VIOLATIONS) == 2
    fake_sail.VIOLATIONS.clear()


def test_fake_decoder_refuses_two_threads_at_once(fake_sail: Any, clip: Path) -> None:
    decoder = fake_sail.Decoder(str(clip), True, 0)
    decoder.read_delay_s = 0.3
    errors: List[BaseException] = []

    def read() -> None:
        try:
            decoder.read(fake_sail.Handle(0), fake_sail.BMImage())
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decoder.release()
    assert len(errors) == 1 and "concurrent read()" in str(errors[0])
    assert decoder.frames_read == 1
    fake_sail.VIOLATIONS.clear()


def _module_with(fake: Any, **replacements: Any) -> Any:
    """A ``sophon.sail`` like ``fake`` with some classes swapped (an older or odder SAIL)."""
    module = types.ModuleType("sophon.sail")
    module.__dict__.update({k: v for k, v in vars(fake).items() if not k.startswith("__")})
    module.__dict__.update(replacements)
    return module
