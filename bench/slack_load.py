"""Slack end to end: N concurrent mentions across channels of one workspace, through the real Bolt app.

The loopback Slack Web API (enforcing Slack's rate tier for each method, per workspace, and
chat.postMessage per channel) and the loopback provider (which stamps its send time into every token)
each run in a process of their own, so this process's CPU is the app's alone; all three read
CLOCK_MONOTONIC.

    PYTHONPATH=. python bench/slack_load.py                           # 20 mentions in 5 channels, streams
    PYTHONPATH=. python bench/slack_load.py --mentions 20 --fallback  # chat.postMessage + chat.update
    PYTHONPATH=. python bench/slack_load.py --mentions 40             # past the stream budget
    PYTHONPATH=. python bench/slack_load.py --lone [--fallback]       # 10 replies one after another,
                                                                      # 10 tokens at 50/s each, in 10 channels
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import tempfile
import time
from typing import Any

import aiohttp
from aiohttp import web
from figures import percentile
from loopback_provider import engine_settings, start, token_times

from adapters.slack import SlackPlatform
from bot.engine import Engine
from bot.models import Message
from tests.support.loopback import serve_app
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI, SlackUser, signed_headers

SECRET = "bench-secret"
LONE_TARGET_MS = 100.0


def serve_slack(ports: multiprocessing.Queue, fallback: bool) -> None:
    async def main() -> None:
        slack = SlackAPI(users={"UB": SlackUser("UB", "Bench")})  # Slack's tiers are on by default
        if fallback:
            slack.fail["chat.startStream"] = "not_allowed_token_type"
        await slack.__aenter__()

        async def calls(_request: web.Request) -> web.Response:
            rows = [{"method": c.method, "at": c.at, "args": c.args, "ok": c.ok} for c in slack.calls]
            threads = {ts: m.thread_ts for ts, m in slack.messages.items()}
            return web.json_response({"calls": rows, "threads": threads, "throttled": slack.throttled})

        app = web.Application()
        app.router.add_get("/calls", calls)
        _runner, record_port = await serve_app(app)
        ports.put((slack.port, record_port))
        await asyncio.Event().wait()

    asyncio.run(main())


def visible_text(args: dict[str, Any]) -> str:
    text = args.get("text") or args.get("markdown_text") or ""
    return text + "".join(chunk.get("text", "") for chunk in args.get("chunks") or [])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentions", type=int, default=20)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--rate", type=float, default=30.0, help="tokens per second per reply")
    parser.add_argument("--fallback", action="store_true", help="stream methods fail: post + update")
    parser.add_argument(
        "--lone", action="store_true", help="one reply at a time: 10 mentions of 10 tokens at 50/s"
    )
    args = parser.parse_args()
    if args.lone:  # each in a channel of its own: a reply 0.2 s long would meet the last one's post slot
        args.mentions, args.channels, args.tokens, args.rate = 10, 10, 10, 50.0

    ports: multiprocessing.Queue = multiprocessing.Queue()
    slack_process = multiprocessing.Process(target=serve_slack, args=(ports, args.fallback), daemon=True)
    slack_process.start()
    slack_port, record_port = ports.get(timeout=30)
    provider, provider_port = start(args.tokens, args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        settings = engine_settings(
            provider_port,
            tmp,
            slack_bot_token="xoxb-test",
            slack_signing_secret=SECRET,
            slack_api_url=f"http://127.0.0.1:{slack_port}/api/",
        )
        engine = await Engine.create(settings)
        await engine.catalog.all_names()
        replies: list[asyncio.Task[object]] = []
        accept = engine.accept

        async def accepted(message: Message, reply_to: dict[str, object] | None = None) -> object:
            """The task that answers a message ends once its final text is shown: keep them to await."""
            task = await accept(message, reply_to)
            if task is not None:
                replies.append(task)
            return task

        engine.accept = accepted  # type: ignore[method-assign]
        platform = SlackPlatform(engine, settings, host="127.0.0.1", port=0)
        engine.register(platform)
        await platform.start()
        url = f"http://127.0.0.1:{platform.port}/slack/events"
        posted: dict[str, float] = {}
        async with aiohttp.ClientSession() as http:

            async def mention(index: int) -> None:
                ts = f"1700000100.{index:06d}"
                event = {
                    "type": "app_mention",
                    "user": "UB",
                    "text": f"<@{BOT_USER}> question {index}",
                    "ts": ts,
                }
                event |= {"channel": f"C{index % args.channels}", "team": TEAM}
                body = json.dumps(
                    {"type": "event_callback", "team_id": TEAM, "event_id": f"Ev{index}", "event": event}
                )
                posted[ts] = time.monotonic()
                headers = {"Content-Type": "application/json", **signed_headers(body, SECRET)}
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 200

            async def answered(count: int) -> None:
                while len(replies) < count:  # Bolt hands each event to its listener in a task
                    await asyncio.sleep(0.01)
                await asyncio.gather(*replies)

            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            async with asyncio.timeout(600):
                if args.lone:
                    for index in range(args.mentions):
                        await mention(index)
                        await answered(index + 1)
                else:
                    await asyncio.gather(*(mention(i) for i in range(args.mentions)))
                    await answered(args.mentions)
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            async with http.get(f"http://127.0.0.1:{record_port}/calls") as response:
                record = await response.json()
        await engine.drain(settings.shutdown_grace_seconds)
        await platform.stop()
        await engine.aclose()
    slack_process.terminate()
    provider.terminate()

    calls, threads = record["calls"], record["threads"]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    reply_methods = (
        "chat.startStream",
        "chat.appendStream",
        "chat.stopStream",
        "chat.postMessage",
        "chat.update",
    )
    per_thread: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        if call["method"] in reply_methods:
            a = call["args"]
            thread = a.get("thread_ts") or threads.get(a.get("ts", ""), "")
            per_thread.setdefault(thread, []).append(call)
    first_visible, final_visible, token_to_visible, final_after_token = [], [], [], []
    for thread, rows in per_thread.items():
        accepted = [r for r in rows if r["ok"]]  # a refused or 429'd call shows nothing
        shown = [r for r in accepted if visible_text(r["args"])]
        if thread not in posted or not shown:
            continue
        first_visible.append(shown[0]["at"] - posted[thread])
        token_to_visible.append(shown[0]["at"] - token_times(visible_text(shown[0]["args"]))[0])
        final_visible.append(accepted[-1]["at"] - posted[thread])
        # The final text is shown by the first accepted call that carries the provider's last token.
        last_token = max(t for r in shown for t in token_times(visible_text(r["args"])))
        showing = next(r for r in shown if last_token in token_times(visible_text(r["args"])))
        final_after_token.append(showing["at"] - last_token)
    calls_per_reply = sum(
        1 for c in calls if c["method"] in reply_methods or c["method"].startswith("assistant")
    )
    path = "fallback (chat.postMessage + chat.update)" if args.fallback else "native stream"
    streamed = sum(
        1 for rows in per_thread.values() if any(r["method"] == "chat.stopStream" and r["ok"] for r in rows)
    )
    shape = "one after another" if args.lone else "concurrent"
    print(f"{args.mentions} {shape} mentions in {args.channels} channels, one workspace, {path}")
    print(f"  replies seen                {len(first_visible):10d}")
    print(f"  streamed / posted and edited {streamed:9d} / {len(first_visible) - streamed}")
    for label, values, scale, unit in (
        ("event POST -> first text", first_visible, 1000, "ms"),
        ("provider token -> visible", token_to_visible, 1000, "ms"),
        ("event POST -> final text", final_visible, 1, "s"),
        ("last token -> final text", final_after_token, 1000, "ms"),
    ):
        p50, p99 = percentile(values, 0.5) * scale, percentile(values, 0.99) * scale
        print(f"  {label:27} p50 {p50:9.2f} {unit:2}  p99 {p99:9.2f} {unit}")
    print(f"  Web API calls per reply     {calls_per_reply / max(1, args.mentions):10.1f}")
    print(f"  CPU seconds per reply       {cpu / max(1, args.mentions):10.4f}")
    print(f"  429s from Slack's budgets   {sum(record['throttled'].values()):10d}  {record['throttled']}")
    posts: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        if call["method"] == "chat.postMessage":
            posts.setdefault(call["args"].get("channel", ""), []).append(call)
    began = min((c["at"] for c in calls), default=0.0)
    for channel, rows in sorted(posts.items()):
        if not all(r["ok"] for r in rows):  # where a post was refused: when each reached Slack
            shown = ", ".join(f"{r['at'] - began:.3f} s" + ("" if r["ok"] else " (refused)") for r in rows)
            print(f"  posts in {channel}: {shown}")
    if args.lone:
        print(f"  target: last token -> final text <= {LONE_TARGET_MS:.0f} ms at p50")


if __name__ == "__main__":
    asyncio.run(main())
