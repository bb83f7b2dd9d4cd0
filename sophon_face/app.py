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
import logging
import time
from typing import Any, AsyncIterator, Dict, Optional, Tuple

from aiohttp import web

from .api.http import MAX_BODY_BYTES, VALIDATION_CONTEXT, error_middleware
from .api.keys import SERVICES, Services
from .api.routes import add_routes
from .api.validation import Context
from .backends.registry import BackendOptions
from .config import Config
from .pipeline.face_pipeline import FacePipeline
from .pipeline.quality import QualityThresholds
from .pipeline.types import ImageLimits
from .service.analysis import FaceAnalysis, ImageAccess
from .service.groups import GroupService
from .service.identities import IdentityService
from .service.search import SearchService
from .store.env import Store
from .store.gallery import Gallery
from .workers.models import PreparedModels, pipeline_factory, prepare_models
from .workers.pool import WorkerPool

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)


def build_app(config: Config, backend_options: Optional[BackendOptions] = None,
              models: Optional[PreparedModels] = None) -> web.Application:
    """The aiohttp application. ``backend_options`` lets tests inject a fake SAIL module;
    ``models`` lets a test session prepare the models once for many apps."""
    # Middlewares, outermost first: only the error middleware; it must see everything.
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[error_middleware])
    app[CONFIG] = config
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app.cleanup_ctx.append(_Lifecycle(config, backend_options, models))
    add_routes(app)
    return app


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
            factory, warm_up=FacePipeline.warm_up, close=FacePipeline.close,
            count=config.workers.count, queue_size=config.workers.queue_size,
            timeout_s=config.workers.timeout_s)

        async def close_inference() -> None:
            await pool.close()
            await loop.run_in_executor(None, factory.close)

        try:
            await pool.start()
        except BaseException:
            await close_inference()
            raise
        gallery = Gallery(models.feature_dim)
        store = Store(config.data_dir, gallery=gallery,
                      map_size_bytes=config.storage.map_size_bytes,
                      max_map_size_bytes=config.storage.max_map_size_bytes,
                      min_free_bytes=config.storage.min_free_bytes,
                      read_threads=config.storage.read_threads)
        try:
            await store.open()
        except BaseException:
            await close_inference()
            raise
        log.info("store %s open: %d faces in the gallery", store.path, gallery.count())
        access = ImageAccess(tuple(config.image_roots), ImageLimits(
            max_encoded_bytes=config.images.max_encoded_bytes,
            max_side_px=config.images.max_side_px,
            max_pixels=config.images.max_side_px * config.images.max_side_px))
        match_cosine = float(models.manifest.recognizer.match_cosine)  # required by the manifest
        recognition = config.recognition
        analysis = FaceAnalysis(pool, access, match_cosine)
        identities = IdentityService(store, pool, access,
                                     capacity=lambda: recognition.library_capacity)
        search = SearchService(store, gallery, pool, access, match_cosine,
                               match_threshold=lambda: recognition.match_threshold,
                               min_face_size=lambda: recognition.min_face_size)
        started = time.time()

        async def health() -> Tuple[Dict[str, Any], bool]:
            warm = pool.warm_up_report
            healthy = warm.ok and store.is_open
            payload: Dict[str, Any] = {
                "status": "ok" if healthy else "error",
                "backend": models.manifest.runtime,
                "profile": models.manifest.profile,
                "models": models.describe(),
                "feature_dim": models.feature_dim,
                "warm_up": {"ok": warm.ok, "ms": warm.ms, "error": warm.error},
                "workers": {"count": config.workers.count, "pending": pool.pending,
                            "batching": factory.stats()},
                "store": {"open": store.is_open, "faces": gallery.count()},
                "uptime_s": round(time.time() - started, 1),
            }
            return payload, healthy

        app[VALIDATION_CONTEXT] = Context(feature_dim=models.feature_dim)
        app[SERVICES] = Services(analysis=analysis, identities=identities,
                                 groups=GroupService(store), search=search,
                                 devices=None, events=None, settings=None,  # type: ignore[arg-type]
                                 data=None, login=None, health=health)  # type: ignore[arg-type]
        try:
            yield
        finally:
            await store.close()
            await close_inference()
