"""What a command loads before it does anything: `parley --help` and `--version` answer without the
engine's libraries, and the page reader loads trafilatura only at the first page it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bot.cli import USAGE_BY
from bot.usage import BY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "asyncio",
    "sqlalchemy",
    "httpx",
    "pydantic",
    "trafilatura",
    "aiohttp",
    "bot.config",
    "bot.engine",
    "bot.store",
)


def loaded_after(code: str, tmp_path: Path) -> set[str]:
    """The names in `sys.modules` once `code` has run in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def parley(arguments: list[str], expected_start: str) -> str:
    """Run bot.cli's main on `arguments` and check what it printed on standard output."""
    return (
        "import contextlib, io\nfrom bot.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        f"    main({arguments!r})\n"
        f"assert out.getvalue().startswith({expected_start!r}), out.getvalue()\n"
    )


def test_help_loads_none_of_the_engines_libraries(tmp_path: Path) -> None:
    modules = loaded_after(parley(["--help"], "usage: parley"), tmp_path)
    assert "bot.cli" in modules
    assert [name for name in HEAVY if name in modules] == []


def test_version_loads_none_of_them_and_prints_on_standard_output(tmp_path: Path) -> None:
    modules = loaded_after(parley(["--version"], "parley "), tmp_path)
    assert "bot.cli" in modules
    assert [name for name in HEAVY if name in modules] == []


def test_a_command_still_loads_what_it_needs(tmp_path: Path) -> None:
    """The probe can see the heavy modules: a command that reads settings loads them."""
    modules = loaded_after(parley(["db", "current"], "The schema of"), tmp_path)
    assert {"asyncio", "sqlalchemy", "pydantic", "bot.config", "bot.store"} <= modules


def test_the_page_reader_loads_trafilatura_at_its_first_page(tmp_path: Path) -> None:
    code = (
        "from skills import page_reader\n"
        "assert 'trafilatura' not in __import__('sys').modules\n"
        "text = page_reader._extract('<html><body><article><p>' + 'Plain words here. ' * 40"
        " + '</p></article></body></html>')\n"
        "assert 'Plain words here.' in text, text\n"
    )
    assert "trafilatura" in loaded_after(code, tmp_path)


def test_usage_choices_are_the_reports_columns() -> None:
    assert set(USAGE_BY) == set(BY_COLUMNS)
