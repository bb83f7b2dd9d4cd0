"""Serve an MJPEG AVI at ``rtsp://127.0.0.1:<port>/stream``, looping forever (test-only).

Run by the *system* Python, which has GStreamer's introspection bindings (Debian packages
python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good/-base); the project's
virtualenv has not. ``tests/rtsp_server.py`` starts it and waits for its ``READY`` line::

    /usr/bin/python3 tests/rtsp_serve.py VIDEO.avi [--port N]   # prints "READY <port>"
    /usr/bin/python3 tests/rtsp_serve.py --check                # exit 0, or the reason on stdout

How it loops: the clip's frames are demuxed once at start-up and kept in memory; each
client's media is ``appsrc ! clocksync ! rtpjpegpay`` fed frame after frame, round and
round, with timestamps that keep increasing across the wrap, and ``clocksync`` paces them
at the clip's native rate whatever the network sinks do. (Looping a ``filesrc ! avidemux``
media instead needs seeks on EOS that compete with the seek the RTSP media itself does on
PLAY.) The frames are re-encoded once at start-up (``avidemux ! jpegdec ! jpegenc``):
RTP/JPEG (RFC 2435) does not carry Huffman tables, so receivers decode with the standard
ones, while FFmpeg's MJPEG encoder (behind ``cv2.VideoWriter``) writes optimised tables,
which arrive as garbled pictures. Only MJPEG clips are accepted; memory grows with the
clip, so keep test clips short.

SIGTERM or SIGINT stops the server; connected clients see their TCP connection close, as
with a camera that dies.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, List, Optional, Tuple

MOUNT = "/stream"
#: Every element the two pipelines need, with the Debian package that ships it.
ELEMENTS = {
    "filesrc": "libgstreamer1.0-0",
    "appsrc": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "clocksync": "libgstreamer1.0-0 (>= 1.18)",
    "avidemux": "gstreamer1.0-plugins-good",
    "jpegdec": "gstreamer1.0-plugins-good",
    "jpegenc": "gstreamer1.0-plugins-good",
    "rtpjpegpay": "gstreamer1.0-plugins-good",
}


def _gst() -> Tuple[Any, Any, Any]:
    """(Gst, GstRtspServer, GLib), initialised; ImportError/ValueError when not installed."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return Gst, GstRtspServer, GLib


def unavailable_reason() -> Optional[str]:
    """None when this Python can serve RTSP, else why not."""
    try:
        Gst, _, _ = _gst()
    except (ImportError, ValueError) as exc:  # ValueError: "Namespace GstRtspServer not available"
        return (f"GStreamer RTSP server bindings missing in {sys.executable} ({exc}); "
                f"apt-get install python3-gi gir1.2-gst-rtsp-server-1.0")
    missing = [f"{name} ({package})" for name, package in ELEMENTS.items()
               if Gst.ElementFactory.find(name) is None]
    if missing:
        return "GStreamer elements missing: " + ", ".join(missing)
    return None


def read_frames(Gst: Any, path: str) -> Tuple[Any, List[bytes]]:
    """The caps (image/jpeg with framerate) and the JPEG bytes of every frame of ``path``."""
    pipeline = Gst.Pipeline.new("demux")
    src = Gst.ElementFactory.make("filesrc")
    demux = Gst.ElementFactory.make("avidemux")
    decode = Gst.ElementFactory.make("jpegdec")
    encode = Gst.ElementFactory.make("jpegenc")
    sink = Gst.ElementFactory.make("appsink")
    src.set_property("location", path)
    sink.set_property("sync", False)
    for element in (src, demux, decode, encode, sink):
        pipeline.add(element)
    src.link(demux)
    decode.link(encode)
    encode.link(sink)

    video_kinds: List[str] = []

    def on_pad(_demux: Any, pad: Any) -> None:
        if pad.get_name().startswith("video_") and not video_kinds:
            video_kinds.append(pad.query_caps(None).get_structure(0).get_name())
            pad.link(decode.get_static_pad("sink"))  # fails unless image/jpeg: reported below

    demux.connect("pad-added", on_pad)
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    caps = None
    frames: List[bytes] = []
    try:
        while not sink.get_property("eos"):
            sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
            if sample is not None:
                caps = caps or sample.get_caps()
                buffer = sample.get_buffer()
                frames.append(buffer.extract_dup(0, buffer.get_size()))
                continue
            # No EOS will come after an error: poll the bus between pulls.
            if video_kinds and video_kinds[0] != "image/jpeg":
                raise SystemExit(f"{path} is not MJPEG: its video is {video_kinds[0]}")
            message = bus.pop_filtered(Gst.MessageType.ERROR)
            if message is not None:
                error, debug = message.parse_error()
                raise SystemExit(f"cannot demux {path}: {error.message} ({debug})")
    finally:
        pipeline.set_state(Gst.State.NULL)
    if caps is None or not frames:
        raise SystemExit(f"{path} has no video frames")
    ok, num, den = caps.get_structure(0).get_fraction("framerate")
    if not ok or num <= 0 or den <= 0:
        raise SystemExit(f"{path} does not declare a frame rate")
    return caps, frames


def serve(path: str, port: int) -> None:
    Gst, GstRtspServer, GLib = _gst()
    caps, frames = read_frames(Gst, path)
    _, num, den = caps.get_structure(0).get_fraction("framerate")
    frame_ns = Gst.util_uint64_scale(Gst.SECOND, den, num)

    def on_media_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", caps)
        count = [0]  # frames pushed into this media; one media per shared session

        def on_need_data(src: Any, _length: int) -> None:
            data = frames[count[0] % len(frames)]
            buffer = Gst.Buffer.new_wrapped(data)
            buffer.pts = buffer.dts = count[0] * frame_ns
            buffer.duration = frame_ns
            count[0] += 1
            src.emit("push-buffer", buffer)

        appsrc.connect("need-data", on_need_data)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true format=time max-buffers=2 block=false "
        "! clocksync ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(True)  # every client sees the same picture, like a camera
    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("video", nargs="?", help="an MJPEG AVI file")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--check", action="store_true",
                        help="print why RTSP cannot be served here and exit 1, or exit 0")
    args = parser.parse_args(argv)
    if args.check:
        reason = unavailable_reason()
        if reason:
            print(reason)
            return 1
        return 0
    if not args.video:
        parser.error("a video file is required")
    if not os.path.isfile(args.video):
        parser.error(f"no such file: {args.video}")
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    serve(os.path.abspath(args.video), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
