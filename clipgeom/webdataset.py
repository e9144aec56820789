"""WebDataset tar shards, as img2dataset writes them, -> samples and :class:`ItemList`.

Layout read
-----------
``--webdataset 'shards/{00000..00099}.tar'``: a shard list with bash-style
brace expansion (:func:`expand_braces`: ``{a..b}`` ranges, zero-padded when
an end is, and ``{x,y}`` lists), or a folder (its ``*.tar`` files, sorted).
In each tar, a *sample* is the run of adjacent members sharing a *key*: the
member name up to the first dot of its file name (``00000/000000012.jpg`` has
key ``00000/000000012`` and suffix ``jpg``; the same rule as Ray Data's
``read_webdataset``). A sample holds one image (``.jpg``, ``.jpeg``, ``.png``
or ``.webp``) and its caption (``.txt``, UTF-8); other members (img2dataset's
``.json``) are ignored. Suffixes are compared in lower case.

Bad samples are left out and listed as :class:`~clipgeom.ingest.Skipped`,
item ``<shard>/<key>[.<ext>]``, by :func:`check_sample` (no image, several
images, no caption, a caption that is empty or not UTF-8, an empty image or
one above ``ImageLimits.max_file_bytes``) and by :func:`items_from_records`
(a key already seen in an earlier sample). An image that does not decode is
found later, by the embedding job, and listed there like any other image
(its caption is kept, unpaired), as for an image folder.

Both engines go through these functions, so they agree on what is kept:
the local engine (:func:`from_webdataset`: python ``tarfile``, image members
written to a work folder, then the ordinary job) and the Ray engine
(:mod:`clipgeom.ray_engine`: Ray Data's reader, members decoded from bytes
with :func:`open_image_bytes`).
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd
from PIL import Image

from .errors import InputError
from .images import ImageLimits, _decode
from .ingest import ItemList, Skipped, _Collector

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
CAPTION_SUFFIX = "txt"
#: Brace expansions longer than this are refused (a typo like {0..99999999}).
MAX_SHARDS = 1_000_000

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")   # Ray's _base_plus_ext
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --------------------------------------------------------------------------
# Shard lists
# --------------------------------------------------------------------------

def _matching_brace(s: str, start: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += (ch == "{") - (ch == "}")
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: ``a{1..3}b`` -> a1b a2b a3b; ``{00..02}``
    keeps the zero padding; ``{x,y}`` alternatives, nested. A brace group
    without a comma or a range stays literal. Order as bash gives it."""
    out = _expand(pattern)
    if len(out) > MAX_SHARDS:
        raise InputError(f"{pattern!r} expands to {len(out):,} paths, more than "
                         f"{MAX_SHARDS:,}; check the brace ranges.")
    return out


def _expand(s: str) -> list[str]:
    i = s.find("{")
    while i >= 0:
        j = _matching_brace(s, i)
        if j < 0:
            return [s]
        body = s[i + 1:j]
        rng = _RANGE.match(body)
        alts = _split_top(body)
        if rng or len(alts) > 1:
            break
        i = s.find("{", i + 1)          # a literal {...}: look further
    else:
        return [s]
    head, tail = s[:i], _expand(s[j + 1:])
    if rng:
        a, b = rng.group(1), rng.group(2)
        lo, hi = int(a), int(b)
        if abs(hi - lo) >= MAX_SHARDS:
            raise InputError(f"{{{body}}}: a range of more than {MAX_SHARDS:,} shards.")
        pad = max(len(a), len(b)) if (a.lstrip("-").startswith("0") and len(a.lstrip("-")) > 1)\
            or (b.lstrip("-").startswith("0") and len(b.lstrip("-")) > 1) else 0
        step = 1 if hi >= lo else -1
        alts = [str(v).zfill(pad) if v >= 0 else "-" + str(-v).zfill(pad - 1)
                for v in range(lo, hi + step, step)]
    else:
        alts = [x for a in alts for x in _expand(a)]
    return [head + a + t for a in alts for t in tail]


def is_remote(path: str) -> bool:
    """True for URIs (``s3://``, ``gs://`` ...) that only Ray's reader opens."""
    return bool(_SCHEME.match(str(path))) and not str(path).startswith("file://")


def shard_list(pattern) -> list[str]:
    """The tar shards of ``pattern`` (a brace pattern, a folder, or a list), in
    order. Local shards must exist (InputError naming the first missing ones)."""
    raw = [str(p) for p in pattern] if isinstance(pattern, (list, tuple)) else [str(pattern)]
    paths: list[str] = []
    for p in raw:
        for q in expand_braces(p):
            if not is_remote(q) and Path(q).is_dir():
                tars = sorted(str(t) for t in Path(q).iterdir()
                              if t.suffix == ".tar" and t.is_file())
                if not tars:
                    raise InputError(f"{q}: the folder holds no .tar shards.")
                paths.extend(tars)
            else:
                paths.append(q)
    if not paths:
        raise InputError(f"{pattern!r}: no WebDataset shards.")
    missing = [p for p in paths if not is_remote(p) and not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InputError(f"WebDataset shard(s) not found: {', '.join(missing[:3])}{more}. "
                         "Check the pattern (e.g. 'shards/{00000..00099}.tar').")
    if len(set(paths)) != len(paths):
        raise InputError(f"{pattern!r}: a shard is listed twice.")
    return paths


@dataclass(frozen=True)
class Shards:
    """A WebDataset input: the pattern as given and the shard paths it names."""

    pattern: str
    paths: tuple

    @classmethod
    def of(cls, pattern) -> "Shards":
        shown = pattern if isinstance(pattern, str) else ",".join(map(str, pattern))
        return cls(shown, tuple(shard_list(pattern)))

    def source(self) -> dict:
        return {"kind": "webdataset", "shards": self.pattern, "n_shards": len(self.paths)}


# --------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------

def split_member(name: str) -> tuple[Optional[str], Optional[str]]:
    """(key, suffix) of a member name, as Ray Data's reader splits it; (None,
    None) for a name without a dot in its file name."""
    m = _MEMBER.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


def wanted_suffix(suffix: str) -> bool:
    """Members a sample needs (images and the caption); others are not read."""
    return str(suffix).lower() in IMAGE_SUFFIXES + (CAPTION_SUFFIX,)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


@dataclass(frozen=True)
class Sample:
    """A usable sample: its key, image suffix, image bytes and caption."""

    key: str
    ext: str
    image: bytes
    caption: str


def check_sample(shard: str, key: str, members: dict, limits: ImageLimits = ImageLimits()
                 ) -> tuple[Optional[Sample], Optional[Skipped]]:
    """``(Sample, None)``, or ``(None, Skipped)`` saying why the sample is left
    out. ``members``: suffix -> bytes (None/missing for an absent member)."""
    got = {str(k).lower(): v for k, v in members.items()
           if isinstance(v, (bytes, bytearray, memoryview))}
    images = [s for s in IMAGE_SUFFIXES if s in got]
    where = f"{shard}/{key}"
    if not images:
        return None, Skipped(where, "no image member (.jpg, .jpeg, .png or .webp) in this "
                                    "sample; skipped.")
    if len(images) > 1:
        return None, Skipped(where, f"several image members ({', '.join('.' + s for s in images)})"
                                    "; keep one image per key. Skipped.")
    ext = images[0]
    where = f"{where}.{ext}"
    data = bytes(got[ext])
    if CAPTION_SUFFIX not in got:
        return None, Skipped(where, "no caption (.txt member) for this image; skipped.")
    try:
        caption = bytes(got[CAPTION_SUFFIX]).decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, Skipped(where, "its caption (.txt) is not UTF-8 text; skipped.")
    if not caption:
        return None, Skipped(where, "empty caption (.txt); skipped.")
    if not data:
        return None, Skipped(where, "empty image member (0 bytes); skipped.")
    if len(data) > limits.max_file_bytes:
        return None, Skipped(where, f"the image is {_mb(len(data))}, more than the "
                                    f"{_mb(limits.max_file_bytes)} allowed for one image; "
                                    "skipped.")
    return Sample(key, ext, data, caption), None


def open_image_bytes(data: bytes, where, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """:func:`clipgeom.images.open_image` for bytes already read (a tar member):
    the same size caps, decoding rules and messages, naming ``where``."""
    where = Path(str(where))
    if not data:
        raise InputError(f"{where}: the file is empty (0 bytes); it is not an image.")
    if len(data) > limits.max_file_bytes:
        raise InputError(f"{where}: the file is {_mb(len(data))}, more than the "
                         f"{_mb(limits.max_file_bytes)} allowed for one image. Use a "
                         "smaller file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(where, bytes(data), limits)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{where}: refused as a possible decompression bomb ({exc}). "
                         "Resize the image or use a smaller one.") from None


def iter_tar(path: str) -> Iterator[tuple[str, dict]]:
    """(key, {suffix: bytes}) per sample of a local tar, in order. Only the
    members :func:`wanted_suffix` names are read; keys must be contiguous."""
    seen: set = set()
    cur_key, cur = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                key, suffix = split_member(info.name)
                if key is None:
                    continue
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, cur
                        seen.add(cur_key)
                    if key in seen:
                        raise InputError(
                            f"{path}: the members of key {key!r} are not adjacent; a "
                            "WebDataset shard keeps each sample's files together "
                            "(re-create it with `tar --sort=name`).")
                    cur_key, cur = key, {}
                if not wanted_suffix(suffix):
                    continue
                if suffix in cur:
                    raise InputError(f"{path}: member {info.name!r} appears twice.")
                cur[suffix] = tf.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"{path}: not a readable tar shard ({exc}).") from None
    if cur_key is not None:
        yield cur_key, cur


# --------------------------------------------------------------------------
# Records -> ItemList
# --------------------------------------------------------------------------

def items_from_records(shards: list, records: list, *, source: dict, root: Path,
                       strict: bool = False, paths: Optional[list] = None
                       ) -> tuple[ItemList, list]:
    """The :class:`ItemList` of per-shard sample records, and, per shard, the
    image/text row of each record (-1 when it is left out).

    ``records[k]``: the samples of ``shards[k]`` in tar order, each either
    ``("ok", key, ext, caption)`` or ``("skip", item, reason)``. A key seen
    in an earlier sample is skipped. Image row i and text row i are one
    sample (image_id = text_id = key); ``source`` = ``<shard>/<key>.<ext>``;
    ``paths[k][j]`` (the local engine's extracted files) fills ``path``.
    """
    col = _Collector(strict)
    first: dict = {}
    ids, srcs, caps, shard_col, file_paths = [], [], [], [], []
    rows_of: list = []
    for k, (shard, recs) in enumerate(zip(shards, records)):
        rows = []
        for j, rec in enumerate(recs):
            if rec[0] == "skip":
                col.bad(rec[1], rec[2])
                rows.append(-1)
                continue
            _, key, ext, caption = rec
            item = f"{shard}/{key}.{ext}"
            if key in first:
                col.bad(item, f"duplicate key {key!r} (first in {first[key]}); skipped.")
                rows.append(-1)
                continue
            first[key] = shard
            rows.append(len(ids))
            ids.append(key)
            srcs.append(item)
            caps.append(caption)
            shard_col.append(shard)
            file_paths.append(paths[k][j] if paths is not None else None)
        rows_of.append(rows)
    images = pd.DataFrame({"image_id": pd.Series(ids, dtype=object),
                           "source": pd.Series(srcs, dtype=object),
                           "path": pd.Series(file_paths, dtype=object),
                           "shard": pd.Series(shard_col, dtype=object)})
    texts = pd.DataFrame({"text_id": pd.Series(ids, dtype=object),
                          "caption": pd.Series(caps, dtype=object),
                          "image_id": pd.Series(ids, dtype=object)})
    return ItemList(images=images, texts=texts, skipped=col.items, root=root,
                    source=source), rows_of


def from_webdataset(shards, work_dir, *, strict: bool = False,
                    limits: ImageLimits = ImageLimits()) -> ItemList:
    """Read local WebDataset shards with ``tarfile`` for the local engine: the
    images of usable samples are written under a new folder in ``work_dir``
    (keep it until the job ends; removed here on error)."""
    if not isinstance(shards, Shards):
        shards = Shards.of(shards)
    remote = [p for p in shards.paths if is_remote(p)]
    if remote:
        raise InputError(f"{remote[0]}: the local engine reads local tar files only; "
                         "use --engine ray to read shards from object storage.")
    total = sum(Path(p).stat().st_size for p in shards.paths)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work_dir).free
    if total > free:
        raise InputError(f"{shards.pattern}: extracting the images needs up to {total:,} "
                         f"bytes but only {free:,} are free under {work_dir}.")
    dest = Path(tempfile.mkdtemp(prefix="webdataset-", dir=work_dir))
    try:
        records, paths = [], []
        col = _Collector(strict)          # strict: stop at the first bad sample
        for k, shard in enumerate(shards.paths):
            out = dest / f"{k:05d}"
            out.mkdir()
            recs, files = [], []
            for key, members in iter_tar(shard):
                sample, skip = check_sample(shard, key, members, limits)
                if skip is not None:
                    col.bad(skip.item, skip.reason)
                    recs.append(("skip", skip.item, skip.reason))
                    files.append(None)
                    continue
                f = out / f"{len(recs):08d}.{sample.ext}"     # never a member's own name
                f.write_bytes(sample.image)
                recs.append(("ok", sample.key, sample.ext, sample.caption))
                files.append(str(f))
            records.append(recs)
            paths.append(files)
        source = dict(shards.source(), extracted_to=str(dest))
        items, _ = items_from_records(list(shards.paths), records, source=source,
                                      root=dest, strict=strict, paths=paths)
        if not len(items.images):
            raise InputError(f"{shards.pattern}: no usable sample in {len(shards.paths)} "
                             f"shard(s); {len(items.skipped)} skipped"
                             + (f", first: {items.skipped[0]}" if items.skipped else "")
                             + ".")
        return items
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def extracted_folder(items: ItemList) -> Optional[str]:
    """The work folder :func:`from_webdataset` wrote images into (to remove)."""
    return (items.source or {}).get("extracted_to")


__all__ = ["Shards", "Sample", "check_sample", "expand_braces", "from_webdataset",
           "items_from_records", "iter_tar", "open_image_bytes", "shard_list",
           "split_member", "wanted_suffix", "is_remote", "extracted_folder"]
