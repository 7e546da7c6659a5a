"""The in-memory fake alone: typical turns per second with many turns stored, optionally
under cProfile.

The same measurement as ``bench``'s fake section (``begin_turn``, 20 keep-alive writes
through ``KeepAlive.touch()``, ``complete_turn`` on ``InMemoryStore``), without a
PostgreSQL server, so that the fake can be tuned on its own.

    python -m benchmarks.fake [--turns 1000000] [--measured 5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from dataclasses import replace

from benchmarks.bench import FULL, bench_fake


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=FULL.fake_turns, help="turns stored first")
    parser.add_argument("--measured", type=int, default=FULL.fake_measured)
    parser.add_argument("--profile", action="store_true", help="cProfile the measured turns")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    settings = replace(FULL, fake_turns=args.turns, fake_measured=args.measured)
    profile = cProfile.Profile(time.process_time) if args.profile else None
    result = asyncio.run(bench_fake(settings, profile=profile))
    turn = result["typical_turn"]
    print(
        f"{result['stored_turns']:,} turns stored (loaded in {result['load_seconds']:.1f} s): "
        f"{turn['ops_per_s']:.0f} typical turns/s, median {turn['median_us']:.0f} us, "
        f"p99 {turn['p99_us']:.0f} us; {result['cpu_us_per_turn']:.0f} us of CPU per turn"
    )
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
