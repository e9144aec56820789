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
  stripping spaces. Completely blank lines are skipped. Quoting follows
  RFC 4180 strictly: a quoted field must be closed, and a double quote
  inside it is written twice (``""``); a quote that is never closed (which
  would swallow every following row into one caption) is refused, naming
  the line where it opened.
- ``.jsonl``: one JSON object per line with the same keys; blank lines skipped.
- Data frames returned by :func:`read_captions` carry ``df.attrs["path"]``
  and ``df.attrs["lines"]`` (the 1-based line where each row starts) so that
  later checks can point at the right line.

Resource caps (a captions file is what an upload can make large)
-----------------------------------------------------------------
Files are streamed line by line (never read whole), and
:class:`CaptionLimits` caps what one file may hold: at most
``CLIPGEOM_MAX_CAPTIONS`` captions (default 2,000,000) of at most
``CLIPGEOM_MAX_CAPTION_CHARS`` characters each (default 10,000). A physical
line may hold at most ``max(1 MiB, 64 x max_chars)`` bytes. Going over a cap is
an InputError that states the cap and the variable that sets it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from .errors import InputError

CAPTION_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
#: Column names the store uses itself; a caption file may not use them.
RESERVED_COLUMNS = ("text_id", "image_id")
_KNOWN = ("caption", "image", "label")

DEFAULT_MAX_CAPTIONS = 2_000_000
DEFAULT_MAX_CAPTION_CHARS = 10_000
_MIN_LINE_BYTES = 1 << 20


def _env_int(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        val = int(raw.strip().replace("_", ""))
    except ValueError:
        val = 0
    if val < 1:
        raise InputError(f"{var}={raw!r} is not a positive whole number; unset it to use "
                         f"the default ({default:,}).")
    return val


@dataclass(frozen=True)
class CaptionLimits:
    """Caps on one captions file: how many captions, how long each may be."""

    max_captions: int = DEFAULT_MAX_CAPTIONS
    max_chars: int = DEFAULT_MAX_CAPTION_CHARS

    @classmethod
    def from_env(cls) -> "CaptionLimits":
        """The caps set by ``CLIPGEOM_MAX_CAPTIONS`` / ``CLIPGEOM_MAX_CAPTION_CHARS``."""
        return cls(_env_int("CLIPGEOM_MAX_CAPTIONS", DEFAULT_MAX_CAPTIONS),
                   _env_int("CLIPGEOM_MAX_CAPTION_CHARS", DEFAULT_MAX_CAPTION_CHARS))

    @property
    def max_line_bytes(self) -> int:
        return max(_MIN_LINE_BYTES, 64 * self.max_chars)

    def describe(self) -> str:
        return (f"at most {self.max_captions:,} captions per file "
                f"(CLIPGEOM_MAX_CAPTIONS) of at most {self.max_chars:,} characters "
                "each (CLIPGEOM_MAX_CAPTION_CHARS)")


def _too_many(path, limits: CaptionLimits) -> InputError:
    return InputError(
        f"{path}: more than {limits.max_captions:,} captions; the limit is "
        f"{limits.describe()}. Split the set, or raise CLIPGEOM_MAX_CAPTIONS on a "
        "server with the memory for it."
    )


def _too_long(path, line: int, n: int, limits: CaptionLimits) -> InputError:
    return InputError(
        f"{path}, line {line}: the caption is {n:,} characters long; the limit is "
        f"{limits.max_chars:,} characters per caption ({limits.describe()}). A "
        "caption this long is usually an unclosed quote or a wrong delimiter; CLIP "
        "reads only the first ~77 tokens anyway."
    )


# --------------------------------------------------------------------------
# Low level: bytes -> text -> lines (streamed)
# --------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a text file.")


def _decode_error(path: Path, offset: int, line: int, bad: bytes) -> InputError:
    return InputError(
        f"{path}: not valid UTF-8 at byte offset {offset} (line {line}, "
        f"byte 0x{bad.hex()}). Save the file as UTF-8 (for example "
        "`iconv -f latin1 -t utf-8 in.txt > out.txt`) and try again."
    )


def read_text(path) -> str:
    """Read a whole file as UTF-8 text; InputError naming the byte and line.

    For small files only (JSON documents); caption files are streamed.
    """
    path = Path(path)
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _decode_error(path, exc.start, line,
                            data[exc.start:exc.start + 1]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


class _Lines:
    """The lines of a UTF-8 file, streamed; each keeps its line ending.

    Only ``\\n`` ends a line (``\\r\\n`` too), unless ``universal``, where a
    lone ``\\r`` also does (what the csv module expects). ``self.line`` is
    the number of the line last yielded. A line longer than
    ``max_line_bytes`` is an InputError (a file is never read whole).
    """

    def __init__(self, path: Path, max_line_bytes: int, universal: bool = False):
        self.path = Path(path)
        self.max_line_bytes = int(max_line_bytes)
        self.universal = universal
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        _check_file(self.path)
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read ({exc.strerror or exc}).") from None
        offset = 0
        nl_line = 0
        with f:
            while True:
                try:
                    raw = f.readline(self.max_line_bytes + 1)
                except OSError as exc:
                    raise InputError(f"{self.path}: cannot be read "
                                     f"({exc.strerror or exc}).") from None
                if not raw:
                    return
                nl_line += 1
                if len(raw) > self.max_line_bytes:
                    raise InputError(
                        f"{self.path}, line {nl_line}: longer than "
                        f"{self.max_line_bytes:,} bytes; a captions file holds one "
                        "caption per line (or per row), each of at most "
                        f"{self.max_line_bytes // 64:,} characters "
                        "(CLIPGEOM_MAX_CAPTION_CHARS)."
                    )
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _decode_error(self.path, offset + exc.start, nl_line,
                                        raw[exc.start:exc.start + 1]) from None
                if offset == 0 and text.startswith("\ufeff"):
                    text = text[1:]
                offset += len(raw)
                if self.universal and "\r" in text:
                    for piece in _LONE_CR.split(text):
                        if piece:
                            self.line += 1
                            yield piece
                else:
                    self.line += 1
                    yield text


def _strip_eol(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _iter_lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, text without its ending) of every line except the blank
    lines at the very end of the file; other blank (whitespace-only) lines
    come as "". Memory stays flat however many blank lines there are."""
    first_blank, n_blank = 0, 0
    for k, raw in enumerate(_Lines(path, max_line_bytes), start=1):
        ln = _strip_eol(raw)
        if ln.strip() == "":
            if not n_blank:
                first_blank = k
            n_blank += 1
            continue
        for j in range(n_blank):
            yield first_blank + j, ""
        n_blank = 0
        yield k, ln


def read_lines(path) -> list[str]:
    """One entry per line of a UTF-8 text file (line i -> entry i - 1).

    Trailing blank lines are dropped; other blank lines are kept as "".
    """
    path = Path(path)
    return [ln for _, ln in _iter_lines(path, CaptionLimits.from_env().max_line_bytes)]


# --------------------------------------------------------------------------
# Delimited tables
# --------------------------------------------------------------------------

def _quote_state(lines: list[str], first_line: int, delimiter: str):
    """Re-read the raw lines of one CSV record as the csv module does.

    Returns (state, opened, closed): ``state`` is "quoted" when a quoted field
    is still open at the end, "after" when text follows a closing quote;
    ``opened`` / ``closed`` are the lines of the last quote that opened / closed.
    """
    state, opened, closed = "start", None, None
    for k, line in enumerate(lines):
        ln = first_line + k
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if state == "start":
                if c == '"':
                    state, opened = "quoted", ln
                elif c not in (delimiter, "\r", "\n"):
                    state = "field"
            elif state == "field":
                if c in (delimiter, "\r", "\n"):
                    state = "start"
            elif state == "quoted":
                if c == '"':
                    if i + 1 < n and line[i + 1] == '"':
                        i += 1
                    else:
                        state, closed = "closed", ln
            elif state == "closed":
                if c in (delimiter, "\r", "\n"):
                    state = "start"
                elif c == '"':
                    state = "quoted"
                else:
                    return "after", opened, closed
            i += 1
    return state, opened, closed


def _csv_error(path: Path, exc: csv.Error, start: int, lines: list[str],
               delimiter: str, limits: CaptionLimits) -> InputError:
    state, opened, closed = _quote_state(lines, start, delimiter)
    end = start + len(lines) - 1
    at = opened or start
    if "field larger than field limit" in str(exc):
        return InputError(
            f"{path}, line {at}: a field starting on this line runs past "
            f"{csv.field_size_limit():,} characters (to line {end}): its closing "
            "double quote is probably missing, so the following rows were being read "
            f"into it. Captions may hold at most {limits.max_chars:,} characters "
            f"({limits.describe()})."
        )
    if state == "quoted" or "unexpected end of data" in str(exc):
        return InputError(
            f"{path}, line {at}: a quoted field opened on this line is never closed "
            f"(the file was read to its end, line {end}, looking for the closing "
            "quote), so every following row would become one caption. Add the "
            'closing double quote, or write a quote inside a caption as two ("").'
        )
    if state == "after":
        if closed is not None and closed > at:
            return InputError(
                f"{path}, line {at}: a quoted field opened on this line only closes on "
                f"line {closed}, swallowing the rows in between. A double quote inside "
                'a caption must be written as two (""); check the quotes on line '
                f"{at}."
            )
        return InputError(
            f"{path}, line {closed or at}: text after the closing quote of a quoted "
            'field. Write a double quote inside a quoted field as two ("") '
            '(for example "He said ""hi""") and put nothing between the closing '
            "quote and the next delimiter."
        )
    return InputError(
        f"{path}, line {start}: cannot be parsed ({exc}). Check the "
        "quoting: fields containing the delimiter must be in double quotes."
    )


def _records(path: Path, delimiter: str, limits: CaptionLimits
             ) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of every non-blank record of a .csv/.tsv file,
    streamed; the header is the first one."""
    if csv.field_size_limit() < limits.max_chars + 1:
        csv.field_size_limit(limits.max_chars + 1)  # only ever raised
    feed = _Lines(path, limits.max_line_bytes, universal=True)
    buf: list[str] = []

    def lines():
        for ln in feed:
            buf.append(ln)
            yield ln

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    prev = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, exc, prev + 1, buf, delimiter, limits) from None
        start = prev + 1
        prev = reader.line_num
        buf.clear()
        if not rec or (len(rec) == 1 and rec[0].strip() == ""):
            continue
        yield start, rec


def _header(path: Path, header: list[str], header_line: int) -> list[str]:
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
    return names


def _width_error(path: Path, line: int, names: list[str], found: int) -> InputError:
    return InputError(
        f"{path}, line {line}: expected {len(names)} fields "
        f"({', '.join(names)}) but found {found}. Put fields that "
        "contain the delimiter or line breaks in double quotes."
    )


def _empty(path: Path) -> InputError:
    return InputError(
        f"{path}: the file is empty; expected a header row naming the "
        "columns (for example `caption`)."
    )


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

def read_captions(path, *, limits: CaptionLimits | None = None) -> pd.DataFrame:
    """Read a caption file into a DataFrame with a ``caption`` column.

    Optional columns: ``image`` (str or int, None where unpaired), ``label``
    (None where blank) and metadata columns. Row i is text row i.
    ``df.attrs`` holds ``path`` and ``lines`` (1-based start line per row).
    The file is streamed; ``limits`` (default :meth:`CaptionLimits.from_env`)
    caps the number of captions and the length of each.
    """
    path = Path(path)
    limits = limits or CaptionLimits.from_env()
    suffix = path.suffix.lower()
    if suffix not in CAPTION_SUFFIXES:
        raise InputError(
            f"{path}: unsupported caption file type {path.suffix or '(none)'!r}; "
            "use .txt (one caption per line), .csv, .tsv or .jsonl."
        )
    if suffix == ".txt":
        df, lines = _captions_txt(path, limits)
    elif suffix in (".csv", ".tsv"):
        df, lines = _captions_delimited(path, limits)
    else:
        df, lines = _captions_jsonl(path, limits)
    df.attrs["path"] = str(path)
    df.attrs["lines"] = lines
    return df


def _captions_txt(path: Path, limits: CaptionLimits):
    caps: list[str] = []
    lines: list[int] = []
    for k, ln in _iter_lines(path, limits.max_line_bytes):
        if len(ln) > limits.max_chars:
            raise _too_long(path, k, len(ln), limits)
        if len(caps) >= limits.max_captions:
            raise _too_many(path, limits)
        caps.append(ln)
        lines.append(k)
    return pd.DataFrame({"caption": pd.Series(caps, dtype=object)}), lines


def _open_delimited(path: Path, limits: "CaptionLimits"):
    """(the record stream after the header, the header's column names) of a .csv/.tsv."""
    records = _records(path, _delimiter(path), limits)
    try:
        header_line, header = next(records)
    except StopIteration:
        raise _empty(path) from None
    return records, _header(path, header, header_line)


def _captions_delimited(path: Path, limits: CaptionLimits):
    records, names = _open_delimited(path, limits)
    if "caption" not in names:
        raise InputError(
            f"{path}: no 'caption' column in the header (found: "
            f"{', '.join(names)}). Name the caption column 'caption'."
        )
    _check_reserved(path, names)
    width = len(names)
    k_cap = names.index("caption")
    cols: list[list] = [[] for _ in names]
    lines: list[int] = []
    for start, rec in records:
        if len(rec) != width:
            raise _width_error(path, start, names, len(rec))
        if len(rec[k_cap]) > limits.max_chars:
            raise _too_long(path, start, len(rec[k_cap]), limits)
        if len(lines) >= limits.max_captions:
            raise _too_many(path, limits)
        for col, v in zip(cols, rec):
            col.append(v)
        lines.append(start)
    data = dict(zip(names, cols))
    out = {"caption": data.pop("caption")}
    for blankable in ("image", "label"):
        if blankable in data:
            out[blankable] = [_none_if_blank(v) for v in data.pop(blankable)]
    out.update(data)
    del cols, data
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in out.items()})
    return df, lines


_SCALARS = (str, int, float, bool, type(None))


def _captions_jsonl(path: Path, limits: CaptionLimits):
    cols: dict[str, list] = {}
    lines: list[int] = []
    for i, raw in enumerate(_Lines(path, limits.max_line_bytes), start=1):
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
        except (ValueError, RecursionError) as exc:
            # e.g. an integer of more than 4,300 digits, or nesting too deep
            why = str(exc)[:200] or "nested too deeply"
            raise InputError(
                f"{path}, line {i}: not usable JSON ({why}). Each line must be one "
                "flat JSON object."
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
        if len(obj["caption"]) > limits.max_chars:
            raise _too_long(path, i, len(obj["caption"]), limits)
        img = obj.get("image")
        if isinstance(img, bool) or not isinstance(img, (str, int, type(None))):
            raise InputError(
                f"{path}, line {i}: \"image\" must be an image source (string) "
                f"or a 0-based image row (integer), got {img!r}."
            )
        if len(lines) >= limits.max_captions:
            raise _too_many(path, limits)
        n = len(lines)
        for k, v in obj.items():
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * n
            col.append(v)
        for k, col in cols.items():
            if len(col) == n:
                col.append(None)
        lines.append(i)
    keys: list[str] = ["caption"]
    for extra in ("image", "label"):
        if extra in cols:
            keys.append(extra)
    keys += [k for k in cols if k not in keys]
    data = {}
    for k in keys:
        vals = cols.get(k, [])
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
    out = []
    for i, ln in _iter_lines(path, CaptionLimits.from_env().max_line_bytes):
        if ln.strip() == "":
            raise InputError(
                f"{path}, line {i}: blank line; an image list needs one image "
                "path or source on every line."
            )
        out.append(ln.strip())
    return out


def read_labels(path) -> list:
    """Labels, one per item: a text file (one per line, blank -> None) or a
    .csv/.tsv with a ``label`` column."""
    path = Path(path)
    limits = CaptionLimits.from_env()
    if path.suffix.lower() in (".csv", ".tsv"):
        records, names = _open_delimited(path, limits)
        if "label" not in names:
            raise InputError(
                f"{path}: no 'label' column in the header (found: "
                f"{', '.join(names)}). Name the label column 'label'."
            )
        k = names.index("label")
        out = []
        for start, rec in records:
            if len(rec) != len(names):
                raise _width_error(path, start, names, len(rec))
            out.append(_none_if_blank(rec[k]))
        return out
    return [_none_if_blank(ln.strip()) for ln in read_lines(path)]
