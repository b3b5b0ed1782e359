"""``nas dashboard RUN_DIR|SWEEP_DIR``: watch and compare runs in optuna-dashboard, on 127.0.0.1 only.

It serves the run's Optuna copy (``trials.journal``, see :mod:`nas.optuna_mirror`; a sweep's one journal
holds a study per cell), which a live run keeps writing, so the pages follow a search as it goes.
"""

from __future__ import annotations

import argparse
import signal
import socketserver
import sys
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nas.cli import UsageError

HOST = "127.0.0.1"
"""Loopback only: the dashboard can rename and delete studies, so it must not be reachable from elsewhere."""

INSTALL = 'pip install "zcnas[dashboard]"'


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the sub-command."""
    p = sub.add_parser("dashboard", help="browse runs or a sweep in optuna-dashboard (127.0.0.1)",
                       description="Serve optuna-dashboard on 127.0.0.1 for a run directory (one study) or a "
                                   "sweep directory (one study per cell): history, Pareto front, parallel "
                                   "coordinates, importances, trial table. Ctrl-C stops it. Needs the "
                                   f"optional dependency: {INSTALL}.")
    p.add_argument("path", metavar="RUN_DIR|SWEEP_DIR")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: any free port)")
    p.set_defaults(func=run)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server answering each request in its own thread (a dashboard page fetches several at once)."""

    daemon_threads = True  # a browser's open connection must not keep Ctrl-C waiting
    block_on_close = False


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per request: the dashboard polls every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def storage_path(path: Path) -> tuple[Path, str | None]:
    """The journal to serve for a run or sweep directory, and the run's study name (``None`` for a sweep)."""
    from nas.optuna_mirror import STORAGE_NAME, export, is_sweep, storage_location

    if is_sweep(path):
        journal, study = path / STORAGE_NAME, None
    elif (path / "run.sqlite").is_file():
        journal, study = storage_location(path)
    else:
        raise FileNotFoundError(f"{path}: neither a run directory (run.sqlite) nor a sweep directory (sweep.json)")
    if not journal.is_file():  # a run from before the Optuna copy existed
        print(f"no Optuna storage in {path} yet: writing it (nas runs export-optuna {path})", flush=True)
        if not export(path):
            raise FileNotFoundError(f"{path}: a sweep directory without any run yet")
    return journal, study


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C (or SIGTERM); exit 0 when stopped."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError(f"nas dashboard needs optuna-dashboard, an optional dependency: {INSTALL}") from None
    from nas.optuna_mirror import open_storage

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    path = Path(args.path)
    journal, study = storage_path(path)
    storage = open_storage(journal)
    app = optuna_dashboard.wsgi(storage)
    try:
        server = make_server(HOST, args.port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as err:
        raise UsageError(f"cannot listen on {HOST}:{args.port} ({err.strerror}); choose another --port") from None
    # Raise KeyboardInterrupt on SIGINT and SIGTERM even when started in the background, where a shell
    # leaves SIGINT ignored; serve_forever polls twice a second, so either stops it at once.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    port = server.server_address[1]
    url = f"http://{HOST}:{port}/dashboard/"
    names = [s.study_name for s in storage.get_all_studies()]
    print(f"optuna-dashboard for {path} ({len(names)} {'study' if len(names) == 1 else 'studies'}, "
          f"{journal}): {url}", flush=True)
    if study is not None and study in names:
        print(f"this run: {url}studies/{storage.get_study_id_from_name(study)}", flush=True)
    print("Ctrl-C stops it", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print("nas dashboard: stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()
    return 0
