"""`tui-llm watch RUN_DIR`: the dashboard (or the headless lines) of a run another process trains.

    tui-llm watch runs/x              the dashboard: p pauses the run, s samples, c saves, q leaves it running
    tui-llm watch runs/x --no-ui      the lines a headless run prints, following metrics.jsonl (over ssh, in scripts)
    tui-llm watch runs/x runs/y       compare: runs/x live, runs/y's curves drawn over its chart (o hides them)
    tui-llm watch runs/x --reference ref/metrics.csv    a fixed reference curve too

The watcher reads the run directory's files and steers the run through its control channel
(engine/run/channel.py); quitting the watcher never stops the run. A finished run shows its history.
"""

from __future__ import annotations

import signal
import sys

from tui_llm.cli.headless import HeadlessPrinter, safe_text
from tui_llm.cli.parser import EXIT_OK, Parser, UsageError


def watch_parser():
    p = Parser(prog="tui-llm watch", description="Watch and steer a run that another process trains (or a finished one).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directory (several: the first is watched, the others are drawn over its chart)")
    p.add_argument("--reference", metavar="FILE",
                   help="a fixed reference curve: a metrics.jsonl, or a CSV with step and loss columns (metrics.csv)")
    p.add_argument("--no-ui", action="store_true", help="print the lines of a headless run instead of the dashboard")
    p.add_argument("--stale-after", type=float, default=30.0,
                   help="call a running run stale after this many seconds without an event (default 30, "
                        "at least five step times)")
    return p


def cmd_watch(argv) -> int:
    from tui_llm.engine.run.watcher import RunWatcher

    args = watch_parser().parse_args(argv)
    if not args.stale_after > 0:
        raise UsageError(f"--stale-after must be a positive number of seconds, got {args.stale_after:g}")
    watchers = [RunWatcher(d, stale_after=args.stale_after) for d in args.run_dirs]  # each checked: one line, exit 2
    watcher = watchers[0]
    if args.no_ui and (len(watchers) > 1 or args.reference):
        print(f"watching {safe_text(args.run_dirs[0])}; the other runs and --reference are drawn by the dashboard only",
              file=sys.stderr)
    if not args.no_ui:
        from tui_llm.widgets.overlays import load_overlays

        overlays, live_name = load_overlays(args.run_dirs[0], args.run_dirs[1:], args.reference)
    if args.no_ui:
        previous = {s: signal.signal(s, lambda *_: watcher.stop()) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            watcher.run(HeadlessPrinter())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    else:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise UsageError("the terminal UI needs a terminal; use tui-llm watch --no-ui")
        from tui_llm.app import run_app

        run_app(watcher, watcher.history(), watching=True, overlays=overlays, live_name=live_name)
    if watcher.live:
        print(f"stopped watching {watcher.run_dir.path}; the run goes on", file=sys.stderr)
    return EXIT_OK
