"""Reading the small text files that come with embeddings.

Caption files (``.txt``, ``.csv``, ``.tsv``, ``.jsonl``), image lists and
label lists. Every error is an :class:`~clipgeom.errors.InputError` that names
the file and the line (1-based, as an editor shows it) so the user can fix it.

Shared by :func:`clipgeom.store.import_arrays` and the other importers.

Conventions
-----------
- Files must be UTF-8 (a leading byte-order mark is ignored).
- Line endings may be ``\\n`` or ``\\r\\n``. Blank lines at the very end of a
  file are ignored (editors add them); blank lines elsewhere count as lines.
- In ``.csv`` / ``.tsv`` files the header row names the columns. ``caption``
  is required; ``image`` (an image source from the image list, or a 0-based
  image row) gives the pairing; ``label`` is optional; any other column is
  kept as metadata. Column names are matched case-insensitively after
  stripping spaces. Completely blank lines are skipped.
- ``.jsonl``: one JSON object per line with the same keys; blank lines skipped.
- Data frames returned by :func:`read_captions` carry ``df.attrs["path"]``
  and ``df.attrs["lines"]`` (the 1-based line where each row starts) so that
  later checks can point at the right line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd

from .errors import InputError

CAPTION_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
#: Column names the store uses itself; a caption file may not use them.
RESERVED_COLUMNS = ("text_id", "image_id")
_KNOWN = ("caption", "image", "label")


# --------------------------------------------------------------------------
# Low level: bytes -> text -> lines
# --------------------------------------------------------------------------

def read_text(path) -> str:
    """Read a whole file as UTF-8 text; InputError naming the byte and line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a text file.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start:exc.start + 1].hex()
        raise InputError(
            f"{path}: not valid UTF-8 at byte offset {exc.start} (line {line}, "
            f"byte 0x{bad}). Save the file as UTF-8 (for example "
            "`iconv -f latin1 -t utf-8 in.txt > out.txt`) and try again."
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _split_lines(text: str) -> list[str]:
    # str.splitlines would also split on \x0b, \x1c, \u2028 ..., which may
    # legitimately appear inside a caption; only \n (and \r\n) end a line.
    lines = text.split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and lines[-1].strip() == "":
        lines.pop()
    return lines


def read_lines(path) -> list[str]:
    """One entry per line of a UTF-8 text file (line i -> entry i - 1).

    Trailing blank lines are dropped; other blank lines are kept as "".
    """
    return _split_lines(read_text(path))


# --------------------------------------------------------------------------
# Delimited tables
# --------------------------------------------------------------------------

def _read_delimited(path: Path, delimiter: str):
    """Return (header, records, start_lines) of a .csv/.tsv file."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = None
    records: list[list[str]] = []
    lines: list[int] = []
    prev = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(
                f"{path}, line {prev + 1}: cannot be parsed ({exc}). Check the "
                "quoting: fields containing the delimiter must be in double quotes."
            ) from None
        start = prev + 1
        prev = reader.line_num
        if not rec or (len(rec) == 1 and rec[0].strip() == ""):
            continue  # blank line
        if header is None:
            header = rec
            header_line = start
            continue
        records.append(rec)
        lines.append(start)
    if header is None:
        raise InputError(
            f"{path}: the file is empty; expected a header row naming the "
            "columns (for example `caption`)."
        )
    names = []
    for k, raw in enumerate(header):
        nm = raw.strip()
        low = nm.lower()
        if low in _KNOWN or low in RESERVED_COLUMNS:
            nm = low
        if nm == "":
            nm = f"column_{k + 1}"
        if nm in names:
            raise InputError(
                f"{path}, line {header_line}: column {nm!r} appears twice in "
                "the header; give each column a different name."
            )
        names.append(nm)
    for rec, ln in zip(records, lines):
        if len(rec) != len(names):
            raise InputError(
                f"{path}, line {ln}: expected {len(names)} fields "
                f"({', '.join(names)}) but found {len(rec)}. Put fields that "
                "contain the delimiter or line breaks in double quotes."
            )
    return names, records, lines


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _check_reserved(path: Path, names) -> None:
    for nm in names:
        if nm in RESERVED_COLUMNS:
            raise InputError(
                f"{path}: column {nm!r} is reserved by clipgeom. Rename it to "
                "'image' if it says which image a caption belongs to (an image "
                "source from the image list, or a 0-based image row), or to "
                "another name to keep it as metadata."
            )


def _none_if_blank(v):
    if v is None:
        return None
    if isinstance(v, str) and v.strip() == "":
        return None
    return v


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------

def read_captions(path) -> pd.DataFrame:
    """Read a caption file into a DataFrame with a ``caption`` column.

    Optional columns: ``image`` (str or int, None where unpaired), ``label``
    (None where blank) and metadata columns. Row i is text row i.
    ``df.attrs`` holds ``path`` and ``lines`` (1-based start line per row).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CAPTION_SUFFIXES:
        raise InputError(
            f"{path}: unsupported caption file type {path.suffix or '(none)'!r}; "
            "use .txt (one caption per line), .csv, .tsv or .jsonl."
        )
    if suffix == ".txt":
        caps = read_lines(path)
        df = pd.DataFrame({"caption": pd.Series(caps, dtype=object)})
        lines = list(range(1, len(caps) + 1))
    elif suffix in (".csv", ".tsv"):
        df, lines = _captions_delimited(path)
    else:
        df, lines = _captions_jsonl(path)
    df.attrs["path"] = str(path)
    df.attrs["lines"] = lines
    return df


def _captions_delimited(path: Path):
    names, records, lines = _read_delimited(path, _delimiter(path))
    if "caption" not in names:
        raise InputError(
            f"{path}: no 'caption' column in the header (found: "
            f"{', '.join(names)}). Name the caption column 'caption'."
        )
    _check_reserved(path, names)
    cols = {nm: [rec[k] for rec in records] for k, nm in enumerate(names)}
    out = {"caption": cols["caption"]}
    if "image" in cols:
        out["image"] = [_none_if_blank(v) for v in cols["image"]]
    if "label" in cols:
        out["label"] = [_none_if_blank(v) for v in cols["label"]]
    for nm in names:
        if nm not in out:
            out[nm] = cols[nm]
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in out.items()})
    return df, lines


_SCALARS = (str, int, float, bool, type(None))


def _captions_jsonl(path: Path):
    text = read_text(path)
    rows: list[dict] = []
    lines: list[int] = []
    for i, raw in enumerate(text.split("\n"), start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path}, line {i}: not valid JSON ({exc.msg} at column "
                f"{exc.colno}). Each line must be one JSON object."
            ) from None
        if not isinstance(obj, dict):
            raise InputError(
                f"{path}, line {i}: expected a JSON object like "
                '{"caption": "..."}, got ' f"{type(obj).__name__}."
            )
        obj = {str(k).strip(): v for k, v in obj.items()}
        obj = {(k.lower() if k.lower() in _KNOWN + RESERVED_COLUMNS else k): v
               for k, v in obj.items()}
        _check_reserved(path, obj.keys())
        if "caption" not in obj:
            raise InputError(f"{path}, line {i}: no \"caption\" key.")
        if not isinstance(obj["caption"], str):
            raise InputError(
                f"{path}, line {i}: \"caption\" must be a string, got "
                f"{type(obj['caption']).__name__}."
            )
        img = obj.get("image")
        if isinstance(img, bool) or not isinstance(img, (str, int, type(None))):
            raise InputError(
                f"{path}, line {i}: \"image\" must be an image source (string) "
                f"or a 0-based image row (integer), got {img!r}."
            )
        rows.append(obj)
        lines.append(i)
    keys: list[str] = ["caption"]
    for extra in ("image", "label"):
        if any(extra in r for r in rows):
            keys.append(extra)
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    data = {}
    for k in keys:
        vals = [r.get(k) for r in rows]
        if k in ("image", "label"):
            vals = [_none_if_blank(v) for v in vals]
        if k not in ("caption", "image"):
            vals = _uniform(vals)
        data[k] = pd.Series(vals, dtype=object)
    return pd.DataFrame(data), lines


def _uniform(vals: list) -> list:
    """Make a metadata column storable: one scalar type, or strings."""
    vals = [json.dumps(v, ensure_ascii=False) if not isinstance(v, _SCALARS)
            else v for v in vals]
    kinds = set()
    for v in vals:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, (int, float)):
            kinds.add("num")
        else:
            kinds.add("str")
    if len(kinds) > 1:
        vals = [None if v is None else str(v) for v in vals]
    return vals


# --------------------------------------------------------------------------
# Image lists and labels
# --------------------------------------------------------------------------

def read_image_list(path) -> list[str]:
    """One image path/source per line; blank lines (except at the end) are errors."""
    path = Path(path)
    lines = read_lines(path)
    for i, ln in enumerate(lines, start=1):
        if ln.strip() == "":
            raise InputError(
                f"{path}, line {i}: blank line; an image list needs one image "
                "path or source on every line."
            )
    return [ln.strip() for ln in lines]


def read_labels(path) -> list:
    """Labels, one per item: a text file (one per line, blank -> None) or a
    .csv/.tsv with a ``label`` column."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        names, records, _ = _read_delimited(path, _delimiter(path))
        if "label" not in names:
            raise InputError(
                f"{path}: no 'label' column in the header (found: "
                f"{', '.join(names)}). Name the label column 'label'."
            )
        k = names.index("label")
        return [_none_if_blank(rec[k]) for rec in records]
    return [_none_if_blank(ln.strip()) for ln in read_lines(path)]
