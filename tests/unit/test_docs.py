"""The documentation cannot drift from the code.

- README.md's configuration table has exactly one row per :class:`~collabtrio.config.Config`
  field, with the field's CLI flag, environment variable and default.
- docs/protocol.md names every :class:`~collabtrio.errors.ErrorCode`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from collabtrio.cli import env_name, flag_name
from collabtrio.config import settings
from collabtrio.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"

_ROW = re.compile(r"^\|\s*`(--[a-z0-9-]+)`\s*\|")


def render_default(value: Any) -> str:
    """How the README's table writes a default (inside backticks)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _config_rows() -> dict[str, list[str]]:
    """Flag -> cells of each row of README's configuration table."""
    rows: dict[str, list[str]] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if _ROW.match(line):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            assert cells[0] not in rows, f"README lists {cells[0]} twice"
            rows[cells[0].strip("`")] = cells
    return rows


def test_readme_table_has_a_row_per_config_field() -> None:
    rows = _config_rows()
    flags = {flag_name(f.name) for f in settings()}
    assert set(rows) == flags, (
        f"missing from README: {sorted(flags - set(rows))}; "
        f"not a Config field: {sorted(set(rows) - flags)}"
    )


@pytest.mark.parametrize("field", settings(), ids=lambda f: f.name)
def test_readme_row_has_env_var_and_default(field: dataclasses.Field[Any]) -> None:
    row = _config_rows().get(flag_name(field.name))
    assert row is not None, f"README has no row for {flag_name(field.name)}"
    assert len(row) >= 4, row
    assert row[1] == f"`{env_name(field.name)}`"
    assert row[2] == f"`{render_default(field.default)}`", (
        f"README's default for {flag_name(field.name)} is {row[2]}, "
        f"the code's is {field.default!r}"
    )
    assert row[3], f"README gives no meaning for {flag_name(field.name)}"


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_protocol_doc_names_every_error_code(code: ErrorCode) -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    assert f"`{code}`" in text, f"docs/protocol.md does not mention {code}"


def test_readme_keeps_the_performance_section() -> None:
    assert "## Performance" in README.read_text(encoding="utf-8")
