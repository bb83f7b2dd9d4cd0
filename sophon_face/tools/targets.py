"""Where ``import`` and ``export`` read and write a gallery: a running daemon over HTTP, or a
stopped daemon's data directory in this process.

Both speak the API's request and response bodies and raise the API's errors (``ApiError``
subclasses with their codes), so the tools' logic never asks which one it has:

* ``HttpTarget`` posts the bodies to ``/sophon/v2/face/*`` with an aiohttp client and turns
  error envelopes back into ``ApiError``s. A request that may or may not have reached the
  daemon raises ``TargetUnavailable(sent=True)``. It sends the daemon's API token when one
  is given (``--token``, or the SOPHON_FACE_API_TOKEN environment variable); an https URL
  is verified against the system's CAs (SSL_CERT_FILE names another bundle).
* ``open_direct`` builds the daemon's own parts the way ``app.py`` wires them (model
  preparation, the warmed worker pool, the store, the runtime settings, IdentityService and
  GroupService) and ``DirectTarget`` validates each body with the endpoint's schema before
  calling the service, like the HTTP handlers do. It refuses a data directory that another
  process (the daemon) has open: two processes would each keep their own gallery and
  capacity count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, Optional, Protocol, Tuple
from urllib.parse import quote

from ..errors import ApiError, IdNotFound, ServiceBusy, error_class

if TYPE_CHECKING:
    import aiohttp

    from ..config import Config
    from ..service.groups import GroupService
    from ..service.identities import IdentityService

log = logging.getLogger(__name__)

API_PREFIX = "/sophon/v2/face/"
DEFAULT_URL = "http://127.0.0.1:5555"
#: The daemon's API token (server.api_token) for the daemon and for its clients.
TOKEN_ENV = "SOPHON_FACE_API_TOKEN"
#: How often ``HttpTarget.settle`` asks the daemon whether its workers are idle.
SETTLE_POLL_S = 0.25
#: getidentities / getpermissions clamp larger pages to this (api/README.md 9).
MAX_PAGE_LIMIT = 1000


class TargetUnavailable(Exception):
    """The daemon could not be reached. ``sent``: the request may have reached it (a
    dropped connection, a timeout), so whether it took effect is unknown."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class TargetRefused(Exception):
    """The target cannot be used at all (a daemon runs on the data directory, ...)."""


class RemoteError(ApiError):
    """An error code this version does not know, as the daemon sent it."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code  # type: ignore[misc]  # the instance carries the remote code
        super().__init__(message)


class Target(Protocol):
    """A gallery reached through the API's use cases (request bodies in, replies out)."""

    #: Names the target in the journal and in messages (URL or data directory).
    name: str

    async def create_identity(self, body: Dict[str, Any]) -> Dict[str, Any]: ...

    async def add_face(self, body: Dict[str, Any]) -> Dict[str, Any]: ...

    async def get_identity(self, identity_id: str) -> Optional[Dict[str, Any]]: ...

    async def register_image(self, image_id: str) -> Optional[bytes]: ...

    async def list_identities(self, page_index: int, page_limit: int) -> Dict[str, Any]: ...

    async def list_groups(self, page_index: int, page_limit: int) -> Dict[str, Any]: ...

    async def get_group(self, body: Dict[str, Any]) -> Optional[Dict[str, Any]]: ...

    async def create_group(self, body: Dict[str, Any]) -> Dict[str, Any]: ...

    async def settle(self, timeout_s: float) -> bool:
        """Wait until requests a client gave up on have finished on the target (they may
        still commit); False when that could not be seen within ``timeout_s``."""
        ...


# --------------------------------------------------------------------------- HTTP

def token_headers(token: Optional[str]) -> Dict[str, str]:
    """The header carrying the API token (none without one). Stdlib only: the health
    command uses it too."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _error_of(status: int, data: bytes, retry_after: Optional[str] = None) -> Exception:
    """The ApiError of an error envelope; a reply without one is not from our daemon.
    A 503's ``Retry-After`` (seconds) travels in its ServiceBusy."""
    try:
        error = json.loads(data.decode("utf-8"))["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return TargetUnavailable(f"HTTP {status} without an error envelope: {data[:200]!r}",
                                 sent=True)
    if status == 503:  # refused before any work: safe to send again
        return ServiceBusy(message, retry_after_s=_seconds(retry_after))
    try:
        return error_class(code)(message)
    except KeyError:
        return RemoteError(code, message)


def _seconds(retry_after: Optional[str]) -> Optional[float]:
    """A ``Retry-After`` in seconds; None for none, an HTTP date or anything else."""
    if retry_after is None:
        return None
    try:
        value = float(retry_after)
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None  # NaN fails both


class HttpTarget:
    """A running daemon; at most ``concurrency`` requests in flight (the caller's bound)."""

    def __init__(self, url: str, concurrency: int = 4, timeout_s: float = 120.0,
                 token: Optional[str] = None) -> None:
        self.name = url.rstrip("/")
        self._base = self.name
        self._concurrency = max(1, concurrency)
        self._timeout_s = timeout_s
        # Never part of ``name`` (journal, messages) nor of any log line.
        self._headers = token_headers(token if token is not None else os.environ.get(TOKEN_ENV))
        self._session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> "HttpTarget":
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s), headers=self._headers,
            # A few beyond the workers: reconciliation reads run beside registrations.
            connector=aiohttp.TCPConnector(limit=self._concurrency + 4))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _request(self, method: str, path: str,
                       body: Any = None) -> Tuple[int, bytes, Optional[str]]:
        """(status, body, Retry-After header)."""
        import aiohttp

        session = self._session
        if session is None:
            raise RuntimeError("HttpTarget used outside 'async with'")
        data = None
        headers = {}
        if body is not None:
            # Photos make bodies of megabytes: serialise them off the event loop.
            data = await asyncio.get_running_loop().run_in_executor(None, _json_bytes, body)
            headers["Content-Type"] = "application/json"
        try:
            async with session.request(method, self._base + path, data=data,
                                       headers=headers) as response:
                return (response.status, await response.read(),
                        response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            raise TargetUnavailable(f"{self.name} unreachable: {exc}", sent=False) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TargetUnavailable(f"{self.name}: {type(exc).__name__}: {exc}",
                                    sent=True) from None

    async def _post(self, endpoint: str, body: Dict[str, Any]) -> Dict[str, Any]:
        status, data, retry_after = await self._request("POST", API_PREFIX + endpoint, body)
        if status != 200:
            raise _error_of(status, data, retry_after)
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise TargetUnavailable(f"{endpoint}: reply is not JSON: {data[:200]!r}",
                                    sent=True) from None

    async def health(self) -> Dict[str, Any]:
        status, data, _ = await self._request("GET", "/health")
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise TargetUnavailable(f"/health answered HTTP {status}: {data[:200]!r}",
                                    sent=True) from None

    async def settle(self, timeout_s: float) -> bool:
        """A request whose client is gone still runs to its end in the daemon (it is not
        cancelled, and its write commits). ``/health``'s ``workers.pending`` counts the
        requests in the worker pool; zero twice in a row, a moment apart, means every
        such request has passed inference, and its one write followed within that moment.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        quiet = 0
        while True:
            pending = (await self.health()).get("workers", {}).get("pending")
            if pending is None:
                return False  # a daemon that does not say
            quiet = quiet + 1 if pending == 0 else 0
            if quiet >= 2:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SETTLE_POLL_S)

    async def create_identity(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._post("createidentity", body)

    async def add_face(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._post("addface", body)

    async def get_identity(self, identity_id: str) -> Optional[Dict[str, Any]]:
        try:
            return await self._post("getidentity", {"identity_id": identity_id})
        except IdNotFound:
            return None

    async def register_image(self, image_id: str) -> Optional[bytes]:
        status, data, retry_after = await self._request(
            "GET", API_PREFIX + "getregisterimage/" + quote(image_id, safe=""))
        if status == 404:
            return None  # R4: unknown, or registered from a feature (R19)
        if status != 200:
            raise _error_of(status, data, retry_after)
        return data

    async def list_identities(self, page_index: int, page_limit: int) -> Dict[str, Any]:
        return await self._post("getidentities", {"page_index": page_index,
                                                  "page_limit": page_limit})

    async def list_groups(self, page_index: int, page_limit: int) -> Dict[str, Any]:
        return await self._post("getpermissions", {"page_index": page_index,
                                                   "page_limit": page_limit})

    async def get_group(self, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            return await self._post("getpermission", body)
        except IdNotFound:
            return None

    async def create_group(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._post("createpermission", body)


# --------------------------------------------------------------------------- in process

def lmdb_holder(data_dir: Path) -> Optional[int]:
    """The pid of a process that has the data directory's LMDB environment open (0 when the
    pid cannot be told), or None when no other process has.

    Every process that opens an LMDB environment holds a shared fcntl lock on the first
    byte of ``lock.mdb`` for as long as it keeps it open, so a free exclusive lock there
    means nobody has it. fcntl locks belong to the process: call this before opening the
    store in this process, never after (closing the probe would drop LMDB's own lock).
    """
    from ..store.env import LMDB_SUBDIR

    lock_path = Path(data_dir) / LMDB_SUBDIR / "lock.mdb"
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return _lock_owner(fd)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return None
    finally:
        os.close(fd)


def _lock_owner(fd: int) -> int:
    """The pid F_GETLK reports for the lock on byte 0 (Linux ``struct flock`` layout on
    64-bit; 0 where the layout differs)."""
    layout = "hhqqi4x"
    try:
        probe = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        _type, _whence, _start, _len, pid = struct.unpack(
            layout, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    except (OSError, struct.error):
        return 0
    return pid if pid > 0 else 0


def refuse_if_in_use(data_dir: Path) -> None:
    holder = lmdb_holder(data_dir)
    if holder is not None:
        who = f"process {holder}" if holder else "another process"
        raise TargetRefused(
            f"{who} has the store in {data_dir} open (is the daemon running?): stop it, "
            f"or use --url to go through the running daemon")


class DirectTarget:
    """The daemon's use cases in this process; bodies are validated like the API's."""

    def __init__(self, name: str, identities: IdentityService, groups: GroupService,
                 feature_dim: int, worker_count: int) -> None:
        from ..api.validation import Context

        self.name = name
        self.worker_count = worker_count
        self._identities = identities
        self._groups = groups
        self._ctx = Context(feature_dim=feature_dim)

    def _parse(self, schema_name: str, body: Dict[str, Any]) -> Dict[str, Any]:
        from ..api import schemas

        return getattr(schemas, schema_name).parse(body, self._ctx)

    async def create_identity(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._identities.create(self._parse("CREATE_IDENTITY", body))

    async def add_face(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._identities.add_face(self._parse("ADD_FACE", body))

    async def get_identity(self, identity_id: str) -> Optional[Dict[str, Any]]:
        try:
            return await self._identities.get(identity_id)
        except IdNotFound:
            return None

    async def register_image(self, image_id: str) -> Optional[bytes]:
        return await self._identities.register_image(image_id) or None

    async def list_identities(self, page_index: int, page_limit: int) -> Dict[str, Any]:
        return await self._identities.list({}, min(page_limit, MAX_PAGE_LIMIT), page_index)

    async def list_groups(self, page_index: int, page_limit: int) -> Dict[str, Any]:
        return await self._groups.list(None, min(page_limit, MAX_PAGE_LIMIT), page_index)

    async def get_group(self, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            return await self._groups.get(self._parse("GET_PERMISSION", body))
        except IdNotFound:
            return None

    async def create_group(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._groups.create(self._parse("CREATE_PERMISSION", body))

    async def settle(self, timeout_s: float) -> bool:
        # In this process a use case either returned or raised before its write: a worker
        # that timed out never reaches the store. Nothing is left running.
        return True


def _never_called() -> Any:
    raise RuntimeError("this target was opened without inference workers")


@contextlib.asynccontextmanager
async def open_direct(config: Config, inference: bool = True) -> AsyncIterator[DirectTarget]:
    """The daemon's services on ``config.data_dir``, in this process, as app.py wires them
    (models prepared and cached, workers warmed, store opened, runtime settings loaded).
    ``inference=False`` (export) opens only the store: registration then fails."""
    from ..backends.registry import BackendOptions
    from ..pipeline.face_pipeline import FacePipeline
    from ..pipeline.quality import QualityThresholds
    from ..pipeline.types import ImageLimits
    from ..service.analysis import ImageAccess
    from ..service.groups import GroupService
    from ..service.identities import IdentityService
    from ..service.settings import RuntimeSettings
    from ..store.env import Store
    from ..workers.models import pipeline_factory, prepare_models
    from ..workers.pool import WorkerPool

    from ..store.env import LMDB_SUBDIR

    data_dir = config.data_dir
    if not inference and not (data_dir / LMDB_SUBDIR).is_dir():
        raise TargetRefused(f"{data_dir} holds no store (no lmdb folder)")
    refuse_if_in_use(data_dir)
    loop = asyncio.get_running_loop()
    workers = config.workers
    closers = contextlib.AsyncExitStack()
    async with closers:
        feature_dim = 0
        if inference:
            models = await loop.run_in_executor(None, prepare_models, config.manifest_path(),
                                                config.model_cache_dir)
            feature_dim = models.feature_dim
            factory = pipeline_factory(
                models, BackendOptions(intra_op_threads=workers.intra_op_threads,
                                       tpu_id=config.models.tpu_id),
                QualityThresholds(), batching=workers.batching,
                batch_wait_ms=workers.batch_wait_ms)
            await loop.run_in_executor(None, factory.open)
            closers.push_async_callback(loop.run_in_executor, None, factory.close)
            pool: WorkerPool = WorkerPool(
                factory, warm_up=FacePipeline.warm_up, close=FacePipeline.close,
                count=workers.count, queue_size=workers.queue_size, timeout_s=workers.timeout_s)
            closers.push_async_callback(pool.close)
            await pool.start()
        else:
            pool = WorkerPool(_never_called, warm_up=_never_called, close=_never_called,
                              count=1)
        # No gallery: nothing here searches, and the daemon rebuilds it from LMDB at start.
        store = Store(data_dir, map_size_bytes=config.storage.map_size_bytes,
                      max_map_size_bytes=config.storage.max_map_size_bytes,
                      min_free_bytes=config.storage.min_free_bytes,
                      read_threads=config.storage.read_threads)
        await store.open()
        closers.push_async_callback(store.close)
        recognition = config.recognition
        settings = RuntimeSettings(store, {
            "MATCH_THRESHOLD": recognition.match_threshold,
            "REGN_MIN_FACE": recognition.min_face_size,
            "GATE_DEFAULT_GROUP_SIZE": recognition.library_capacity,
        })
        await settings.load()
        access = ImageAccess((), ImageLimits(
            max_encoded_bytes=config.images.max_encoded_bytes,
            max_side_px=config.images.max_side_px,
            max_pixels=config.images.max_side_px * config.images.max_side_px))
        identities = IdentityService(
            store, pool, access,
            capacity=functools.partial(settings.value, "GATE_DEFAULT_GROUP_SIZE"))
        log.info("store %s open in this process (%d inference worker(s))", store.path,
                 workers.count if inference else 0)
        yield DirectTarget(str(data_dir), identities, GroupService(store), feature_dim,
                           workers.count if inference else 0)
