"""Run the benchmark suite: ``python -m bench`` (full) or ``python -m bench --smoke``.

Prints one table per benchmark and writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from . import budgets, charts, distributed, overhead, polling, scale, throughput
from . import clients as standard_clients
from ._common import RESULTS, table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="a minute-long version, for CI")
    parser.add_argument(
        "--charts",
        action="store_true",
        help="only redraw docs/charts/*.svg from bench/results/*.json (a full run draws them)",
    )
    parser.add_argument(
        "--only",
        default="clients,defaults,polling,distributed,throughput,scale,overhead",
        help="comma-separated benchmarks to run (default: all)",
    )
    group = parser.add_argument_group(
        "budgets", "standard clients x job lengths (--only budgets; not in the default run)"
    )
    group.add_argument(
        "--jobs",
        help="comma-separated job lengths in seconds (default 10,60,300,1800; "
        f"compressed: {','.join(f'{s:g}' for s in budgets.COMPRESSED_JOBS)})",
    )
    group.add_argument("--clients", help="comma-separated client names (default: all installed)")
    group.add_argument(
        "--progress",
        choices=["both", "yes", "no"],
        default="both",
        help="work that reports progress, work that does not, or both (default)",
    )
    group.add_argument(
        "--max-hold",
        type=float,
        help="cap on holds, passed to repoll serve --max-hold (or the app, for servers "
        f"without the option); compressed default {budgets.COMPRESSED_MAX_HOLD:g}",
    )
    group.add_argument(
        "--compressed",
        action="store_true",
        help="time-compressed: a small max hold and short jobs (implied by --smoke)",
    )
    group.add_argument(
        "--parallel",
        type=int,
        default=18,
        help="runs at once, each with its own server (default 18)",
    )
    args = parser.parse_args()
    if args.charts:
        for path in charts.draw(smoke=False):
            print(f"drew {path}")
        return
    chosen = set(args.only.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d"),
    }
    started = time.monotonic()

    if "clients" in chosen:
        seconds = 1.0 if args.smoke else 5.0
        print(f"standard clients: one {seconds:g} s job each", flush=True)
        rows = standard_clients.run(seconds)
        print(table(rows, standard_clients.COLUMNS) + "\n", flush=True)
        (RESULTS / "clients.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    if "budgets" in chosen:
        compressed = args.compressed or args.smoke
        jobs = (
            [float(s) for s in args.jobs.split(",")]
            if args.jobs
            else list(budgets.COMPRESSED_JOBS if compressed else budgets.FULL_JOBS)
        )
        max_hold = args.max_hold
        if max_hold is None and compressed:
            max_hold = budgets.COMPRESSED_MAX_HOLD
        names = args.clients.split(",") if args.clients else budgets.available_clients()
        progress = {"both": (False, True), "yes": (True,), "no": (False,)}[args.progress]
        print(
            f"budgets: {len(names)} clients x jobs of {', '.join(f'{s:g}' for s in jobs)} s "
            f"x progress {args.progress}; max hold "
            f"{'server default' if max_hold is None else f'{max_hold:g} s'}; "
            f"{args.parallel} at once",
            flush=True,
        )
        print(budgets.legend(names), flush=True)
        rows = budgets.run(
            jobs,
            clients=names,
            progress=progress,
            max_hold=max_hold,
            parallel=args.parallel,
            on_row=lambda row: print(
                f"  done: {row['client']}, {row['job_seconds']:g} s, progress "
                f"{row['progress']}: {row['end']} {row['failure']}",
                flush=True,
            ),
        )
        if rows:
            print(f"server: {rows[0]['repoll']}; max hold: {rows[0]['max_hold']}")
        print(table(rows, budgets.COLUMNS) + "\n", flush=True)
        for row in rows:
            if row["message"] and row["ok"] != "yes":
                print(f"  {row['client']}, {row['job_seconds']:g} s: {row['message']}")
        (RESULTS / "budgets.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    if "defaults" in chosen:
        count, clients = (8, 4) if args.smoke else (40, 20)
        print(
            f"the client's defaults: {count} jobs of 0.2-8 s, {clients} at a time, "
            "beside fixed 1 s polling",
            flush=True,
        )
        rows = polling.run_defaults(count, clients, smoke=args.smoke)
        print(table(rows, polling.COLUMNS) + "\n", flush=True)
        (RESULTS / "defaults.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    if "polling" in chosen:
        count, clients = (8, 4) if args.smoke else (200, 50)
        print(f"polling strategies: {count} operations, {clients} concurrent clients", flush=True)
        rows = polling.run(count, clients, smoke=args.smoke)
        print(table(rows, polling.COLUMNS), flush=True)
        (RESULTS / "polling.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))

    missing = distributed.missing_services() if "distributed" in chosen else []
    if missing:
        print(f"\ndistributed: skipped, needs {', '.join(missing)} on 127.0.0.1", flush=True)
    elif "distributed" in chosen:
        count, clients = (8, 4) if args.smoke else (200, 50)
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

    if not args.smoke:
        for path in charts.draw(smoke=False):
            print(f"drew {path}")
    print(f"\nsuite finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
