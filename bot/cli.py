"""`parley` on the command line: run the platforms, chat in the terminal, list models, check the setup.

This is the composition root: the one place that knows both the engine and the platform adapters, and it
imports an adapter only when its platform is configured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from bot.catalog import ModelCatalog, UnknownModelError
from bot.config import Settings, SetupError
from bot.engine import Engine
from bot.logs import configure_logging
from bot.providers.base import ProviderError
from bot.store import Store

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="LLMs in Slack, Discord and your terminal.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the configured Discord and Slack adapters")
    chat = sub.add_parser("chat", help="talk to Parley in this terminal (reads lines from a pipe too)")
    chat.add_argument("--channel", default="default", help="conversation to use; memory is kept per channel")
    models = sub.add_parser("models", help="list the models the configured providers offer")
    models.add_argument("filter", nargs="?", default="", help="only names containing this text")
    sub.add_parser("check", help="validate configuration, database and providers")
    discord = sub.add_parser("discord", help="Discord tools")
    discord_sub = discord.add_subparsers(dest="discord_command", required=True)
    sync = discord_sub.add_parser("sync", help="register the slash commands now")
    sync.add_argument("--guild", type=int, help="a server id: commands appear there at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "settings"
            print(f"config: {where}: {problem['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    commands: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
        "run": run,
        "chat": chat,
        "models": list_models,
        "check": check,
        "discord": discord_sync,
    }
    try:
        return asyncio.run(commands[args.command](settings, args))
    except KeyboardInterrupt:
        return 130


async def run(settings: Settings, args: argparse.Namespace) -> int:
    platforms = []
    if settings.discord_token:
        platforms.append("adapters.discord")
    if settings.slack_bot_token:
        platforms.append("adapters.slack")
    if not platforms:
        print(NO_PLATFORM, file=sys.stderr)
        return 2
    if not settings.provider_settings():
        print(f"warning: {NO_PROVIDER}", file=sys.stderr)
    engine = await Engine.create(settings)
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, main_task.cancel)  # type: ignore[union-attr]
    code = 0
    try:
        try:
            async with asyncio.TaskGroup() as platforms_running:  # one refusing its setup stops the others
                for name in platforms:
                    platforms_running.create_task(importlib.import_module(name).serve(engine, settings))
        except* SetupError as refused:
            for error in refused.exceptions:
                print(f"error: {error}", file=sys.stderr)
            code = 1
    except asyncio.CancelledError:
        print("Parley stopped.", file=sys.stderr)
    finally:
        await engine.aclose()
    return code


async def chat(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.console import chat as console_chat

    if not settings.provider_settings():
        print(NO_PROVIDER, file=sys.stderr)
        return 2
    engine = await Engine.create(settings)
    try:
        await console_chat(engine, args.channel)
    finally:
        await engine.aclose()
    return 0


async def list_models(settings: Settings, args: argparse.Namespace) -> int:
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


async def check(settings: Settings, args: argparse.Namespace) -> int:
    """One line per finding, `ok` or `problem`; exits 1 when anything needs fixing."""
    problems = 0

    def report(ok: bool, what: str) -> None:
        nonlocal problems
        problems += not ok
        print(f"{'ok     ' if ok else 'problem'}  {what}")

    report(True, "configuration loaded")
    try:
        store = await Store.open(settings.database_url)
        await store.ping()
        await store.close()
        report(True, f"database {settings.database_url.split('@')[-1]}")
    except Exception as error:
        report(False, f"database: {type(error).__name__}: {error}")
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
            try:
                model, note = await catalog.canonical(settings.default_model)
                report(note is None, f"default model {model}{' ' + note if note else ''}")
            except UnknownModelError as error:
                report(False, f"default model: {error}")
    finally:
        await catalog.aclose()
    platforms = {"Discord": settings.discord_token, "Slack": settings.slack_bot_token}
    for platform, token in platforms.items():
        print(
            f"{'ok     ' if token else 'note   '}  {platform}: {'configured' if token else 'not configured'}"
        )
    if settings.slack_bot_token and not (settings.slack_app_token or settings.slack_signing_secret):
        report(False, "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)")
    return 1 if problems else 0


async def discord_sync(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.discord_token:
        print("Set DISCORD_TOKEN first.", file=sys.stderr)
        return 2
    adapter = importlib.import_module("adapters.discord")
    try:
        print(await adapter.sync_commands(settings, args.guild))
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
