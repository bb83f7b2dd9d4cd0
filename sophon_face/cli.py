"""``sophon-face``: serve | health | check-config. The only module that exits.

Contract relied on by scripts and the systemd unit:
  sophon-face serve [--config FILE] [--host H] [--port N] [--ws-port N] [--data-dir DIR]
                    [--image-root DIR ...]
  sophon-face health [--url URL]      stdlib only; exit 0 healthy, 1 otherwise; one line
  sophon-face check-config [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from typing import List, Optional

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
    health.add_argument("--url", default=DEFAULT_HEALTH_URL)
    health.add_argument("--timeout", type=float, default=10.0)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", help="configuration file (default: embedded defaults)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import build_app
    from .config import ConfigError, load_config, with_overrides

    try:
        config = with_overrides(load_config(args.config), host=args.host, port=args.port,
                                ws_port=args.ws_port, data_dir=args.data_dir, image_roots=args.image_roots)
        config.manifest_path()
    except ConfigError as exc:
        print(f"sophon-face: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.logging.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    web.run_app(build_app(config), host=config.server.host, port=config.server.port,
                shutdown_timeout=config.server.shutdown_timeout_s, access_log=None,
                print=lambda msg: logging.getLogger("sophon_face").info("%s", msg.strip()))
    return 0


def _health(args: argparse.Namespace) -> int:
    """One line, exit code 0/1: for systemd, monitoring and operators on the box."""
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
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
    handlers = {"serve": _serve, "health": _health, "check-config": _check_config}
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
