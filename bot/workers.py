"""`parley run --workers N`: N instances on this machine, one process each, on one PostgreSQL.

One event loop carries a few hundred streams; more cores carry more. Each worker is a whole instance
(its own heartbeat, its turn at leading); this process only starts them, passes a stop on to them, and
starts again one that dies. With Slack over HTTP, worker K serves on PORT + K, for a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from sqlalchemy.engine import make_url

from bot.config import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
# A worker that stops this soon after it started is refusing its setup (a bad token, an unreachable
# database): all of them would, so the others stop too, and `parley run` exits with its status.
SETUP_SECONDS = 10.0


def refusal(settings: Settings, workers: int) -> str | None:
    """Why this many workers cannot run here, in one sentence; None when they can."""
    if workers < 1:
        return f"--workers {workers} cannot work: give a number of processes, 1 or more"
    if workers > 1 and make_url(settings.database_url).get_backend_name() != "postgresql":
        return (
            f"--workers {workers} needs PostgreSQL: with SQLite one process serves everything, so set "
            "DATABASE_URL=postgresql+asyncpg://USER:PASSWORD@HOST/DB or run without --workers"
        )
    return None


async def supervise(settings: Settings, workers: int) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    running = {index: await _spawn(settings, index) for index in range(workers)}
    started = {index: loop.time() for index in running}
    status = 0
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while not stopping.is_set():
            exits = {asyncio.ensure_future(process.wait()): index for index, process in running.items()}
            done, _ = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in exits:
                waiter.cancel()
            for waiter in done - {stop}:
                index = exits[waiter]
                code = running[index].returncode
                if loop.time() - started[index] < SETUP_SECONDS and code in (1, 2):
                    log.error("worker %d refused its setup (exit %s); stopping the others", index, code)
                    status = code
                    stopping.set()
                    break
                log.warning("worker %d stopped (exit %s); starting it again", index, code)
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                running[index] = await _spawn(settings, index)
                started[index] = loop.time()
    finally:
        stop.cancel()
        for process in running.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # each drains its replies, then leaves
        await asyncio.gather(*(process.wait() for process in running.values()))
    return status


async def _spawn(settings: Settings, index: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PORT": str(settings.port + index)}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", env=env)
    log.info("worker %d started (pid %d)", index, process.pid)
    return process
