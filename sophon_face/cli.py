"""``sophon-face``: serve | health | check-config | import | export | backup | restore.

The only module that exits. Contract relied on by scripts and the systemd unit:
  sophon-face serve [--config FILE] [--host H] [--port N] [--ws-port N] [--data-dir DIR]
                    [--image-root DIR ...]
  sophon-face health [--url URL] [--token T] [--cafile PEM]
                     stdlib only; exit 0 healthy, 1 otherwise; one line
  sophon-face check-config [--config FILE]
  sophon-face import SOURCE [--url URL [--token T] | --data-dir DIR [--config FILE]]
                     [--group NAME] [--workers N] [--fiqa-level L] [--resume]
                     (tools/bulk_import.py)
  sophon-face export DIR [--url URL [--token T] | --data-dir DIR [--config FILE]]
  sophon-face backup FILE [--data-dir DIR] [--config FILE] [--with-event-images]
                     the daemon may run; exit 0 written, 1 failed, 2 bad usage (tools/backup.py)
  sophon-face restore FILE [--data-dir DIR] [--config FILE] [--discard-old]
                      [--ignore-recognizer-model]   the daemon stopped; exit 0 restored,
                      1 refused or failed (the store unchanged), 2 bad usage (tools/restore.py)

The API token (server.api_token) may come from the environment variable
SOPHON_FACE_API_TOKEN instead: ``serve`` requires it, ``health``, ``import --url`` and
``export --url`` send it (``--token`` overrides it).

``serve`` speaks systemd's notify protocol when started with NOTIFY_SOCKET (Type=notify):
READY=1 once it really serves, WATCHDOG=1 from the event loop, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Awaitable, Dict, List, Optional

from .sdnotify import Notifier, feed_watchdog, watchdog_ping_interval_s
from .tools.backup import add_backup_arguments, backup_main
from .tools.bulk_import import add_import_arguments, import_main  # stdlib-only imports
from .tools.export import add_export_arguments, export_main
from .tools.restore import add_restore_arguments, restore_main
from .tools.targets import TOKEN_ENV, token_headers

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

DEFAULT_HEALTH_URL = "http://127.0.0.1:5555/health"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sophon-face", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--config", help="configuration file (default: embedded defaults)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--ws-port", dest="ws_port", type=int,
                       help="real-time event WebSocket port (default 5679)")
    serve.add_argument("--data-dir", dest="data_dir")
    serve.add_argument("--image-root", dest="image_roots", action="append", default=[],
                       help="folder *_path parameters may read (repeatable)")

    health = sub.add_parser("health", help="check a running daemon (exit 0 when healthy)")
    health.add_argument("--url", default=DEFAULT_HEALTH_URL,
                        help="https://... when the daemon has server.tls_cert")
    health.add_argument("--timeout", type=float, default=10.0)
    health.add_argument("--token", help=f"API token to send (default ${TOKEN_ENV})")
    health.add_argument("--cafile", help="PEM file to verify the daemon's TLS certificate "
                        "with (a self-signed one: the certificate itself)")

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", help="configuration file (default: embedded defaults)")
    importer = sub.add_parser("import", help="register a photo folder tree or CSV")
    add_import_arguments(importer)
    exporter = sub.add_parser("export", help="write the gallery as photos and CSV")
    add_export_arguments(exporter)
    for tool in (importer, exporter):
        tool.add_argument("--token", help=f"with --url: API token to send (default ${TOKEN_ENV})")
    add_backup_arguments(sub.add_parser("backup",
                                        help="consistent copy of a store (daemon may run)"))
    add_restore_arguments(sub.add_parser("restore", help="put a backup back (daemon stopped)"))
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config, with_overrides

    try:
        config = with_overrides(load_config(args.config), host=args.host, port=args.port,
                                ws_port=args.ws_port, data_dir=args.data_dir, image_roots=args.image_roots,
                                api_token=os.environ.get(TOKEN_ENV) or None)
        config.manifest_path()
        from .app import server_guard

        server_guard(config)  # TLS files load (or the error names the setting)
    except ConfigError as exc:
        print(f"sophon-face: configuration error: {exc}", file=sys.stderr)
        return 2
    # Under systemd stderr is the journal, which stamps every line itself.
    stamp = "" if _logs_to_journal() else "%(asctime)s "
    logging.basicConfig(level=config.logging.level.upper(),
                        format=stamp + "%(levelname)s %(name)s: %(message)s")
    # A watchdog abort (SIGABRT) or a crash leaves every thread's stack in the log.
    faulthandler.enable()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    notifier = Notifier.from_environment()
    try:
        return asyncio.run(_serve_until_stopped(config, notifier))
    finally:
        notifier.close()


async def _serve_until_stopped(config: Config, notifier: Notifier) -> int:
    """Start, tell systemd READY=1, serve until SIGTERM/SIGINT, then stop in order.

    READY=1 is sent only when the lifecycle has prepared the models, warmed every worker
    with an inference and opened the store (runner.setup()), the HTTP socket listens, and
    the health check agrees. A signal during the start cancels it; the lifecycle closes
    what it had opened.
    """
    from .api.keys import SERVICES
    from .app import build_app, http_runner, http_site

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = build_app(config)
    runner = http_runner(app)  # connection limits, header deadline (api/guard.py)
    notifier.status("starting: preparing models, warming the workers, opening the store")
    try:
        started = await _until_stopped(runner.setup(), stop)
    except Exception as exc:  # the lifecycle has closed what it had opened
        log.critical("start failed", exc_info=True)
        notifier.status(f"start failed: {type(exc).__name__}: {exc}")
        return 1
    if not started:
        notifier.stopping("stopped while starting")
        log.info("stopped while starting")
        return 0
    watchdog: Optional[asyncio.Future] = None
    try:
        site = http_site(runner, config.server.host, config.server.port)
        try:
            await site.start()
        except OSError as exc:
            log.critical("cannot listen on %s:%d: %s", config.server.host, config.server.port, exc)
            notifier.status(f"start failed: cannot listen on port {config.server.port}: {exc}")
            return 1
        log.info("serving HTTP on %s", site.name)
        health, healthy = await app[SERVICES].health()
        if not healthy:
            log.critical("started but not healthy: %s", json.dumps(health, default=str))
            notifier.status("start failed: not healthy after the start")
            return 1
        notifier.ready(_ready_status(health, config.server.port))
        interval_s = watchdog_ping_interval_s()
        if notifier.enabled and interval_s is not None:
            watchdog = asyncio.ensure_future(feed_watchdog(notifier, interval_s))
        await stop.wait()
        notifier.stopping()
        log.info("stopping")
    finally:
        await runner.cleanup()
        # Pinged through the shutdown too: it may take longer than WatchdogSec/2.
        if watchdog is not None:
            watchdog.cancel()
    return 0


async def _until_stopped(starting: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await ``starting`` unless ``stop`` is set first (then cancel it): True if started."""
    start = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if start.done():
        start.result()  # a failed start raises here
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False


def _ready_status(health: Dict[str, Any], port: int) -> str:
    warm = health.get("warm_up", {})
    return (f"ready: port {port}, {health.get('backend')} backend, "
            f"{health.get('feature_dim')}-d features, warm-up {warm.get('ms')} ms, "
            f"{health.get('store', {}).get('faces', 0)} faces")


def _logs_to_journal() -> bool:
    """systemd.exec(5) JOURNAL_STREAM: stderr is the journal's stream if device and inode match."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def _health(args: argparse.Namespace) -> int:
    """One line, exit code 0/1: for systemd, monitoring and operators on the box."""
    token = args.token or os.environ.get(TOKEN_ENV) or ""
    request = urllib.request.Request(args.url, headers=token_headers(token))
    context = None
    if args.cafile:
        import ssl

        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            print(f"unhealthy: cannot use --cafile {args.cafile}: {exc}")
            return 1
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as response:
            payload = json.loads(response.read().decode("utf-8"))
            status = response.status
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read().decode("utf-8"))
        except ValueError:
            payload = {}
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: {args.url} unreachable ({reason})")
        return 1
    warm = payload.get("warm_up", {})
    if status == 200 and payload.get("status") == "ok" and warm.get("ok"):
        print(f"healthy: {payload.get('backend')} backend, {payload.get('feature_dim')}-d "
              f"features, warm-up {warm.get('ms')} ms, {payload.get('store', {}).get('faces', 0)} faces")
        return 0
    print(f"unhealthy: HTTP {status}, status {payload.get('status')!r}, "
          f"warm-up error {warm.get('error')!r}")
    return 1


def _check_config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .manifest.schema import ManifestError, load_manifest

    try:
        config = load_config(args.config)
        load_manifest(config.manifest_path())
    except (ConfigError, ManifestError) as exc:
        print(f"{args.config or '<defaults>'}: {exc}")
        return 1
    print(f"{args.config or '<defaults>'}: ok (profile {config.models.profile}, "
          f"port {config.server.port}, data {config.data_dir})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("import", "export") and args.token:
        os.environ[TOKEN_ENV] = args.token  # what HttpTarget sends (tools/targets.py)
    handlers = {"serve": _serve, "health": _health, "check-config": _check_config,
                "import": import_main, "export": export_main,
                "backup": backup_main, "restore": restore_main}
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
