"""Concatenates the long-form rows of every evaluation into results/summary.csv.

Each input holds the columns ``dataset,stage,method,classifier,split,metric,value`` (``classifier``
may be missing, then empty); the output is sorted by those keys, and a key that appears twice (in
one file or across files) or a value that is not a number is an error naming the file(s).
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = ("dataset", "stage", "method", "classifier", "split", "metric", "value")
KEY_COLUMNS = COLUMNS[:-1]
REQUIRED_NONEMPTY = ("dataset", "stage", "method", "split", "metric")


class SummaryError(ValueError):
    """Bad rows; the message names the file and line."""


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The validated rows of one file, with ``classifier`` filled as '' where the column is absent."""
    path = Path(path)
    if not path.is_file():
        raise SummaryError(f"rows file not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in fields and c != "classifier"]
        extra = [c for c in fields if c not in COLUMNS]
        if missing or extra:
            raise SummaryError(f"{path}: columns {fields}; missing {missing}, unknown {extra} "
                               f"(expected {list(COLUMNS)})")
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {c: (row.get(c) or "").strip() for c in COLUMNS}
            empty = [c for c in REQUIRED_NONEMPTY if not row[c]]
            if empty:
                raise SummaryError(f"{path} line {line}: empty {empty}")
            try:
                value = float(row["value"])
            except ValueError as error:
                raise SummaryError(f"{path} line {line}: value {row['value']!r} is not a number") from error
            if math.isinf(value):
                raise SummaryError(f"{path} line {line}: value is infinite")
            rows.append(row)
    return rows


def summarize(paths: Sequence[str | Path], out_path: str | Path) -> int:
    """Writes the merged, sorted rows of ``paths`` to ``out_path``; returns the number of rows."""
    origin: dict[tuple[str, ...], Path] = {}
    rows: list[dict[str, str]] = []
    for path in map(Path, paths):
        for row in read_rows(path):
            key = tuple(row[c] for c in KEY_COLUMNS)
            if key in origin:
                raise SummaryError(f"row {dict(zip(KEY_COLUMNS, key, strict=True))} is in both "
                                   f"{origin[key]} and {path}")
            origin[key] = path
            rows.append(row)
    rows.sort(key=lambda r: tuple(r[c] for c in KEY_COLUMNS))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out_path)
    return len(rows)
