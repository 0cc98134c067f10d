"""Record ids and their number: the one rule every reader and writer of a feature group uses.

An id is trimmed of ASCII whitespace (space, tab, newline, carriage return, form feed,
vertical tab) — at ingest, so the store holds it trimmed, and again at read, for rows written
by others. The trimmed id must then be an optional prefix without digits followed by 1 to 18
digits, to the end: ``^[^0-9]*([0-9]{1,18})$``. Those digits are the number that id ranges
compare: ``CUST_004000`` → 4000, ``4000`` → 4000. Ids that do not match — ``CUST_12AB2905``,
``A1B2C3``, ``CUST_ABC``, ``4000X``, an empty id, 19 digits or more — have no number: they are
never scored, and a read counts them (``ReadStats.unmatched_ids``).

The rule lives here once, as SQL (DuckDB): the local read, the Ray engine's read and
``features describe`` all call :func:`id_number_sql`.
"""

from __future__ import annotations

ID_WHITESPACE = " \t\n\r\f\v"
ID_PATTERN = r"^[^0-9]*([0-9]{1,18})$"


def trimmed_id_sql(column: str) -> str:
    """SQL for the id in ``column`` (an already quoted name) trimmed of whitespace."""
    # The characters are written raw inside the literal: DuckDB literals have no escapes.
    return f"trim(CAST({column} AS VARCHAR), '{ID_WHITESPACE}')"


def id_number_sql(column: str, *, trimmed: bool = False) -> str:
    """SQL for the number of the id in ``column`` (a quoted name); NULL when it does not match.
    ``trimmed``: the column holds ids already trimmed, as text (a third cheaper at 10M ids)."""
    id_text = column if trimmed else trimmed_id_sql(column)
    digits = f"regexp_extract({id_text}, '{ID_PATTERN}', 1)"
    return f"TRY_CAST(NULLIF({digits}, '') AS BIGINT)"


def trim_ids(ids: object) -> object:
    """An Arrow array of ids trimmed as :data:`ID_WHITESPACE` says (at ingest)."""
    import pyarrow.compute as pc

    return pc.utf8_trim(ids, characters=ID_WHITESPACE)
