"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, loopback only, fsync off.

Standard library only, so `.ci/run` starts the same cluster with the system's python3 before the tests:

    python3 tests/support/postgres.py start DIR   # prints the cluster's URL
    python3 tests/support/postgres.py stop DIR

PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user (Debian's package
makes it), else as `nobody`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "parley"


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def start(folder: Path) -> str:
    """Start a cluster whose files live in `folder`; its URL (asyncpg driver, database postgres)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql)")
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    _as_owner(owner, [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8"])
    options = f"-F -c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=300"
    options += " -c full_page_writes=off -c synchronous_commit=off"
    _as_owner(
        owner,
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"],
    )
    return f"postgresql+asyncpg://{USER}@127.0.0.1:{port}/postgres"


def stop(folder: Path) -> None:
    bin_dir = binaries()
    data = folder / "data"
    if bin_dir is not None and (data / "postmaster.pid").exists():
        _as_owner(_owner(), [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    shutil.rmtree(folder, ignore_errors=True)


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is neither a postgres nor a nobody user to run PostgreSQL")


def _as_owner(owner: pwd.struct_passwd | None, command: list[str]) -> None:
    program = Path(command[0]).name
    if owner is not None:
        command = [
            "setpriv",
            f"--reuid={owner.pw_uid}",
            f"--regid={owner.pw_gid}",
            "--clear-groups",
            *command,
        ]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{program} failed: {result.stderr.strip() or result.stdout.strip()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(where))
    else:
        stop(where)


async def create_database(server: str, name: str) -> str:
    """A new, empty database `name` on `server` (a URL), and its URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(server)
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return url.set(database=name).render_as_string(hide_password=False)
