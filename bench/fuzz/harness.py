"""What both atheris harnesses share: the command line, and a plain-Python fallback loop.

A harness is a module with ``test_one_input(data: bytes)`` that raises only on a bug. Run
as a script it fuzzes that function:

* with atheris installed (``pip install atheris``; a cp38-cp312 manylinux wheel, no clang
  needed), through libFuzzer with coverage feedback: every libFuzzer flag is accepted
  (``-max_total_time=60``, ``-rss_limit_mb=2048``, corpus directories...);
* without it, by a blind mutation loop over the seed files (bit flips, byte runs, splices)
  for ``--seconds`` seconds: far weaker, but it runs everywhere and replays crash files.

``python FILE.py --replay CRASH...`` runs saved inputs once each (no atheris needed): what
a regression test does with a libFuzzer crash artifact.

This module imports nothing from sophon_face, so atheris can instrument the code under
test when the harness imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Sequence

PROJECT_DIR = Path(__file__).resolve().parents[2]
RESULTS_DIR = PROJECT_DIR / "bench" / "results" / "fuzz"

TestOneInput = Callable[[bytes], None]

#: Byte values that often sit on a parser's edge.
_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff", b"\x00\x00",
                b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x01\x00")


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


def read_seeds(dirs: Sequence[Path]) -> List[bytes]:
    seeds: List[bytes] = []
    for folder in dirs:
        if folder.is_dir():
            seeds += [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]
    return seeds


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes], max_len: int) -> bytes:
    """One to four blind mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        pos = rng.randint(0, len(out))
        if kind == 0 and out:  # flip a bit
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # a random byte
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 2:  # insert random bytes
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3 and out:  # delete a run
            del out[pos:pos + rng.randint(1, 64)]
        elif kind == 4 and out:  # duplicate a run
            start = rng.randrange(len(out))
            out[pos:pos] = out[start:start + rng.randint(1, 64)]
        elif kind == 5:  # an interesting value
            value = rng.choice(_INTERESTING)
            out[pos:pos + len(value)] = value
        elif corpus:  # splice with another seed
            other = rng.choice(corpus)
            cut = rng.randint(0, len(other))
            out = out[:pos] + bytearray(other[cut:])
    return bytes(out[:max_len])


def save_crash(name: str, data: bytes) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"crash-{name}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def fallback_fuzz(name: str, target: TestOneInput, seeds: Sequence[bytes], seconds: float,
                  seed: int, max_len: int) -> int:
    """The blind loop: 0 when ``seconds`` passed without a crash, 1 on the first crash."""
    rng = random.Random(seed)
    corpus = list(seeds) or [b""]
    started = time.monotonic()
    runs = 0
    next_report = started + 10.0
    for data in corpus:  # every seed once, unmutated
        if not _run_one(name, target, data):
            return 1
        runs += 1
    while time.monotonic() - started < seconds:
        data = mutate(rng.choice(corpus), rng, corpus, max_len)
        if not _run_one(name, target, data):
            return 1
        runs += 1
        now = time.monotonic()
        if now >= next_report:
            print(f"#{runs} {name}: {runs / (now - started):.0f} exec/s", flush=True)
            next_report = now + 10.0
    elapsed = time.monotonic() - started
    print(f"Done {runs} runs in {elapsed:.0f} second(s) (blind mutation, no atheris)",
          flush=True)
    print(f"stat::number_of_executed_units: {runs}", flush=True)
    return 0


def _run_one(name: str, target: TestOneInput, data: bytes) -> bool:
    try:
        target(data)
    except Exception:  # the harness's whole point: anything raised is a finding
        traceback.print_exc()
        print(f"==CRASH== input saved to {save_crash(name, data)}", flush=True)
        return False
    return True


def main(name: str, load: Callable[[], TestOneInput],
         argv: Optional[Sequence[str]] = None) -> int:
    """The command line of a harness script.

    ``load()`` imports the code under test and returns the target. Under atheris it is
    called inside the import hook, so the script must not import sophon_face before.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=f"Fuzz {name}. With atheris, unknown -flags go to libFuzzer.")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget (atheris: -max_total_time)")
    parser.add_argument("--seed-dir", type=Path, action="append", default=[],
                        help="seed inputs (atheris: read-only corpus directories)")
    parser.add_argument("--corpus-dir", type=Path, default=None,
                        help="atheris: where new interesting inputs are written")
    parser.add_argument("--no-atheris", action="store_true", help="force the blind loop")
    parser.add_argument("--max-len", type=int, default=65536)
    parser.add_argument("--random-seed", type=int, default=1)
    parser.add_argument("--replay", type=Path, nargs="+", default=[],
                        help="run these inputs once each and stop")
    args, libfuzzer_flags = parser.parse_known_args(argv)
    if args.replay:
        target = load()
        for path in args.replay:
            target(path.read_bytes())
            print(f"{path}: ok", flush=True)
        return 0
    if args.no_atheris or not have_atheris():
        if not args.no_atheris:
            print("atheris is not installed: blind mutation instead (pip install atheris)",
                  flush=True)
        return fallback_fuzz(name, load(), read_seeds(args.seed_dir),
                             60.0 if args.seconds is None else args.seconds,
                             args.random_seed, args.max_len)
    import atheris

    flags = [sys.argv[0]] + libfuzzer_flags
    if args.seconds is not None:
        flags.append(f"-max_total_time={int(args.seconds)}")
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={args.max_len}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        flags.append(f"-artifact_prefix={RESULTS_DIR}/{name}-")
    if not any(f.startswith("-seed=") for f in flags):
        flags.append(f"-seed={args.random_seed}")
    if args.corpus_dir is not None:
        args.corpus_dir.mkdir(parents=True, exist_ok=True)
        flags.append(str(args.corpus_dir))  # libFuzzer writes to the first directory
    flags += [str(d) for d in args.seed_dir]
    with atheris.instrument_imports(include=["sophon_face"]):
        fuzz_target = load()
    atheris.Setup(flags, fuzz_target)
    atheris.Fuzz()  # exits the process
    return 0
