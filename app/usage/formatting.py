"""Print report rows as a terminal table, JSON or CSV.

JSON and CSV are for scripts: the columns come in the order given, costs are exact
decimal strings (never floats; an unpriced cost is null in JSON, empty in CSV),
dates and times are ISO 8601. The table is for people: numbers right-aligned with
thousands separators, costs in dollars with their decimal points lined up.
"""

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal

UNPRICED = "unpriced"
MIN_COST_PLACES = 2

# Table headings; JSON keys and CSV headers are the column names themselves.
LABELS = {
    "username": "user",
    "session_id": "session",
    "first_at": "first call",
    "last_at": "last call",
    "calls": "calls",
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_tokens": "cache write",
    "cache_read_tokens": "cache read",
    "total_tokens": "total tokens",
    "cost": "cost",
    "unpriced_calls": "unpriced",
}
# Right-aligned in the table.
NUMBERS = {
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "total_tokens",
    "cost",
    "unpriced_calls",
}


def render(rows, columns, fmt="table", *, total=None):
    """``rows`` (dicts) as ``fmt``; the table ends with ``total`` when given."""
    if fmt == "json":
        return to_json(rows, columns)
    if fmt == "csv":
        return to_csv(rows, columns)
    return to_table(rows, columns, total=total)


def to_json(rows, columns):
    return json.dumps([{c: plain(r.get(c)) for c in columns} for r in rows], indent=2)


def to_csv(rows, columns):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[plain(r.get(c)) for c in columns] for r in rows])
    return out.getvalue().rstrip("\n")


def plain(value):
    """A value as JSON and CSV carry it: Decimal and dates become exact text."""
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def decimal_text(value):
    """``value`` in plain notation without trailing zeros: never "1E+2"."""
    text = format(value.normalize(), "f")
    return "0" if text in ("0", "-0") else text


# --- the table


def to_table(rows, columns, *, total=None):
    places = _cost_places([*rows, total] if total else rows)
    body = [_cells(row, columns, places) for row in rows]
    headings = [LABELS.get(c, c) for c in columns]
    widths = [len(h) for h in headings]
    footer = []
    if total is not None and rows:
        footer = [_cells(total, columns, places)]
        footer[0][0] = "total"
    for row in body + footer:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    right = [c in NUMBERS for c in columns]
    lines = [_line(headings, widths, right)]
    lines.append(_line(["-" * w for w in widths], widths, right))
    lines += [_line(row, widths, right) for row in body]
    if footer:
        lines.append(_line(["-" * w for w in widths], widths, right))
        lines.append(_line(footer[0], widths, right))
    if not rows:
        lines.append("(no usage)")
    return "\n".join(lines)


def _cells(row, columns, places):
    """Text of each cell; a column the row lacks (the total's keys) is blank."""
    return [_cell(c, row[c], places) if c in row else "" for c in columns]


def _cell(column, value, places):
    if column == "cost":
        return UNPRICED if value is None else f"${value:,.{places}f}"
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(plain(value))


def _cost_places(rows):
    """Decimal places that show every cost of the column exactly, at least cents."""
    places = [
        -row["cost"].normalize().as_tuple().exponent
        for row in rows
        if isinstance(row.get("cost"), Decimal)
    ]
    return max([MIN_COST_PLACES, *places])


def _line(cells, widths, right):
    text = "  ".join(
        cell.rjust(w) if r else cell.ljust(w)
        for cell, w, r in zip(cells, widths, right, strict=True)
    )
    return text.rstrip()
