"""`parley` on the command line: run the platforms, chat in the terminal, list models, check the setup.

This is the composition root: the one place that knows both the engine and the platform adapters, and it
imports an adapter only when its platform is configured. Everything else is imported once the command
line has been read, and only what the command needs, so `parley --help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    from aiohttp import web

    from bot.catalog import ModelCatalog
    from bot.config import Settings
    from bot.platform import Platform
    from bot.settings_loader import Loaded

log = logging.getLogger(__name__)

NO_PLATFORM = """No chat platform is configured, so there is nothing to start.
Set one of these in .env (see .env.example) or the environment:
  DISCORD_TOKEN=...                       for Discord
  SLACK_BOT_TOKEN=... and SLACK_APP_TOKEN=...      for Slack in Socket Mode
  SLACK_BOT_TOKEN=... and SLACK_SIGNING_SECRET=... for Slack over HTTP (events at /slack/events on PORT)
Meanwhile you can talk to Parley in this terminal: parley chat"""

NO_PROVIDER = (
    "No LLM provider is configured: set OPENROUTER_API_KEY (or OPENAI_API_KEY, ANTHROPIC_API_KEY, "
    "OLLAMA_BASE_URL, or a [providers.NAME] table in parley.toml)."
)


SETTINGS_HELP = """\
Settings come from environment variables, then .env, then parley.toml (the first that sets a value
wins). .env and parley.toml are read from PARLEY_HOME, by default the working directory, which also
holds the SQLite database (data/parley.db); PARLEY_CONFIG names another TOML file. Every setting is
in .env.example and in the settings tables of README.md (Configuration, Discord, Slack, Web search).
`parley check` tests them without starting anything."""

USAGE_BY = ("model", "person", "channel")  # the keys of bot.usage.BY_COLUMNS, without importing it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley",
        description="LLMs in Slack, Discord and your terminal.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show Parley's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser(
        "run",
        help="start the configured Discord and Slack adapters",
        description="Start Discord when DISCORD_TOKEN is set and Slack when SLACK_BOT_TOKEN is.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N instances in N processes on one PostgreSQL (Slack over HTTP: worker K on PORT+K)",
    )
    chat = sub.add_parser("chat", help="talk to Parley in this terminal (reads lines from a pipe too)")
    chat.add_argument("--channel", default="default", help="conversation to use; memory is kept per channel")
    models = sub.add_parser("models", help="list the models the configured providers offer")
    models.add_argument("filter", nargs="?", default="", help="only names containing this text")
    sub.add_parser(
        "check",
        help="check settings, database, providers, models and platform tokens",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usage = sub.add_parser("usage", help="tokens and cost by model, person or channel")
    usage.add_argument("--since", help="a date, YYYY-MM-DD (UTC); by default the 1st of this month")
    usage.add_argument("--by", choices=USAGE_BY, default="model", help="what to sum by (model)")
    usage.add_argument("--csv", action="store_true", help="comma-separated values, with a header row")
    database = sub.add_parser("db", help="the database schema: its revision, and migrating it")
    database_sub = database.add_subparsers(dest="db_command", required=True)
    database_sub.add_parser(
        "upgrade", help="migrate the schema to this version's newest revision (parley run does it at start)"
    )
    database_sub.add_parser("current", help="show the schema's revision; exit 1 when it is behind")
    discord = sub.add_parser("discord", help="Discord tools")
    discord_sub = discord.add_subparsers(dest="discord_command", required=True)
    sync = discord_sub.add_parser("sync", help="register the slash commands now")
    sync.add_argument("--guild", type=int, help="a server id: commands appear there at once")
    return parser


class _Version(argparse.Action):
    """--version, reading the installed version only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"parley {_version()}")  # on standard output, as argparse's own version action does
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import asyncio

    from bot.config import ConfigError, SetupError
    from bot.database_url import describe_database
    from bot.logs import configure_logging
    from bot.settings_loader import load_settings

    try:
        loaded = load_settings()
    except ConfigError as error:
        for warning in error.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    settings = loaded.settings
    configure_logging(settings, quiet=args.command == "chat")
    if args.command != "check":  # check reports these among its findings
        for warning in loaded.warnings:
            log.warning(warning)
    loop_name, loop_factory = event_loop() if args.command == "run" else ("asyncio", None)
    if args.command in ("run", "chat", "discord"):
        where = describe_database(settings.database_url)
        log.info(
            "Parley %s: settings from %s; memory in %s; event loop %s",
            _version(),
            loaded.locations.describe(),
            where,
            loop_name,
        )
    commands: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
        "run": run,
        "chat": chat,
        "models": list_models,
        "discord": discord_sync,
        "usage": usage_report,
        "db": database_schema,
    }
    try:
        if args.command == "check":
            return asyncio.run(check(loaded))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(commands[args.command](settings, args))
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def event_loop() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """uvloop's loop when it is installed (`pip install -e '.[uvloop]'`), else asyncio's own (None).

    With a thousand replies streaming, the loop's own share of each token (polling sockets, pausing and
    resuming their reads) is a good part of the work, and uvloop does it in C."""
    try:
        import uvloop
    except ImportError:
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parley")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


async def run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import importlib
    import signal

    from bot import runtime, workers
    from bot.config import SetupError
    from bot.engine import Engine
    from bot.instances import Instance
    from bot.leader import LeadingPlatform
    from bot.metrics import serve as serve_metrics
    from bot.scheduler import Scheduler

    refused = workers.refusal(settings, args.workers)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    adapters = [
        name
        for name, token in (
            ("adapters.discord", settings.discord_token),
            ("adapters.slack", settings.slack_bot_token),
        )
        if token
    ]
    if not adapters:
        print(NO_PLATFORM, file=sys.stderr)
        return 2
    if args.workers > 1:
        return await workers.supervise(settings, args.workers)
    if not settings.provider_settings():
        print(f"warning: {NO_PROVIDER}", file=sys.stderr)
    from skills import builtin

    engine = await Engine.create(settings, skills=builtin(settings))
    instance = Instance(engine)  # its heartbeat, and the leader's chores when it leads
    platforms = [importlib.import_module(name).platform(engine, settings) for name in adapters]
    for platform in platforms:
        engine.register(platform)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    started: list[Platform] = []
    operators: web.AppRunner | None = None  # /healthz and /metrics on METRICS_PORT
    scheduler = Scheduler(engine)
    try:
        if settings.metrics_port:
            operators = await serve_metrics(
                engine.store, engine.metrics, engine.health, settings.metrics_port
            )
        for platform in platforms:  # one refusing its setup stops the others
            await platform.start()
            started.append(platform)
            engine.health.up(platform.name)
        for platform in platforms:
            await engine.recover(platform.name)
        runtime.settle()  # started: what start-up made stays out of the collector's way
        instance.leader.add_role(scheduler.start, scheduler.stop)  # schedules run on the leader only
        for platform in platforms:  # and a platform's work done once for all (Discord's command sync)
            if isinstance(platform, LeadingPlatform):
                instance.leader.add_role(platform.lead, platform.step_down)
        instance.start()
        return await _until_stopped(stopping, platforms)
    except SetupError as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 1
    finally:
        for platform in started:
            engine.health.down(platform.name)
        if operators is not None:
            await operators.cleanup()
        await instance.stop_leading()  # the scheduler stops with the lead; a run due now waits in the inbox
        await engine.drain(settings.shutdown_grace_seconds)
        await instance.stop()
        for platform in reversed(started):
            await platform.stop()
        await engine.aclose()


async def _until_stopped(stopping: asyncio.Event, platforms: list[Platform]) -> int:
    """Serve until a signal (0), or until a platform stops on its own (1: it said why in the log)."""
    import asyncio

    signalled = asyncio.ensure_future(stopping.wait())
    closed = {asyncio.ensure_future(platform.wait_closed()): platform for platform in platforms}
    try:
        done, _ = await asyncio.wait({signalled, *closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (signalled, *closed):
            waiter.cancel()
    if signalled in done:
        print("Parley stopped.", file=sys.stderr)
        return 0
    gone = ", ".join(closed[waiter].name for waiter in done if waiter in closed)
    print(f"error: {gone} stopped on its own (see the log above); Parley stops with it", file=sys.stderr)
    return 1


async def chat(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from adapters.console import Chat
    from bot.engine import Engine
    from bot.instances import Instance

    if not settings.provider_settings():
        print(NO_PROVIDER, file=sys.stderr)
        return 2
    from skills import builtin

    # The terminal's input history and log live beside the SQLite file, else in ./data.
    database = make_url(settings.database_url)
    on_disk = database.get_backend_name() == "sqlite" and database.database not in (None, "", ":memory:")
    session = Chat(args.channel, Path(str(database.database)).parent if on_disk else Path("data"))
    engine = await Engine.create(settings, skills=builtin(settings))
    instance = Instance(engine)  # alive to the other instances on PostgreSQL while it runs
    instance.start(lead=False)
    try:
        return await session.run(engine)
    finally:
        await instance.stop()
        await engine.aclose()


async def usage_report(settings: Settings, args: argparse.Namespace) -> int:
    """`parley usage`: what every platform used since a date, for operators."""
    import time

    from bot.store import Store
    from bot.usage import BadPeriod, operator_report, parse_date, since

    try:
        start = parse_date(args.since).timestamp() if args.since else since([], time.time())[0]
    except BadPeriod as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    store = await Store.open(settings.database_url)
    try:
        print(await operator_report(store, start, args.by, args.csv), end="" if args.csv else "\n")
    finally:
        await store.close()
    return 0


async def list_models(settings: Settings, args: argparse.Namespace) -> int:
    from bot.catalog import ModelCatalog

    catalog = ModelCatalog.from_settings(settings)
    if not catalog.providers:
        print(NO_PROVIDER, file=sys.stderr)
        return 2
    try:
        names, failures = await catalog.all_names()
    finally:
        await catalog.aclose()
    for name in sorted(n for n in names if args.filter.lower() in n.lower()):
        print(name)
    for provider, error in failures.items():
        print(f"{provider}: {error.user_message()}", file=sys.stderr)
    return 1 if failures else 0


async def check(loaded: Loaded) -> int:
    """One line per finding, `ok`, `note` or `problem`; exits 1 when anything needs fixing."""
    import importlib

    from bot.catalog import ModelCatalog
    from bot.config import SetupError
    from bot.database_url import describe_database
    from bot.providers.base import ProviderError
    from bot.store import Store

    settings = loaded.settings
    problems = 0

    def report(ok: bool | None, what: str) -> None:
        nonlocal problems
        problems += ok is False
        print(f"{'note   ' if ok is None else 'ok     ' if ok else 'problem'}  {what}")

    report(True, f"settings from {loaded.locations.describe()}")
    for warning in loaded.warnings:
        report(False, warning)
    try:
        store = await Store.open(settings.database_url)
        await store.close()
        report(True, f"database: {describe_database(settings.database_url)}")
    except SetupError as error:
        report(False, f"database: {error}")
    catalog = ModelCatalog.from_settings(settings)
    if not catalog.providers:
        report(False, NO_PROVIDER)
    try:
        for name in catalog.providers:
            try:
                listed = await catalog.listing(name)
                report(True, f"provider {name}: reachable, {len(listed)} models")
            except ProviderError as error:
                report(False, f"provider {name}: {error.user_message()}")
        if catalog.providers:
            for label, names in [("default model", [settings.default_model]), *_fallback_chains(settings)]:
                report(*await _models_found(catalog, label, names))
    finally:
        await catalog.aclose()
    for platform, configured, module, hint in (
        ("Discord", settings.discord_token, "adapters.discord.check", "DISCORD_TOKEN"),
        ("Slack", settings.slack_bot_token, "adapters.slack.check", "SLACK_BOT_TOKEN"),
    ):
        if not configured:
            report(None, f"{platform}: not configured (set {hint} to use it)")
            continue
        for ok, finding in await importlib.import_module(module).check(settings):
            report(ok, finding)
    return 1 if problems else 0


def _fallback_chains(settings: Settings) -> list[tuple[str, list[str]]]:
    return [(f"fallbacks for {model}", [model, *chain]) for model, chain in settings.fallbacks.items()]


async def _models_found(catalog: ModelCatalog, label: str, names: list[str]) -> tuple[bool, str]:
    """Whether every name is a model the providers offer; bare ids shown with the model they mean."""
    from bot.catalog import UnknownModelError

    shown, problems = [], []
    for name in names:
        try:
            full, note = await catalog.canonical(name)
        except UnknownModelError as error:
            problems.append(str(error))
            continue
        shown.append(name if full == name else f"{name} ({full})")
        if note:
            problems.append(f"{name} {note}")
    if problems:
        return False, f"{label}: {' '.join(problems)}"
    return True, f"{label}: {' → '.join(shown)}" if len(shown) > 1 else f"{label} {shown[0]}"


async def database_schema(settings: Settings, args: argparse.Namespace) -> int:
    """`parley db upgrade` / `parley db current`, for operators who migrate before starting instances."""
    from bot import migrations
    from bot.database_url import describe_database
    from bot.store import Store

    url, head = settings.database_url, migrations.head()
    where = describe_database(url)
    before = await Store.revision(url)
    if args.db_command == "upgrade":
        store = await Store.open(url)  # opening migrates, under the lock instances take at start
        await store.close()
        if before == head:
            print(f"The schema of {where} is already at revision {head}.")
        else:
            print(f"The schema of {where} went from {_revision(before)} to revision {head}.")
        return 0
    if before == head:
        print(f"The schema of {where} is at revision {head}, the newest this version knows.")
        return 0
    print(
        f"The schema of {where} is at {_revision(before)}; this version needs revision {head}: "
        "run `parley db upgrade` (or start Parley, which migrates)."
    )
    return 1


def _revision(revision: str | None) -> str:
    return "no Parley schema yet" if revision is None else f"revision {revision}"


async def discord_sync(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.discord_token:
        print("Set DISCORD_TOKEN first.", file=sys.stderr)
        return 2
    import importlib

    from bot.config import SetupError
    from skills import builtin

    adapter = importlib.import_module("adapters.discord")

    try:  # the skills' commands (/web, /read) are slash commands too
        print(await adapter.sync_commands(settings, args.guild, builtin(settings)))
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
