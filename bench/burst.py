"""Bursts of concurrent ``detect`` requests against a fresh daemon: how many are served,
how many refused (503), with admission by waiting time vs the former count-bounded queue.

Each burst: a fresh daemon (``python -m sophon_face serve``, its own process, the default
``workers`` settings but the admission mode), then N clients, each on its own connection,
all released at once, each POSTing one ``detect`` with the same photo as base64. Counted:
answers by status (200, 503, other), wall time of the whole burst, latency of the served
ones, the 503s' Retry-After and how fast they came, and the daemon's own figures after it
(/health ``workers``: learnt service time, refusals).

Modes (``workers.admission``): ``count`` is the former rule (``queue_size`` 32 waiting
requests, then 503), ``time`` the new one (expected wait + own time <= ``max_wait_s``,
waiting bodies <= ``max_queued_body_bytes``). Both run by default, burst by burst, the
count rule first (the baseline); ``--modes time`` runs one.

Run (from the project root):
    .venv/bin/python bench/burst.py                          # 16, 64, 200 clients, both modes
    .venv/bin/python bench/burst.py --clients 16,64,200,1000 --modes time
    .venv/bin/python bench/burst.py --url http://127.0.0.1:5555   # a daemon already running
The photo: ``--photo FILE``; default the devset's deepface_p11/img31.jpg (323 KB, 431 KB
as base64), else the largest photo of tests/data. Prints markdown; writes
bench/results/burst-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import aiohttp

from daemon import DaemonProcess
from measure import (DEVSET_DIR, TEST_DATA_DIR, CpuShare, describe_machine, machine,
                     markdown_table, save_results)

DEFAULT_PHOTO = DEVSET_DIR / "deepface_p11" / "img31.jpg"
MODES = ("count", "time")
#: ``server.max_connections``: beyond it a connection is refused (api/guard.py) before
#: admission ever sees its request.
DEFAULT_MAX_CONNECTIONS = 256


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_daemon(admission: str, clients: int) -> DaemonProcess:
    """A fresh daemon with the default ``workers`` settings but the admission mode."""
    server: Dict[str, Any] = {}
    if clients > DEFAULT_MAX_CONNECTIONS:  # one connection per client: let them all in
        server["max_connections"] = clients + 16
    return DaemonProcess.in_temp_dir(f"bench-burst-{admission}-", {
        "server": server, "workers": {"admission": admission}})


def health(url: str) -> Dict[str, Any]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read() or b"{}")
    finally:
        conn.close()


Result = Tuple[int, float, Optional[str]]  # status, seconds, Retry-After


async def _burst(url: str, body: bytes, clients: int, label: str) -> Tuple[List[Result], float]:
    """``clients`` requests released at once; progress on stderr every second."""
    connector = aiohttp.TCPConnector(limit=0)  # one connection per client
    timeout = aiohttp.ClientTimeout(total=600)
    results: List[Result] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = asyncio.Event()

        async def one() -> None:
            await start.wait()
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/sophon/v2/face/detect", data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    results.append((r.status, time.perf_counter() - t0,
                                    r.headers.get("Retry-After")))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                results.append((0, time.perf_counter() - t0, type(exc).__name__))

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                counts = Counter(status for status, _s, _r in results)
                log(f"  {label}: {len(results)}/{clients} answered "
                    f"({counts.get(200, 0)} x 200, {counts.get(503, 0)} x 503, "
                    f"{len(results) - counts.get(200, 0) - counts.get(503, 0)} other), "
                    f"{time.perf_counter() - started:.1f} s")

        tasks = [asyncio.ensure_future(one()) for _ in range(clients)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        reporter = asyncio.ensure_future(progress())
        start.set()
        await asyncio.gather(*tasks)
        wall_s = time.perf_counter() - started
        reporter.cancel()
    return results, wall_s


def _percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_burst(url: str, body: bytes, clients: int, mode: str) -> Dict[str, Any]:
    label = f"{mode:5s} {clients:4d} clients"
    cpu = CpuShare().start()
    results, wall_s = asyncio.run(_burst(url, body, clients, label))
    cpu_share = cpu.stop()
    statuses = Counter(status for status, _s, _r in results)
    served = [s for status, s, _r in results if status == 200]
    refused = [(s, r) for status, s, r in results if status == 503]
    retry_after = [int(r) for _s, r in refused if r is not None and r.isdigit()]
    workers = health(url).get("workers", {})
    row = {
        "mode": mode, "clients": clients, "ok": statuses.get(200, 0),
        "busy": statuses.get(503, 0),
        "other": clients - statuses.get(200, 0) - statuses.get(503, 0),
        "other_statuses": {str(k): v for k, v in statuses.items() if k not in (200, 503)},
        "wall_s": round(wall_s, 2),
        "served_p50_s": round(statistics.median(served), 3) if served else None,
        "served_max_s": round(max(served), 3) if served else None,
        "refused_max_s": round(max(s for s, _r in refused), 3) if refused else None,
        "retry_after_s": [min(retry_after), max(retry_after)] if retry_after else None,
        "service_ms": workers.get("service_ms"), "prior_ms": workers.get("prior_ms"),
        "cpu": cpu_share,
    }
    log(f"  {label}: {row['ok']} x 200, {row['busy']} x 503, {row['other']} other "
        f"in {wall_s:.1f} s")
    return row


def table(rows: List[Dict[str, Any]]) -> str:
    def seconds(value: Optional[float]) -> Any:
        return "—" if value is None else value

    out = []
    for r in rows:
        retry = r["retry_after_s"]
        out.append((r["mode"], r["clients"], r["ok"], r["busy"], r["other"], r["wall_s"],
                    seconds(r["served_p50_s"]), seconds(r["served_max_s"]),
                    seconds(r["refused_max_s"]),
                    "—" if not retry else f"{retry[0]}-{retry[1]}",
                    ", ".join(f"{k} {v:.0f}" for k, v in (r["service_ms"] or {}).items()) or "—",
                    r["cpu"].get("others_cores")))
    return markdown_table(("admission", "clients", "200", "503", "other", "wall s",
                           "served p50 s", "served max s", "slowest 503 s", "Retry-After s",
                           "learnt ms per job", "others' cores"), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="16,64,200",
                        help="comma-separated burst sizes (default 16,64,200)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="workers.admission modes to compare (default count,time)")
    parser.add_argument("--photo", type=Path, default=None, help="the photo every request sends")
    parser.add_argument("--url", default=None,
                        help="burst a daemon already running (its own admission mode)")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes):
        parser.error(f"--modes: each of {MODES}")
    photo = args.photo
    if photo is None:
        photo = DEFAULT_PHOTO if DEFAULT_PHOTO.is_file() else max(
            TEST_DATA_DIR.glob("*.jpg"), key=lambda p: p.stat().st_size)
    image_b64 = base64.b64encode(photo.read_bytes()).decode("ascii")
    body = json.dumps({"image_base64_str": image_b64}).encode("utf-8")
    facts = machine()
    log(f"photo {photo} ({len(image_b64) / 1024:.0f} KB as base64); "
        f"{describe_machine(facts)}")

    rows: List[Dict[str, Any]] = []
    for n in clients:
        if args.url:
            rows.append(run_burst(args.url.rstrip("/"), body, n, "running"))
            continue
        for mode in modes:
            log(f"{mode}: starting a fresh daemon for {n} clients")
            daemon = start_daemon(mode, n)
            try:
                rows.append(run_burst(daemon.url, body, n, mode))
            finally:
                daemon.stop()
    print(f"\nPhoto: {photo.name}, {len(image_b64) / 1024:.0f} KB as base64. "
          f"Machine: {describe_machine(facts)}.\n")
    print(table(rows))
    path = save_results("burst", {"machine": facts, "photo": str(photo),
                                  "photo_base64_bytes": len(image_b64), "rows": rows})
    log(f"results: {path}")


if __name__ == "__main__":
    main()
