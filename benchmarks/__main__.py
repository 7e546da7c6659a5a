"""Run every benchmark: ``python -m benchmarks [--dsn ...] [--quick]``.

First the scale check (every repository query's plan at a million turns), then the
latency and throughput comparison with plain psycopg and pgbench, the HOT share of
keep-alive updates and the in-memory fake. Each writes its JSON under
``benchmarks/results/``; the exit status is 1 when the scale check fails.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import bench, scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="admin DSN of an existing server (default: embedded)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run of everything")
    parser.add_argument("--synchronous-commit", action="store_true")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    common = [*(["--dsn", args.dsn] if args.dsn else [])]
    common += ["--quick"] if args.quick else []
    common += ["--synchronous-commit"] if args.synchronous_commit else []
    print("== scale: every repository query at scale ==", flush=True)
    status = scale.main(common)
    print("\n== bench: turnstore, plain psycopg, pgbench ==", flush=True)
    bench.main([*common, "--loop", args.loop])
    return status


if __name__ == "__main__":
    sys.exit(main())
