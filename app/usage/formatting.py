"""Print report rows as a terminal table, JSON or CSV."""

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal


def render(rows, columns, fmt="table"):
    if fmt == "json":
        return json.dumps(
            [{c: _plain(r.get(c)) for c in columns} for r in rows], indent=2
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(r.get(c)) for c in columns] for r in rows])
        return out.getvalue().rstrip("\n")
    return _table(rows, columns)


def _plain(value):
    if isinstance(value, Decimal):
        return str(value.normalize()) if value else "0"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _cell(name, value):
    if value is None:
        return "-"
    if name == "cost":
        return f"${_plain(value)}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(_plain(value))


def _table(rows, columns):
    cells = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [
        max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if v[:1].isdigit() or v[:1] == "$" else v.ljust(w)
                for v, w in zip(row, widths, strict=True)
            )
        )
    if not rows:
        lines.append("(no usage)")
    return "\n".join(lines)
