"""User strings are data: helpers that keep them from acting as markup or formulas."""

from __future__ import annotations

import pandas as pd

# OWASP CSV injection: a cell starting with one of these is run as a formula by
# spreadsheet programs.
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A value safe to write to a CSV cell: strings that a spreadsheet would run
    as a formula get a leading apostrophe (OWASP's rule); numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells are neutralised by :func:`csv_cell`;
    numeric columns (a negative number is not a formula) are left as they are."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(csv_cell)
    return out


def plain_markdown(text: str) -> str:
    """Escape markdown/HTML/LaTeX so a user string renders literally inside
    st.markdown / st.caption / labels (for whole strings prefer st.text)."""
    out = []
    for ch in str(text):
        if ch in "\\`*_{}[]()#+-.!|<>$~:=":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)
