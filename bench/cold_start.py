"""Cold start: how long `parley --help` and `--version` take, the whole process, beside the interpreter's.

python bench/cold_start.py            # 20 runs of each
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.15


def timed(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    parley = Path(sys.executable).with_name("parley")  # the console script pip installed
    commands = {
        "python -c pass (the interpreter alone)": [sys.executable, "-c", "pass"],
        "parley --help": [str(parley), "--help"],
        "parley --version": [str(parley), "--version"],
        "python -c 'import bot.engine, skills' (what parley run loads)": [
            sys.executable,
            "-c",
            "import bot.engine, skills",
        ],
    }
    for label, command in commands.items():
        times = timed(command, args.runs)
        target = f"   target <= {TARGET_S:g} s" if label.startswith("parley") else ""
        print(
            f"{label}: best {min(times):.3f} s, median {statistics.median(times):.3f} s, "
            f"worst {max(times):.3f} s{target}"
        )


if __name__ == "__main__":
    main()
