"""Running the `parley` command as a user does: a subprocess on the loopback provider, with nothing
inherited from this machine's settings."""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
from pathlib import Path
from typing import IO, Any

from tests.support.llm_server import LLMServer

CHECKOUT = str(Path(__file__).resolve().parents[2])  # what a subprocess imports, wherever it runs
PR_CAPBSET_DROP = 24
# The capabilities that let root ignore permission bits: DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER.
ROOT_OVERRIDES = (1, 2, 3)


def environment(llm: LLMServer, cwd: Path, **env: str) -> dict[str, str]:
    """What `parley` runs with: the loopback provider, a database under `cwd`, no inherited settings."""
    values = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "HOME": str(cwd),
        "OPENROUTER_API_KEY": "sk-or-v1-cli-secret",
        "OPENROUTER_BASE_URL": llm.openai_base_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{cwd}/data/parley.db",
        **env,
    }
    return {k: v for k, v in values.items() if v}


async def parley(
    llm: LLMServer, cwd: Path, *args: str, stdin: str = "", unprivileged: bool = False, **env: str
) -> tuple[int, str, str]:
    as_user: dict[str, Any] = {}
    if unprivileged and os.geteuid() == 0:
        as_user = {"preexec_fn": _without_root_overrides}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=environment(llm, cwd, **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **as_user,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _without_root_overrides() -> None:
    """In the child, before exec: drop what lets root write where permission bits say no."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in ROOT_OVERRIDES:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


async def spawn_parley(
    llm: LLMServer,
    cwd: Path,
    *args: str,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | IO[bytes] = asyncio.subprocess.PIPE,
    **env: str,
) -> asyncio.subprocess.Process:
    """`parley ARGS` started in `cwd` with `environment(llm, cwd, **env)`, left running for the caller."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=environment(llm, cwd, **env),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )
