"""Command line: `llmrouter [serve] [CONFIG]`, `llmrouter check [CONFIG]`, `llmrouter init`, and the live views."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from llmrouter import __version__

COMMANDS = ("serve", "check", "init", "reload", "replay", "watch", "tui")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Exit statuses (README.md): 0 stopped normally, 2 a config problem, this one
# when the listening socket cannot be had (port in use, address not local).
LISTEN_FAILED = 3


def event_loop(environ: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """uvloop when it is installed (the `fast` extra), else asyncio's own
    loop; LLMROUTER_LOOP=asyncio keeps asyncio's (for comparisons)."""
    if environ.get("LLMROUTER_LOOP", "").lower() != "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            return "uvloop", {"use_uvloop": True}
    return "asyncio", {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmrouter",
        description="A fast, local-first LLM router. With no command, `serve` is assumed: "
        "`llmrouter [CONFIG]` serves the given config (default ./config.toml, else the built-in default).",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the versions this runs with, and from where")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=os.environ.get("LLMROUTER_LOG_LEVEL", "info").lower(),
        help="diagnostics shown on stderr (default: info, or $LLMROUTER_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the router (the default command)")
    serve.add_argument("config", nargs="?", help="config file (default ./config.toml, else the built-in default)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--pid-file", help="write the process id here (for `llmrouter reload`); removed on exit")
    check = sub.add_parser("check", help="validate a config and print what it means")
    check.add_argument("config", nargs="?", help="config file (default ./config.toml, else the built-in default)")
    init = sub.add_parser("init", help="write a config for what runs on this host (asks 127.0.0.1 only)")
    init.add_argument("path", nargs="?", help="where to write it (default ./config.toml)")
    init.add_argument("--force", action="store_true", help="replace the file if it exists")
    init.add_argument("--port", action="append", default=[], metavar="SERVER=PORT",
                      help="look for a local server on another port: llama.cpp, ollama, vllm or lmstudio (repeatable)")
    reload = sub.add_parser("reload", help="make a running router re-read its config (sends SIGHUP)")
    reload.add_argument("--pid-file", default="llmrouter.pid", help="the file `serve --pid-file` wrote (default ./llmrouter.pid)")
    replay = sub.add_parser("replay", help="what a config would have done with the requests of a JSONL log")
    replay.add_argument("log", help="a request log (logging.path)")
    replay.add_argument("config", nargs="?", help="config file (default: the one `serve` would use)")
    replay.add_argument("--json", action="store_true", help="one JSON object per request instead of the summary")
    replay.add_argument("--seed", type=int, help="seed for `random` rules (repeatable results)")
    _add_view_parsers(sub)
    return parser


# The views' defaults, written out so that building the parser (for `serve`
# too) imports neither watch nor tui; tests/test_footprint.py checks they match.
DEFAULT_URL = "http://127.0.0.1:8090"
API_KEY_ENV = "LLMROUTER_API_KEY"
DEFAULT_MODEL = "llama3.1:8b"


def _add_view_parsers(sub) -> None:
    """`watch` and `tui`: clients of a running router's event feed (they read no config)."""
    url_help = f"the router's address (default {DEFAULT_URL}); sends ${API_KEY_ENV} as the key when set"
    watch = sub.add_parser("watch", help="print every request's lifecycle as it happens")
    watch.add_argument("url", nargs="?", default=DEFAULT_URL, help=url_help)
    colors = watch.add_mutually_exclusive_group()
    colors.add_argument("--color", dest="color", action="store_const", const=True, help="colours even when not on a terminal")
    colors.add_argument("--no-color", dest="color", action="store_const", const=False, help="never colour")
    watch.add_argument("--json", action="store_true", help="print each event as one line of JSON")
    watch.add_argument("--stats", action="store_true", help="also print each provider's live measurements as they change")
    tui = sub.add_parser("tui", help="full-screen live view with stats and a chat client")
    tui.add_argument("url", nargs="?", default=DEFAULT_URL, help=url_help)
    tui.add_argument("--model", default=DEFAULT_MODEL, help=f"the chat's first model (default {DEFAULT_MODEL}; `:model NAME` changes it)")


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        print(version_text())
        parser.exit()


def version_text() -> str:
    """llmrouter's version, the dependencies it imports, Python, and whether it
    runs from a single file (scripts/build_pyz.py) or an installed package."""
    import zipimport
    from importlib import metadata

    import llmrouter

    names = ["h11", "anyio", "httpcore", "certifi"] + (["tomli"] if sys.version_info < (3, 11) else [])
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not found)")
    package = os.path.dirname(llmrouter.__file__)
    if isinstance(llmrouter.__spec__.loader, zipimport.zipimporter):
        origin = f"single file {os.path.dirname(package)} (zipapp)"
    else:
        origin = f"package {package}"
    return "\n".join([
        f"llmrouter {__version__}",
        ", ".join(versions),
        f"Python {sys.version.split()[0]} ({sys.executable})",
        f"running from the {origin}",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `llmrouter CONFIG` (the original's form) means `llmrouter serve CONFIG`.
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and argv.index(first) == _first_positional(argv):
        argv.insert(argv.index(first), "serve")
    elif first is None and not any(a in ("-h", "--help", "--version") for a in argv):
        argv.append("serve")
    args = build_parser().parse_args(argv)
    if args.log_level not in LOG_LEVELS:
        print(f"llmrouter: invalid log level {args.log_level!r} (choose from {', '.join(LOG_LEVELS)})", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="llmrouter: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpcore").setLevel(logging.DEBUG if args.log_level == "debug" else logging.WARNING)

    from llmrouter import dotenv

    real_environ = dict(os.environ)  # before .env: a reload re-reads .env on top of this
    try:
        loaded = dotenv.load_dotenv(".env")
    except OSError as exc:
        print(f"llmrouter: cannot read .env: {exc}", file=sys.stderr)
        return 2
    if loaded:
        logging.getLogger("llmrouter").info("loaded %d variable(s) from .env: %s", len(loaded), ", ".join(loaded))
    if args.command == "check":
        return check(args.config)
    if args.command == "init":
        from llmrouter import init

        return init.run(args.path, args.force, args.port)
    if args.command == "reload":
        from llmrouter import reload

        problem = reload.send_signal(args.pid_file)
        if problem:
            print(f"llmrouter: {problem}", file=sys.stderr)
            return 1
        print("llmrouter: reload requested; the router reports the outcome on its stderr and as a `reload` event", file=sys.stderr)
        return 0
    if args.command == "replay":
        return replay(args.log, args.config, args.json, args.seed)
    if args.command == "watch":
        from llmrouter import watch

        return watch.run(args.url, watch.use_color(args.color), args.json, stats=args.stats)
    if args.command == "tui":
        from llmrouter import tui

        return tui.run(args.url, args.model)
    return serve(args.config, args.host, args.port, args.pid_file, real_environ)


def _first_positional(argv: list[str]) -> int:
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--log-level":
            skip = True
            continue
        if not arg.startswith("-"):
            return i
    return -1


def _load(path: str | None):
    from llmrouter import config, errors

    try:
        return config.load(path, environ=os.environ)
    except errors.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"llmrouter: the configuration has {len(exc.problems)} problem(s); nothing was started", file=sys.stderr)
        return None


def _log_writable(cfg) -> bool:
    """A log path that cannot be opened for appending is a config error,
    found before binding; a log that fails later only warns (requests go on)."""
    if not cfg.logging.enabled:
        return True
    from llmrouter import reqlog

    problem = reqlog.check_writable(cfg.logging.path)
    if problem:
        print(f"{cfg.source}: logging.path: {problem}", file=sys.stderr)
        print("llmrouter: the configuration has 1 problem(s); nothing was started", file=sys.stderr)
    return problem is None


def check(path: str | None) -> int:
    from llmrouter import config

    from llmrouter import router

    cfg = _load(path)
    if cfg is None or not _log_writable(cfg):
        return 2
    print(config.describe(cfg))
    for warning in router.check_rules(cfg):
        print(f"  - {warning}")
    return 0


def replay(log_path: str, config_path: str | None, as_json: bool, seed: int | None) -> int:
    """Reads the log and the config; the decisions are replay.py's (pure, no network)."""
    import json
    import random

    from llmrouter import replay as replaying

    cfg = _load(config_path)
    if cfg is None:
        return 2
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            report = replaying.replay(f, cfg, random.Random(seed))
    except OSError as exc:
        print(f"llmrouter: cannot read {log_path}: {exc}", file=sys.stderr)
        return 2
    for number, problem in report.malformed:
        print(f"{log_path}:{number}: skipped: {problem}", file=sys.stderr)
    if as_json:
        for row in report.replayed:
            print(json.dumps(row.to_json()))
    else:
        print(replaying.summary(report))
    return 0


def serve(path: str | None, host: str | None, port: int | None, pid_file: str | None = None, real_environ: dict[str, str] | None = None) -> int:
    from llmrouter import config, errors

    cfg = _load(path)
    if cfg is None:
        return 2
    try:
        cfg = config.override_listen(cfg, host=host, port=port)
    except errors.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if not _log_writable(cfg):
        return 2
    # Imported only now: a broken config is reported without loading the server.
    import anyio

    from llmrouter import router
    from llmrouter.app import App
    from llmrouter.reload import Reloader

    reloader = Reloader(path, host, port, os.environ if real_environ is None else real_environ)

    log = logging.getLogger("llmrouter")
    for warning in (*cfg.warnings, *router.check_rules(cfg)):
        log.warning("%s", warning)

    exit_status = 0

    async def main_task() -> None:
        nonlocal exit_status
        app = App(cfg)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, app)
            if hasattr(signal, "SIGHUP"):  # not on Windows
                tg.start_soon(reload_on_signal, app, reloader)
            try:
                bound = await tg.start(app.run)
            except OSError as exc:  # the port is taken, the address is not this machine's, ...
                host = cfg.server.host
                where = f"[{host}]:{cfg.server.port}" if ":" in host else f"{host}:{cfg.server.port}"
                # asyncio's own strerror repeats the address; a resolver error (negative errno) has only its text.
                why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
                print(f"llmrouter: cannot listen on {where}: {why} (server.host / server.port in {cfg.source})", file=sys.stderr)
                exit_status = LISTEN_FAILED
                tg.cancel_scope.cancel()
                return
            # What is built by now lives as long as the process: frozen out of
            # the collector's sight, it is not walked by every full collection
            # (a pause of about 30 ms under load, docs/performance.md).
            gc.collect()
            gc.freeze()
            url = config.server_url(cfg.server.host, bound)
            dashboard = f", dashboard {url}/dashboard" if cfg.server.dashboard else ""
            print(
                f"llmrouter {__version__} listening on {url} (config: {cfg.source}, {len(cfg.providers)} provider(s){dashboard}, {loop_name} event loop)",
                file=sys.stderr,
                flush=True,
            )
            await app.stopped.wait()
            tg.cancel_scope.cancel()

    if hasattr(signal, "SIGHUP"):
        # Until the reload handler is installed, a SIGHUP (an early `llmrouter
        # reload`) must not end the process, as its default action would.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if pid_file:
        try:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            print(f"llmrouter: cannot write the pid file: {exc}", file=sys.stderr)
            return 2
    loop_name, loop_options = event_loop(os.environ)
    try:
        anyio.run(main_task, backend_options=loop_options)
    except KeyboardInterrupt:
        pass
    finally:
        if pid_file:
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
    return exit_status


async def stop_on_signal(app) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logging.getLogger("llmrouter").info("%s: finishing in-flight requests, then stopping", signal.Signals(signum).name)
            app.shutdown()
            break


async def reload_on_signal(app, reloader) -> None:
    """SIGHUP re-reads the config, one reload at a time (nginx and HAProxy do the same)."""
    import anyio

    log = logging.getLogger("llmrouter")
    with anyio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("SIGHUP: reloading the configuration")
            try:
                await reloader(app)
            except Exception:  # a bug in a reload must not stop the router
                log.exception("reload failed; the previous configuration stays in use")

