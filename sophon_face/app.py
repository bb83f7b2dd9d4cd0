"""Application wiring: ``build_app(config)`` and the daemon's lifecycle.

Lifecycle (one ``cleanup_ctx``): prepare the models (checksums, fp32 folding, cached),
open the shared batching backends if batching is on, start the worker pool (each worker
builds and warms its pipeline, on its own sessions or on the shared backends), open the
store and rebuild the gallery from it (its dimension is the active recognizer's), then
serve. Shutdown runs the same steps backwards; queued writes finish before the store
closes, and the shared backends close after the pool, whose pipelines use them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple

from aiohttp import web

from .api.guard import ConnectionLimits, GuardedRunner, ServerGuard, connection_middleware
from .api.http import BODY_LIMITS, VALIDATION_CONTEXT, BodyLimits, error_middleware
from .api.keys import SERVICES, Services
from .api.metrics import METRICS, Metrics
from .api.preview_ws import start_preview_servers
from .api.realtime_ws import start_realtime_server
from .api.routes import add_routes
from .api.tls import TlsError, server_context
from .api.validation import Context
from .backends.registry import BackendOptions
from .config import Config, ConfigError
from .pipeline.face_pipeline import FacePipeline
from .pipeline.quality import QualityThresholds
from .pipeline.types import ImageLimits
from .push.device_status import DeviceStatusPusher
from .push.history import HistoryPusher
from .push.preview import PreviewHub
from .push.realtime import RealtimeHub
from .push.relay import RelayController, TcpRelayDriver
from .service.analysis import FaceAnalysis, ImageAccess
from .service.data import DataService
from .service.devices import DeviceService
from .service.event_search import EventSearch
from .service.events import EventService, Retention
from .service.groups import GroupService
from .service.identities import IdentityService
from .service.login import LoginService
from .service.search import SearchService
from .service.settings import RuntimeSettings
from .service.video_recognition import VideoRecognition
from .store.env import Store
from .store.event_images import EventImageFiles
from .store.event_index import EventIndex
from .store import devices as device_records
from .store.gallery import Gallery
from .video.frames import FrameSource
from .video.manager import VideoManager
from .video.session import PreviewSink
from .workers.models import PreparedModels, pipeline_factory, prepare_models
from .workers.pool import WorkerPool

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
#: The real-time WebSocket's bound port (server.ws_port, or the one picked for port 0).
WS_PORT = web.AppKey("ws_port", int)
#: The preview frame stream's and control channel's bound ports (preview.port/control_port).
PREVIEW_PORT = web.AppKey("preview_port", int)
PREVIEW_CONTROL_PORT = web.AppKey("preview_control_port", int)
#: Token, connection limits and TLS of every listening port (api/guard.py).
GUARD = web.AppKey("server_guard", ServerGuard)


def server_guard(config: Config) -> ServerGuard:
    """The ``server`` section's access control and limits; TLS files are loaded here
    (ConfigError naming the setting when they cannot be used)."""
    server = config.server
    ssl_context = None
    tls_files = config.tls_files
    if tls_files is not None:
        try:
            ssl_context = server_context(*tls_files)
        except TlsError as exc:
            raise ConfigError(str(exc)) from None
    return ServerGuard(token=server.api_token, ssl_context=ssl_context, limits=ConnectionLimits(
        header_timeout_s=server.header_timeout_s, max_header_bytes=server.max_header_bytes,
        max_connections=server.max_connections, keepalive_timeout_s=server.keepalive_timeout_s))


def body_limits(config: Config) -> BodyLimits:
    server = config.server
    return BodyLimits(max_bytes=server.max_body_bytes, timeout_s=server.body_timeout_s,
                      max_json_depth=server.max_json_depth,
                      max_list_length=server.max_list_length)


def build_app(config: Config, backend_options: Optional[BackendOptions] = None,
              models: Optional[PreparedModels] = None) -> web.Application:
    """The aiohttp application. ``backend_options`` lets tests inject a fake SAIL module;
    ``models`` lets a test session prepare the models once for many apps."""
    guard = server_guard(config)
    # Middlewares, outermost first: the connection guard's (where requests begin and end,
    # closing after a body timeout); the error middleware, which must see every error and
    # count every answer; then the token check, so a refusal is rendered and counted.
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[connection_middleware, error_middleware,
                                       *guard.http_middlewares()])
    app[CONFIG] = config
    app[GUARD] = guard
    app[BODY_LIMITS] = body_limits(config)
    app[METRICS] = Metrics()  # this app's own registry: /metrics, the request and stage meters
    app.cleanup_ctx.append(_Lifecycle(config, backend_options, models))
    add_routes(app)
    return app


def http_runner(app: web.Application) -> web.AppRunner:
    """The runner the daemon serves ``app`` (from build_app) with: the guard's connection
    limits and aiohttp's header and keep-alive limits, no access log (it would show
    paths with ids; errors are logged by the error middleware)."""
    config = app[CONFIG]
    return GuardedRunner(app, app[GUARD].limits, access_log=None,
                         shutdown_timeout=config.server.shutdown_timeout_s)


def http_site(runner: web.AppRunner, host: str, port: int) -> web.TCPSite:
    """The HTTP API's listening socket (TLS when configured)."""
    return web.TCPSite(runner, host, port, ssl_context=runner.app[GUARD].ssl_context)


class _Lifecycle:
    def __init__(self, config: Config, backend_options: Optional[BackendOptions],
                 models: Optional[PreparedModels]) -> None:
        self.config = config
        self.backend_options = backend_options or BackendOptions(
            intra_op_threads=config.workers.intra_op_threads, tpu_id=config.models.tpu_id)
        self.models = models

    async def __call__(self, app: web.Application) -> AsyncIterator[None]:
        config = self.config
        loop = asyncio.get_running_loop()
        models = self.models or await loop.run_in_executor(
            None, prepare_models, config.manifest_path(), config.model_cache_dir)
        factory = pipeline_factory(models, self.backend_options, QualityThresholds(),
                                   batching=config.workers.batching,
                                   batch_wait_ms=config.workers.batch_wait_ms)
        # Off the loop: opening a batching backend loads its model on the batching thread.
        await loop.run_in_executor(None, factory.open)
        pool: WorkerPool[FacePipeline] = WorkerPool(
            app[METRICS].stages.metered(factory),  # each worker's stage times go to /metrics
            warm_up=FacePipeline.warm_up, close=FacePipeline.close,
            count=config.workers.count, queue_size=config.workers.queue_size,
            timeout_s=config.workers.timeout_s, max_wait_s=config.workers.max_wait_s,
            max_queued_body_bytes=config.workers.max_queued_body_bytes,
            admission=config.workers.admission)

        async def close_inference() -> None:
            await pool.close()
            await loop.run_in_executor(None, factory.close)

        try:
            await pool.start()
        except BaseException:
            await close_inference()
            raise
        gallery = Gallery(models.feature_dim)
        event_index = EventIndex(models.feature_dim)
        store = Store(config.data_dir, gallery=gallery, indexes=(event_index,),
                      map_size_bytes=config.storage.map_size_bytes,
                      max_map_size_bytes=config.storage.max_map_size_bytes,
                      min_free_bytes=config.storage.min_free_bytes,
                      read_threads=config.storage.read_threads)
        try:
            await store.open()
        except BaseException:
            await close_inference()
            raise
        log.info("store %s open: %d faces in the gallery, %d events", store.path,
                 gallery.count(), event_index.count())
        try:
            services, pushes = await _services(app, config, models, pool, store, gallery,
                                               event_index, factory.stats)
        except BaseException:
            await store.close()
            await close_inference()
            raise
        app[VALIDATION_CONTEXT] = Context(feature_dim=models.feature_dim)
        app[SERVICES] = services
        try:
            yield
        finally:
            await pushes.close()
            await store.close()
            await close_inference()


class _Pushes:
    """What runs beside the API, closed in reverse order of start: the video readers
    (they record events), then the pushes (real-time, history, relay, device status,
    preview) and their servers."""

    def __init__(self) -> None:
        self._closers: List[Callable[[], Awaitable[Any]]] = []

    def on_close(self, closer: Callable[[], Awaitable[Any]]) -> None:
        self._closers.append(closer)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("shutdown step failed")


def _source_factory(config: Config, runtime: str) -> Callable[[str, bool], FrameSource]:
    """``video.decoder``: SAIL's hardware decoder on the box, OpenCV's FFmpeg elsewhere."""
    decoder = config.video.decoder
    if decoder == "auto":
        decoder = "sail" if runtime == "sail" else "opencv"
    if decoder == "sail":
        from .video.sail_source import SailFrameSource  # the vendor module loads lazily

        return lambda url, _is_file: SailFrameSource(url, dev_id=config.models.tpu_id)
    from .video.opencv_source import OpenCvFrameSource

    timeout_s = config.video.read_timeout_s
    return lambda url, _is_file: OpenCvFrameSource(url, open_timeout_s=timeout_s,
                                                   read_timeout_s=timeout_s)


async def _services(app: web.Application, config: Config, models: PreparedModels,
                    pool: WorkerPool, store: Store, gallery: Gallery, event_index: EventIndex,
                    batching_stats: Callable[[], Any]) -> Tuple[Services, _Pushes]:
    """Every use case, wired to the store, the workers and the live settings; then the
    pushes, started last (the history pusher reads what the services write)."""
    loop = asyncio.get_running_loop()
    recognition = config.recognition
    settings = RuntimeSettings(store, {
        "MATCH_THRESHOLD": recognition.match_threshold,
        "REGN_MIN_FACE": recognition.min_face_size,
        "GATE_DEFAULT_GROUP_SIZE": recognition.library_capacity,
    })
    await settings.load()
    access = ImageAccess(tuple(config.image_roots), ImageLimits(
        max_encoded_bytes=config.images.max_encoded_bytes,
        max_side_px=config.images.max_side_px,
        max_pixels=config.images.max_side_px * config.images.max_side_px))
    match_cosine = float(models.manifest.recognizer.match_cosine)  # required by the manifest
    has_liveness = any(role.startswith("liveness_") for role in models.optional_models())
    liveness_threshold = recognition.liveness_threshold if has_liveness else None

    local_dir, remote_dir = config.event_image_dir, config.remote_event_image_dir
    await loop.run_in_executor(None, functools.partial(local_dir.mkdir, parents=True,
                                                       exist_ok=True))

    def current_event_dir() -> Path:  # GATE_EVENT_IMAGE_PATH, live
        return remote_dir if settings.value("GATE_EVENT_IMAGE_PATH") == "remote" else local_dir

    images = EventImageFiles((local_dir, remote_dir), current_dir=current_event_dir)
    # Before serving, so no event is being written: files of events that never committed.
    await loop.run_in_executor(None, images.sweep_orphans, event_index.id_strings())
    events = EventService(store, event_index, images, settings, Retention(
        config.events.max_events, config.events.max_image_bytes))

    pushes = _Pushes()
    try:  # whatever started is stopped again if a later step fails
        hub = RealtimeHub(config.push.realtime_queue_size)
        guard = app[GUARD]
        runner, ws_port = await start_realtime_server(
            hub, config.server.host, config.server.ws_port, config.server.ws_heartbeat_s,
            max_message_bytes=config.server.ws_max_message_bytes,
            json_limits=app[BODY_LIMITS], guard=guard)
        pushes.on_close(runner.cleanup)
        pushes.on_close(hub.close)
        app[WS_PORT] = ws_port
        ws_scheme = "wss" if guard.ssl_context is not None else "ws"
        log.info("real-time events on %s://%s:%d", ws_scheme, config.server.host, ws_port)
        pusher = HistoryPusher(store, settings, images, batch=config.push.history_batch,
                               timeout_s=config.push.history_timeout_s)
        events.subscribe(hub.publish)
        events.subscribe(lambda _event: pusher.wake())
        await pusher.start()
        # On shutdown the POST in flight may finish and its 2xx be recorded (push/history.py).
        pushes.on_close(functools.partial(pusher.stop, config.server.shutdown_timeout_s))

        async def relay_of(device_id: str) -> Optional[Dict[str, Any]]:
            record = await store.read(device_records.get, device_id)
            return None if record is None else record.get("net_relay") or None

        relay = RelayController(settings, relay_of, TcpRelayDriver())
        events.subscribe(relay.on_event)
        pushes.on_close(relay.close)

        device_service = DeviceService(store, config.devices.max_count, config.image_roots)
        data = DataService(store, images, settings, device_service)
        preview = PreviewHub(config.preview.queue_size, config.preview.jpeg_quality)
        preview.set_layout(await device_service.get_preview({}))
        device_service.subscribe(preview.on_device_change)
        device_service.subscribe_preview(preview.on_preview_change)
        preview_runners, preview_port, control_port = await start_preview_servers(
            preview, config.server.host, config.preview.port, config.preview.control_port,
            config.server.ws_heartbeat_s, max_message_bytes=config.server.ws_max_message_bytes,
            guard=guard)
        for preview_runner in preview_runners:
            pushes.on_close(preview_runner.cleanup)
        pushes.on_close(preview.close)
        app[PREVIEW_PORT], app[PREVIEW_CONTROL_PORT] = preview_port, control_port
        log.info("preview on %s://%s:%d/preview, control on %s://%s:%d", ws_scheme,
                 config.server.host, preview_port, ws_scheme, config.server.host, control_port)

        recognition = VideoRecognition(store, gallery, pool, settings, events, match_cosine,
                                       jpeg_quality=config.events.jpeg_quality)
        status_pusher: Optional[DeviceStatusPusher] = None

        def status_changed() -> None:
            if status_pusher is not None:
                status_pusher.notify_change()

        video = VideoManager(pool, recognition, settings, config.video,
                             _source_factory(config, models.manifest.runtime), config.image_roots,
                             preview=PreviewSink(preview.wants_frames, preview.publish_frame),
                             on_status_change=status_changed)
        device_service.subscribe(video.on_device_change)
        status_pusher = DeviceStatusPusher(
            settings, lambda: store.read(device_records.list_in_order), video.status_of,
            timeout_s=10.0)
        await status_pusher.start()
        pushes.on_close(status_pusher.stop)
        await video.start(await store.read(device_records.list_in_order))
        pushes.on_close(video.close)
    except BaseException:
        await pushes.close()
        raise

    started = time.time()

    async def health() -> Tuple[Dict[str, Any], bool]:
        warm = pool.warm_up_report
        healthy = warm.ok and store.is_open
        device_list = await store.read(device_records.list_in_order) if store.is_open else []
        payload: Dict[str, Any] = {
            "status": "ok" if healthy else "error",
            "backend": models.manifest.runtime,
            "profile": models.manifest.profile,
            "models": models.describe(),
            "feature_dim": models.feature_dim,
            "warm_up": {"ok": warm.ok, "ms": warm.ms, "error": warm.error},
            "workers": dict(pool.stats(), count=config.workers.count,
                            batching=batching_stats()),
            "store": {"open": store.is_open, "faces": gallery.count(),
                      "events": event_index.count(),
                      "events_not_recorded": events.not_recorded},
            "push": {"realtime": dict(hub.stats(), port=ws_port), "history": pusher.stats(),
                     "device_status": status_pusher.stats(), "relay": relay.stats(),
                     "preview": dict(preview.stats(), port=preview_port,
                                     control_port=control_port)},
            "devices": video.stats(device_list),
            "uptime_s": round(time.time() - started, 1),
        }
        return payload, healthy

    services = Services(
        analysis=FaceAnalysis(pool, access, match_cosine),
        identities=IdentityService(store, pool, access,
                                   capacity=lambda: settings.value("GATE_DEFAULT_GROUP_SIZE")),
        groups=GroupService(store),
        search=SearchService(store, gallery, pool, access, match_cosine, settings, events,
                             jpeg_quality=config.events.jpeg_quality,
                             device_seen=video.photo_seen,
                             liveness_threshold=liveness_threshold),
        devices=device_service,
        events=events,
        event_search=EventSearch(store, event_index, pool, access, settings, match_cosine),
        settings=settings,
        data=data,
        login=LoginService(store),
        health=health,
    )
    return services, pushes
