"""Render the latest results (``benchmarks/results/{scale,bench}.json``) as Markdown, the
form ``docs/performance.md`` quotes them in.

    python -m benchmarks.report
"""

from __future__ import annotations

import json
import sys
from typing import Any

from benchmarks._support import RESULTS_DIR
from benchmarks.bench import method_table, turn_table


def machine_lines(machine: dict[str, Any]) -> list[str]:
    return [
        f"- CPUs: {machine.get('nproc')}, memory: {machine.get('memory_gib')} GiB, "
        f"load average at start: {machine.get('loadavg')}",
        f"- {machine.get('postgresql')} ({machine.get('server_connection')}, "
        f"shared_buffers {machine.get('shared_buffers')}, fsync {machine.get('fsync')})",
        f"- Python {machine.get('python')}, psycopg {machine.get('psycopg')} "
        f"({machine.get('psycopg_impl')}, libpq {machine.get('libpq')})",
    ]


def scale_lines(scale: dict[str, Any]) -> list[str]:
    shape = scale["shape"]
    lines = [
        f"{shape['turns']:,} turns, {shape['chats']:,} chats, {shape['tenants']} tenants, "
        f"{shape['running']:,} running ({shape['stale']} stale); loaded with COPY and "
        f"analyzed in {scale['load_seconds']:.0f} s.",
        "",
        "| method | statements | server ms (median / max) | plan |",
        "|---|---:|---:|---|",
    ]
    for name, res in scale["results"].items():
        plan = " ; ".join(res["plans"])
        flag = " **SEQ SCAN**" if res["seq_scan_on_chat_turns"] else ""
        lines.append(
            f"| {name} | {res['statements']} | {res['server_ms_median']:.3f} / "
            f"{res['server_ms_max']:.3f} | {plan}{flag} |"
        )
    orphan = scale["results"]["find_orphan_candidates"]
    lines += [
        "",
        f"Orphan scan: {orphan['result_size']} candidates in {orphan['server_ms_median']:.3f} ms "
        f"of server time (median of the calls; budget 5 ms). "
        f"Verdict: {'PASS' if not scale['failures'] else 'FAIL: ' + '; '.join(scale['failures'])}",
    ]
    return lines


def main() -> int:
    for name in ("scale", "bench"):
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            print(f"no {path}: run python -m benchmarks first", file=sys.stderr)
            return 1
    scale = json.loads((RESULTS_DIR / "scale.json").read_text())
    bench = json.loads((RESULTS_DIR / "bench.json").read_text())
    out = ["### Machine", "", *machine_lines(bench["machine"]), ""]
    out += ["### Scale", "", *scale_lines(scale), ""]
    out += ["### Repository methods", "", *method_table(bench["methods"]), ""]
    out += [
        f"### Typical turn ({bench['typical_turn']['statements']} statements)",
        "",
        *turn_table(bench["typical_turn"]),
        "",
    ]
    out += ["### HOT share of keep-alive updates", ""]
    out += [
        f"- {h['streams']} concurrent streams: {h['hot_share']:.3f} "
        f"({h['n_tup_hot_upd_delta']} of {h['n_tup_upd_delta']} updates)"
        for h in bench["hot"]
    ]
    if "fake" in bench:
        fake = bench["fake"]
        turn = fake["typical_turn"]
        out += [
            "",
            "### In-memory fake",
            "",
            f"{fake['stored_turns']:,} turns stored (loaded in {fake['load_seconds']:.0f} s): "
            f"{turn['ops_per_s']:.0f} typical turns/s, median {turn['median_us']:.0f} us, "
            f"p99 {turn['p99_us']:.0f} us.",
        ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
