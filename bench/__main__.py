"""Run the benchmark suite: ``python -m bench`` (full) or ``python -m bench --smoke``.

Prints one table per benchmark and writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from . import clients as standard_clients
from . import distributed, overhead, polling, scale, throughput
from ._common import RESULTS, table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long version, for CI")
    parser.add_argument(
        "--only",
        default="clients,polling,distributed,throughput,scale,overhead",
        help="comma-separated benchmarks to run (default: all)",
    )
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "smoke": args.smoke}
    started = time.monotonic()

    if "clients" in chosen:
        seconds = 1.0 if args.smoke else 5.0
        print(f"standard clients: one {seconds:g} s job each", flush=True)
        rows = standard_clients.run(seconds)
        print(table(rows, standard_clients.COLUMNS) + "\n", flush=True)
        (RESULTS / "clients.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    if "polling" in chosen:
        count, clients = (12, 4) if args.smoke else (200, 50)
        print(f"polling strategies: {count} operations, {clients} concurrent clients", flush=True)
        rows = polling.run(count, clients, smoke=args.smoke)
        print(table(rows, polling.COLUMNS), flush=True)
        (RESULTS / "polling.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    missing = distributed.missing_services() if "distributed" in chosen else []
    if missing:
        print(f"\ndistributed: skipped, needs {', '.join(missing)} on 127.0.0.1", flush=True)
    elif "distributed" in chosen:
        count, clients = (12, 4) if args.smoke else (200, 50)
        print(f"\ndistributed: {count} operations, {clients} clients, 2 instances + 1 worker")
        rows = distributed.run(count, clients, smoke=args.smoke)
        print(table(rows, polling.COLUMNS), flush=True)
        (RESULTS / "distributed.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    if "throughput" in chosen:
        seconds, rounds = (0.5, 2) if args.smoke else (1.5, 7)
        print(
            f"\nthroughput: one server process per app, {rounds} rounds of "
            f"{seconds:g} s per path (medians)",
            flush=True,
        )
        rows = throughput.run(seconds, rounds)
        print(table(rows, throughput.COLUMNS), flush=True)
        (RESULTS / "throughput.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    if "scale" in chosen:
        held, stored = (500, 2_000) if args.smoke else (10_000, 100_000)
        print(f"\nscale: {held} held polls; lookups among {stored} stored operations", flush=True)
        rows, lookup = scale.run(held, stored)
        print(table(rows, scale.HELD_COLUMNS), flush=True)
        print(table([lookup], scale.LOOKUP_COLUMNS), flush=True)
        (RESULTS / "scale.json").write_text(
            json.dumps({**meta, "held": rows, "lookup": lookup}, indent=2)
        )

    if "overhead" in chosen:
        rounds, requests = (3, 100) if args.smoke else (9, 1000)
        print(f"\nclient overhead on non-polling responses: {rounds} rounds", flush=True)
        rows = overhead.run(rounds, requests)
        print(table(rows, overhead.COLUMNS), flush=True)
        (RESULTS / "overhead.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    print(f"\nsuite finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
