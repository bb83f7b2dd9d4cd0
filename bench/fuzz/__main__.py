"""``python -m bench.fuzz``: every fuzzer for a bounded time (bench/fuzz/run.py)."""

from __future__ import annotations

import sys

from bench.fuzz.run import main

sys.exit(main())
