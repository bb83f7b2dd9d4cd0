"""Daemon configuration: ``conf.yaml`` loaded into frozen dataclasses.

The defaults live here, in code; the shipped ``conf.yaml`` repeats every setting with its
default (a test checks the two agree). Unknown keys and wrong types are rejected with the
key's path (``server.port: expected int, got 'x'``), so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

import yaml

T = TypeVar("T")

#: Manifest of each model profile, relative to the project root / install share folder.
PROFILE_MANIFESTS = {"cpu": "models/cpu.yaml", "se5": "bmodels/manifest.yaml"}


class ConfigError(ValueError):
    """A configuration problem; ``str()`` names the key path and the bad value."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 5555
    #: The real-time event WebSocket (api/event.md 7); 0 picks a free port (tests).
    ws_port: int = 5679
    #: api/README.md 3.1: bodies above this get HTTP 413 (aiohttp's 1 MiB is too small).
    max_body_bytes: int = 32 * 1024 * 1024
    #: Grace period on shutdown (SIGTERM) for the requests in flight, and then for the
    #: history push's POST in flight (its 2xx is recorded, push/history.py).
    shutdown_timeout_s: float = 10.0
    # Access control (api/guard.py, api/tls.py). Upstream has no authentication, so by
    # default there is none: protect the ports at network level (README "Deployment").
    #: When set, every request but /health, /openapi.json and /docs needs it
    #: (``Authorization: Bearer <t>`` or ``X-Api-Token: <t>``; WebSockets also
    #: ``?token=<t>``). At least 16 visible ASCII characters. The environment variable
    #: SOPHON_FACE_API_TOKEN, when set, replaces it (keeps it out of the file).
    api_token: str = field(default="", repr=False)
    #: PEM certificate (chain) and unencrypted PEM key: every port speaks TLS only.
    tls_cert: str = ""
    tls_key: str = ""
    # Slow and hostile clients (api/guard.py; each limit per listening port).
    #: A request head (request line and headers) must be complete this long after the
    #: connection opened, or after the first byte of a later request: else 408, closed.
    header_timeout_s: float = 10.0
    #: A request body must have arrived this long after its head: else 408, closed.
    body_timeout_s: float = 60.0
    #: An idle kept-alive connection is closed after this.
    keepalive_timeout_s: float = 15.0
    #: A request head larger than this: 431, closed.
    max_header_bytes: int = 64 * 1024
    #: Connections open at once per port; beyond, a new one gets 503 and is closed.
    max_connections: int = 256
    #: Body parsing: deeper nesting is INVALID_REQUEST_JSON, a longer array anywhere in
    #: the body INVALID_ARGUMENTS naming it. The depth stays well above what a parameter
    #: may hold (setconfigs object values: 32 levels), so a too-deep value still fails
    #: only its own key (CONFIG_ITEM_FAIL, R35) rather than the whole body.
    max_json_depth: int = 128
    max_list_length: int = 10000
    #: WebSocket servers (5679, 5678, 54547): a longer client message closes the socket
    #: (1009); a ping is sent every ws_heartbeat_s, and a client whose pong has not come
    #: within half of it is disconnected.
    ws_max_message_bytes: int = 64 * 1024
    ws_heartbeat_s: float = 30.0


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str = "./data"
    #: Initial LMDB map; it grows by doubling when full, up to max_map_size_bytes.
    map_size_bytes: int = 256 * 1024 * 1024
    max_map_size_bytes: int = 64 * 1024 * 1024 * 1024
    #: Writes are refused with INSUFFICIENT_SPACE_LEFT below this much free disk.
    min_free_bytes: int = 64 * 1024 * 1024
    read_threads: int = 2


@dataclass(frozen=True)
class ImagesConfig:
    #: Folders whose files ``*_path`` parameters may read. Empty: path inputs are refused.
    roots: Tuple[str, ...] = ()
    max_encoded_bytes: int = 16 * 1024 * 1024
    max_side_px: int = 8192


@dataclass(frozen=True)
class ModelsConfig:
    #: "cpu" (ONNX Runtime) or "se5" (bmodels through SAIL on the BM1684).
    profile: str = "cpu"
    #: Manifest path overriding the profile's; relative paths resolve against the
    #: configuration file's folder.
    manifest: str = ""
    #: Where prepared (fp32-folded) CPU models are cached; default <data_dir>/models.
    cache_dir: str = ""
    tpu_id: int = 0


#: ``workers.batching`` values: "auto" batches on the SAIL runtime only.
BATCHING_MODES = ("auto", "on", "off")
#: ``workers.admission`` values (workers/admission.py).
ADMISSION_MODES = ("time", "count")


@dataclass(frozen=True)
class WorkersConfig:
    #: Inference workers: threads that each run whole requests (decode, detect, align,
    #: quality, embed). On the CPU profile each has its own model sessions, so count x
    #: intra_op_threads should not exceed the cores. On the SE5 the workers share one
    #: batching TPU thread per model, so 2-4 workers keep the CPU stages busy on the
    #: 8 cores while faces of concurrent requests share TPU batches.
    count: int = 1
    intra_op_threads: int = 2
    #: How API requests are admitted to the workers (workers/admission.py). "time": while
    #: a request's expected wait for a worker plus its own inference time (both learnt
    #: from recent requests of its endpoint) fit max_wait_s, and the bodies waiting fit
    #: max_queued_body_bytes; beyond, HTTP 503 with Retry-After at once. "count": the
    #: former rule, queue_size waiting requests whatever they cost (for comparison).
    admission: str = "time"
    #: The time budget of "time" admission (seconds; capped at timeout_s, whose margin
    #: above it absorbs estimates that turn out low).
    max_wait_s: float = 30.0
    #: Bytes of request bodies waiting for a worker ("time" admission); each body is also
    #: held parsed meanwhile, so about twice this in memory. A lone waiting body always fits.
    max_queued_body_bytes: int = 256 * 1024 * 1024
    #: "count" admission only: requests waiting beyond this get HTTP 503. Ignored by "time".
    queue_size: int = 32
    #: A request waiting longer than this for its result fails with INTERNAL_ERROR.
    timeout_s: float = 60.0
    #: Cross-request micro-batching: one shared inference thread per model that joins
    #: concurrent workers' inputs into one run. "auto": on for SAIL (one TPU core, batch
    #: 4 costs about what batch 1 does), off for ONNX Runtime (per-worker sessions).
    batching: str = "auto"
    #: How long a batch may wait for more callers after its first one arrived; it waits
    #: only while callers are seen to overlap, so a lone client is never delayed.
    batch_wait_ms: float = 3.0


@dataclass(frozen=True)
class RecognitionConfig:
    #: Defaults of the runtime keys MATCH_THRESHOLD, REGN_MIN_FACE, GATE_DEFAULT_GROUP_SIZE.
    match_threshold: float = 82.0
    min_face_size: int = 40
    library_capacity: int = 100000
    #: ``search`` with ``liveness_rgb``: a probe whose live probability (the RGB liveness
    #: models' mean, 0-1) is below this fails with LIVENESS_DETECT_FAIL.
    liveness_threshold: float = 0.5


@dataclass(frozen=True)
class EventsConfig:
    #: Event images (face crops, scene images): the "local" directory of
    #: GATE_EVENT_IMAGE_PATH; default <data_dir>/events.
    image_dir: str = ""
    #: The "remote" directory of GATE_EVENT_IMAGE_PATH (upstream: a second disk).
    remote_image_dir: str = "/data2/events"
    #: Retention: beyond either limit the oldest events (with their images) are deleted,
    #: so an edge box's disk never fills with history.
    max_events: int = 100000
    max_image_bytes: int = 4 * 1024 * 1024 * 1024
    #: JPEG quality of stored face crops and re-encoded scene images.
    jpeg_quality: int = 90


@dataclass(frozen=True)
class DevicesConfig:
    #: Most media devices the box accepts (device.md 1: DEVICE_MAX_NUM_ERROR beyond).
    max_count: int = 16


@dataclass(frozen=True)
class PushConfig:
    #: Real-time WebSocket: messages queued per connection before the oldest is dropped.
    realtime_queue_size: int = 100
    #: History push: events sent per round and the timeout of one POST (event.md 8).
    history_batch: int = 100
    history_timeout_s: float = 10.0


#: ``video.decoder`` values: "auto" uses SAIL's hardware decoder on the se5 profile.
DECODERS = ("auto", "opencv", "sail")


@dataclass(frozen=True)
class VideoConfig:
    #: Frames per second each video device hands to detection; frames in between are
    #: skipped, and a frame waiting while the previous one is analysed is replaced by
    #: the next (never queued).
    analysis_fps: float = 8.0
    #: A ``file`` device plays once at its native rate; true loops it.
    loop_files: bool = False
    #: "opencv" (FFmpeg), "sail" (the BM1684's VPU via sail.Decoder) or "auto".
    decoder: str = "auto"
    #: RTSP reconnection: the first retry after this, doubling up to the maximum.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    #: A stream that delivers no frame for this long is reconnected (and reported offline).
    read_timeout_s: float = 10.0
    #: A track not seen for this long has left the picture (its event, if any, is final).
    track_timeout_s: float = 1.0
    #: Most faces analysed per frame (largest first): a crowd cannot stall a device.
    max_faces_per_frame: int = 8


@dataclass(frozen=True)
class PreviewConfig:
    #: ws://host:5678/preview (device.md 10.1) and the control channel ws://host:54547
    #: (10.2); 0 picks a free port (tests).
    port: int = 5678
    control_port: int = 54547
    #: Frames queued per viewer before the oldest is dropped (a slow viewer loses frames).
    queue_size: int = 4
    jpeg_quality: int = 80


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    push: PushConfig = field(default_factory=PushConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: Folder relative paths in the file resolve against (not a YAML key).
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve(self, path: str) -> Path:
        """A configured path made absolute against the configuration file's folder."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.storage.data_dir)

    @property
    def model_cache_dir(self) -> Path:
        return self.resolve(self.models.cache_dir) if self.models.cache_dir else self.data_dir / "models"

    @property
    def event_image_dir(self) -> Path:
        return self.resolve(self.events.image_dir) if self.events.image_dir else self.data_dir / "events"

    @property
    def remote_event_image_dir(self) -> Path:
        return self.resolve(self.events.remote_image_dir)

    @property
    def image_roots(self) -> List[Path]:
        return [self.resolve(r) for r in self.images.roots]

    @property
    def tls_files(self) -> Optional[Tuple[Path, Path]]:
        """(certificate, key) when TLS is configured."""
        if not self.server.tls_cert:
            return None
        return self.resolve(self.server.tls_cert), self.resolve(self.server.tls_key)

    def manifest_path(self) -> Path:
        """The active model manifest: explicit, else the profile's, found beside the
        configuration, in the source tree, or in the install prefix's share folder."""
        if self.models.manifest:
            return self.resolve(self.models.manifest)
        relative = PROFILE_MANIFESTS[self.models.profile]
        candidates = [
            Path(self.base_dir) / relative,
            Path(__file__).resolve().parent.parent / relative,
            Path(sys.prefix) / "share" / "sophon-face" / relative,
        ]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve()
        raise ConfigError(f"models.profile: manifest {relative} not found in "
                          + ", ".join(str(c.parent.parent) for c in candidates))


_CHECKS = {
    ("server", "port"): lambda v: 1 <= v <= 65535,
    ("server", "max_body_bytes"): lambda v: v > 0,
    ("server", "ws_port"): lambda v: 0 <= v <= 65535,
    ("server", "header_timeout_s"): lambda v: v > 0,
    ("server", "body_timeout_s"): lambda v: v > 0,
    ("server", "keepalive_timeout_s"): lambda v: v > 0,
    ("server", "max_header_bytes"): lambda v: v >= 1024,
    ("server", "max_connections"): lambda v: v >= 1,
    ("server", "max_json_depth"): lambda v: 1 <= v <= 256,  # checked recursively
    ("server", "max_list_length"): lambda v: v >= 1,
    ("server", "ws_max_message_bytes"): lambda v: v >= 1024,
    ("server", "ws_heartbeat_s"): lambda v: v > 0,
    ("events", "max_events"): lambda v: v >= 1,
    ("events", "max_image_bytes"): lambda v: v >= 0,
    ("events", "jpeg_quality"): lambda v: 1 <= v <= 100,
    ("devices", "max_count"): lambda v: v >= 1,
    ("push", "realtime_queue_size"): lambda v: v >= 1,
    ("push", "history_batch"): lambda v: v >= 1,
    ("push", "history_timeout_s"): lambda v: v > 0,
    ("models", "profile"): lambda v: v in PROFILE_MANIFESTS,
    ("workers", "count"): lambda v: v >= 1,
    ("workers", "intra_op_threads"): lambda v: v >= 1,
    ("workers", "admission"): lambda v: v in ADMISSION_MODES,
    ("workers", "max_wait_s"): lambda v: v > 0,
    ("workers", "max_queued_body_bytes"): lambda v: v >= 1,
    ("workers", "queue_size"): lambda v: v >= 1,
    ("workers", "timeout_s"): lambda v: v > 0,
    ("workers", "batching"): lambda v: v in BATCHING_MODES,
    ("workers", "batch_wait_ms"): lambda v: 0 <= v <= 100,
    ("storage", "read_threads"): lambda v: v >= 1,
    ("storage", "map_size_bytes"): lambda v: v >= 1024 * 1024,
    ("recognition", "match_threshold"): lambda v: 0 <= v <= 100,
    ("recognition", "min_face_size"): lambda v: v >= 0,
    ("recognition", "library_capacity"): lambda v: v >= 1,
    ("recognition", "liveness_threshold"): lambda v: 0 <= v <= 1,
    ("video", "analysis_fps"): lambda v: 0 < v <= 60,
    ("video", "decoder"): lambda v: v in DECODERS,
    ("video", "reconnect_min_s"): lambda v: v > 0,
    ("video", "reconnect_max_s"): lambda v: v > 0,
    ("video", "read_timeout_s"): lambda v: v > 0,
    ("video", "track_timeout_s"): lambda v: v > 0,
    ("video", "max_faces_per_frame"): lambda v: v >= 1,
    ("preview", "port"): lambda v: 0 <= v <= 65535,
    ("preview", "control_port"): lambda v: 0 <= v <= 65535,
    ("preview", "queue_size"): lambda v: v >= 1,
    ("preview", "jpeg_quality"): lambda v: 1 <= v <= 100,
    ("logging", "level"): lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
}


#: Settings whose value is never shown in an error message (it would reach logs).
_SECRETS = {("server", "api_token")}
MIN_TOKEN_CHARS = 16


def _is_token(value: str) -> bool:
    """Visible ASCII only (it travels in an HTTP header), long enough not to be guessed."""
    return len(value) >= MIN_TOKEN_CHARS and all("!" <= c <= "~" for c in value)


def _coerce(value: Any, annotation: str, path: str) -> Any:
    """Check one leaf value against its field's annotation (string form, PEP 563)."""
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected number, got {value!r}")
        return float(value)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected string, got {value!r}")
        return value
    if annotation.startswith("Tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{path}: unsupported setting type {annotation}")  # pragma: no cover


def _section(cls: Type[T], raw: Any, path: str) -> T:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{path}.{key}: unknown key")
    values: Dict[str, Any] = {}
    for name, raw_value in raw.items():
        if (path, name) in _SECRETS:
            values[name] = _secret(raw_value, f"{path}.{name}")
            continue
        values[name] = _coerce(raw_value, str(fields[name].type), f"{path}.{name}")
        check = _CHECKS.get((path, name))
        if check is not None and not check(values[name]):
            raise ConfigError(f"{path}.{name}: invalid value {raw_value!r}")
    return cls(**values)


def _secret(value: Any, path: str) -> str:
    if not isinstance(value, str) or not (value == "" or _is_token(value)):
        raise ConfigError(f"{path}: expected \"\" or at least {MIN_TOKEN_CHARS} visible "
                          "ASCII characters (value not shown)")
    return value


def _check_server(server: ServerConfig) -> None:
    """Rules across settings of the server section."""
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError("server.tls_key: set both tls_cert and tls_key, or neither")


def config_from_mapping(raw: Optional[Mapping[str, Any]], base_dir: str = ".") -> Config:
    """Build a Config from parsed YAML, rejecting unknown keys with their path."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"<top>: expected a mapping, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{key}: unknown key")
    built = {}
    for name, f in sections.items():
        section_cls = f.default_factory  # type: ignore[misc]
        built[name] = _section(section_cls, raw.get(name), name)
    _check_server(built["server"])
    return Config(base_dir=str(Path(base_dir).resolve()), **built)


def load_config(path: Optional[str] = None) -> Config:
    """Load ``path`` (None: the embedded defaults, relative paths against the CWD)."""
    if path is None:
        return config_from_mapping({}, base_dir=os.getcwd())
    try:
        with open(path, "r", encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return config_from_mapping(raw, base_dir=str(Path(path).resolve().parent))


def with_overrides(config: Config, **overrides: Any) -> Config:
    """Apply CLI flags (``port=...``) on top of the file; None means "not given"."""
    server, storage, images = config.server, config.storage, config.images
    if overrides.get("host") is not None:
        server = dataclasses.replace(server, host=overrides["host"])
    if overrides.get("port") is not None:
        if not 1 <= int(overrides["port"]) <= 65535:
            raise ConfigError(f"--port: invalid value {overrides['port']!r}")
        server = dataclasses.replace(server, port=int(overrides["port"]))
    if overrides.get("ws_port") is not None:
        if not 0 <= int(overrides["ws_port"]) <= 65535:
            raise ConfigError(f"--ws-port: invalid value {overrides['ws_port']!r}")
        server = dataclasses.replace(server, ws_port=int(overrides["ws_port"]))
    if overrides.get("api_token") is not None:  # SOPHON_FACE_API_TOKEN
        server = dataclasses.replace(server, api_token=_secret(overrides["api_token"],
                                                               "SOPHON_FACE_API_TOKEN"))
    # Flags are relative to the CWD, like any command-line path.
    if overrides.get("data_dir") is not None:
        storage = dataclasses.replace(storage, data_dir=str(Path(overrides["data_dir"]).resolve()))
    if overrides.get("image_roots"):
        images = dataclasses.replace(
            images, roots=tuple(str(Path(r).resolve()) for r in overrides["image_roots"]))
    return dataclasses.replace(config, server=server, storage=storage, images=images)
