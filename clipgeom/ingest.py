"""Importers: image folders, zip archives and MS-COCO captions -> :class:`ItemList`.

An :class:`ItemList` is what the embedding job needs: an images table (with
the absolute ``path`` of each file to decode), a texts table (captions with
their pairing) and the list of items that were left out, each with a reason
written for the user. Nothing here decodes images (the embedding job does,
with :func:`clipgeom.images.open_image`) or writes a dataset.

Folder layout (also the layout inside a zip)
--------------------------------------------
- Every file with an image extension (:data:`clipgeom.images.IMAGE_EXTENSIONS`,
  any case) under the folder is an image, in sub-folders too unless
  ``recursive=False``. Hidden files and folders (name starting with ``.``)
  and ``__MACOSX`` folders are ignored, as are files with other extensions.
- ``image_id`` is the path relative to the folder without its extension
  (``cats/tom``); when two files differ only by extension (``a.jpg``,
  ``a.png``) both keep their extension (``a.jpg``, ``a.png``). ``source`` is
  the relative POSIX path. Images are listed in sorted path order.
- An optional captions file (``.csv``, ``.tsv`` or ``.jsonl``, see
  :mod:`clipgeom.captions`) has the columns ``image`` (relative path, or bare
  file name when it is unique in the folder; empty = an unpaired caption) and
  ``caption``; ``label`` is optional and applies to the image and the text
  (a text without its own label gets its image's); other columns are kept as
  text metadata. ``text_id`` is ``<captions file name>:<line>``.
  Without ``captions`` a file named ``captions.csv``, ``captions.tsv`` or
  ``captions.jsonl`` at the top of the folder is used (pass
  ``captions=False`` to import images only).

Bad items are collected as :class:`Skipped` (or raised with ``strict=True``):
an empty (0-byte) image file; a caption row naming a missing, skipped,
ambiguous or non-image file; an empty caption; a repeated (image, caption)
row; a label that contradicts an earlier label for the same image.
Problems with a whole file (not UTF-8, missing column, unreadable zip or
JSON) raise :class:`~clipgeom.errors.InputError`.

Zip archives are extracted safely (:func:`safe_extract`): names are checked
(no absolute paths, ``..``, drive letters, backslashes, control characters,
duplicates), symlinks, special files and encrypted entries are refused, and
the sizes declared in the central directory are checked against
:class:`ZipLimits` before anything is written (per member, in all against an
absolute cap, ``CLIPGEOM_MAX_EXTRACT_BYTES`` = 4 GiB by default, in all
against the archive's size, and against the free disk space less a margin),
then enforced again on the bytes actually written. An import extracts only
the images and the one captions file (:func:`import_selection`); every other
member is left in the archive and listed as skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ._atomic import replacing
from .captions import read_captions, read_text
from .errors import InputError
from .images import IMAGE_EXTENSIONS

#: Caption file names recognised at the top of a folder or zip.
CAPTIONS_NAMES = ("captions.csv", "captions.tsv", "captions.jsonl")
_CAPTION_SUFFIXES = (".csv", ".tsv", ".jsonl")
_EXT_LIST = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

@dataclass
class Skipped:
    """An item left out of an import: ``item`` is a file path or ``file:line``
    (``file:annotations[i]`` for COCO JSON); ``reason`` says why."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass
class ItemList:
    """Images and captions ready to embed.

    images: image_id (unique str), source (POSIX path relative to ``root``),
    path (absolute path to decode; not stored), optional label, metadata.
    texts: text_id (unique str), caption, image_id (None = unpaired),
    optional label, metadata.
    """

    images: pd.DataFrame
    texts: pd.DataFrame
    skipped: list[Skipped]
    root: Path
    source: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_texts(self) -> int:
        return len(self.texts)

    def images_table(self) -> pd.DataFrame:
        """The images table without the ``path`` column (what the store keeps)."""
        return self.images.drop(columns=["path"], errors="ignore")

    def skipped_records(self) -> list[dict]:
        """Skipped items as JSON-ready dicts (for the dataset manifest)."""
        return [{"item": s.item, "reason": s.reason} for s in self.skipped]

    def summary(self) -> str:
        paired = int(self.texts["image_id"].notna().sum()) if len(self.texts) else 0
        return (f"{self.n_images} images, {self.n_texts} captions ({paired} "
                f"paired), {len(self.skipped)} skipped")


class _Collector:
    """Collects Skipped items, or raises on the first one when strict."""

    def __init__(self, strict: bool):
        self.strict = bool(strict)
        self.items: list[Skipped] = []

    def bad(self, item: str, reason: str) -> None:
        if self.strict:
            raise InputError(
                f"{item}: {reason} (strict mode stops at the first bad item; "
                "without it this item would be skipped)."
            )
        self.items.append(Skipped(str(item), reason))


def _nothing(root_display: str, skipped: list[Skipped]) -> InputError:
    if skipped:
        return InputError(
            f"{root_display}: nothing to import: all {len(skipped)} items were "
            f"skipped. First: {skipped[0]}"
        )
    return InputError(
        f"{root_display}: no image files ({_EXT_LIST}) and no captions found. "
        "Point at the folder that holds the images."
    )


# --------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------

def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _scan_images(root: Path, recursive: bool) -> list[str]:
    """Relative POSIX paths of image files under root, sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [] if not recursive else sorted(
            d for d in dirnames if not _hidden(d))
        rel_dir = os.path.relpath(dirpath, root)
        for fn in filenames:
            if _hidden(fn) or Path(fn).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def _unique_ids(rels: list[str]) -> list[str]:
    stems = [posixpath.splitext(r)[0] for r in rels]
    counts = Counter(stems)
    ids = [r if counts[s] > 1 else s for r, s in zip(rels, stems)]
    seen: set[str] = set()
    out = []
    for i in ids:
        j, k = i, 2
        while j in seen:
            j, k = f"{i}~{k}", k + 1
        seen.add(j)
        out.append(j)
    return out


def _find_captions_file(root: Path, where: str) -> Path | None:
    try:
        names = [p for p in root.iterdir() if p.is_file()]
    except OSError as exc:
        raise InputError(f"{where}: cannot be listed ({exc.strerror or exc}).") from None
    hits = sorted(p for p in names if p.name.lower() in CAPTIONS_NAMES)
    if len(hits) > 1:
        raise InputError(
            f"{where}: several captions files ({', '.join(p.name for p in hits)}); "
            "keep exactly one of captions.csv, captions.tsv or captions.jsonl."
        )
    return hits[0] if hits else None


class _Resolver:
    """Maps the ``image`` cell of a caption row to an image row."""

    def __init__(self, root: Path, rels: list[str], ids: list[str],
                 skipped: dict[str, str], recursive: bool,
                 absent: dict[str, str] | None = None):
        self.root = root
        self.absent = absent or {}
        self.recursive = recursive
        self.by_rel = {r: k for k, r in enumerate(rels)}
        self.by_name: dict[str, list[str]] = {}
        for r in list(rels) + list(skipped):
            self.by_name.setdefault(posixpath.basename(r), []).append(r)
        self.lower = {r.lower(): r for r in list(rels) + list(skipped)}
        self.by_id = {i: r for i, r in zip(ids, rels)}
        self.skipped = skipped

    def resolve(self, ref) -> tuple[int | None, str | None]:
        raw = str(ref)
        s = raw.strip().replace("\\", "/")
        if os.path.isabs(s):
            try:
                s = Path(s).resolve().relative_to(self.root.resolve()).as_posix()
            except (ValueError, OSError):
                return None, (f"image {raw!r} is an absolute path outside the "
                              "images folder; use a path relative to it.")
        s = posixpath.normpath(s)
        if s == ".." or s.startswith("../"):
            return None, (f"image {raw!r} points outside the images folder; use "
                          "a path relative to it.")
        if s in self.by_rel:
            return self.by_rel[s], None
        if s in self.skipped:
            return None, f"image {raw!r} was skipped ({self.skipped[s]})."
        if "/" not in s and s in self.by_name:
            cands = self.by_name[s]
            if len(cands) > 1:
                return None, (f"image {raw!r} is ambiguous: it matches "
                              f"{', '.join(sorted(cands)[:4])}; give the path "
                              "relative to the images folder.")
            r = cands[0]
            if r in self.skipped:
                return None, f"image {raw!r} was skipped ({self.skipped[r]})."
            return self.by_rel[r], None
        p = self.root / s
        if s in self.absent:  # a zip member that was not extracted
            return None, (f"{raw!r} is not an image file (extensions "
                          f"read: {_EXT_LIST}).")
        if p.is_file():
            if Path(s).suffix.lower() not in IMAGE_EXTENSIONS:
                return None, (f"{raw!r} is not an image file (extensions "
                              f"read: {_EXT_LIST}).")
            if not self.recursive and "/" in s:
                return None, (f"image {raw!r} is in a sub-folder, which is not "
                              "scanned (recursive=False).")
            return None, (f"image {raw!r} is a hidden file or in a hidden "
                          "folder, which are not imported.")
        hint = ""
        if s.lower() in self.lower:
            hint = f" Did you mean {self.lower[s.lower()]!r}? (names are case-sensitive)"
        elif s in self.by_id:
            hint = f" Did you mean {self.by_id[s]!r}? (give the file extension)"
        return None, f"image file {raw!r} not found in the images folder.{hint}"


def _is_missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _from_tree(root: Path, captions: Path | None, *, strict: bool,
               recursive: bool, root_display: str, captions_display: str | None,
               source: dict, absent: dict[str, str] | None = None) -> ItemList:
    """Shared core of :func:`from_folder` and :func:`from_zip`.

    ``absent``: files under ``root`` (relative paths) that exist in the
    source but were not extracted (zip members that are not images), with
    the reason; captions naming them get the same message as in a folder.
    """
    col = _Collector(strict)
    rels_all = _scan_images(root, recursive)
    rels: list[str] = []
    skipped_files: dict[str, str] = {}
    for r in rels_all:
        p = root / r
        try:
            size = p.stat().st_size
        except OSError:
            reason = "broken link or unreadable file; it is not an image."
            col.bad(f"{root_display}/{r}", reason)
            skipped_files[r] = reason.rstrip(".")
            continue
        if size == 0:
            reason = "empty file (0 bytes); it is not an image."
            col.bad(f"{root_display}/{r}", reason)
            skipped_files[r] = "empty file (0 bytes)"
            continue
        rels.append(r)
    ids = _unique_ids(rels)
    abs_root = Path(os.path.abspath(root))
    img_labels: list = [None] * len(rels)
    label_line: list = [None] * len(rels)

    tcols: dict[str, list] = {"text_id": [], "caption": [], "image_id": []}
    text_img_rows: list[int | None] = []
    has_label = False
    meta_cols: list[str] = []
    if captions is not None:
        caps = read_captions(captions)
        if "image" not in caps.columns:
            raise InputError(
                f"{captions}: no 'image' column (found: {', '.join(caps.columns)}). "
                "Add an 'image' column with the image file (path relative to "
                "the images folder, or its file name); leave it empty for a "
                "caption without an image."
            )
        lines = caps.attrs.get("lines") or list(range(2, len(caps) + 2))
        has_label = "label" in caps.columns
        meta_cols = [c for c in caps.columns if c not in ("caption", "image", "label")]
        resolver = _Resolver(root, rels, ids, skipped_files, recursive, absent)
        cap_name = Path(captions_display or captions.name).name
        seen: dict[tuple, int] = {}
        if has_label:
            tcols["label"] = []
        for c in meta_cols:
            tcols[c] = []
        names = list(caps.columns)
        # One row dict at a time (to_dict("records") would hold them all).
        records = (dict(zip(names, vals)) for vals in
                   zip(*(caps[c].tolist() for c in names)))
        for rec, line in zip(records, lines):
            item = f"{captions_display}:{line}"
            raw_cap = rec.get("caption")
            cap = "" if _is_missing(raw_cap) else str(raw_cap).strip()
            if cap == "":
                col.bad(item, "empty caption; write a caption or delete the row.")
                continue
            ref = rec.get("image")
            row = None
            if not _is_missing(ref) and str(ref).strip() != "":
                row, why = resolver.resolve(ref)
                if why is not None:
                    col.bad(item, why)
                    continue
            key = (row, cap)
            if key in seen:
                what = "image" if row is not None else "unpaired caption"
                col.bad(item, f"duplicate of line {seen[key]} (same {what} "
                              "and caption).")
                continue
            label = rec.get("label") if has_label else None
            label = None if _is_missing(label) else label
            if label is not None and row is not None:
                prev = img_labels[row]
                if prev is not None and prev != label:
                    col.bad(item, f"label {label!r} contradicts label {prev!r} "
                                  f"given to image {rels[row]!r} on line "
                                  f"{label_line[row]}.")
                    continue
                if prev is None:
                    img_labels[row], label_line[row] = label, line
            seen[key] = line
            tcols["text_id"].append(f"{cap_name}:{line}")
            tcols["caption"].append(cap)
            tcols["image_id"].append(ids[row] if row is not None else None)
            text_img_rows.append(row)
            if has_label:
                tcols["label"].append(label)
            for c in meta_cols:
                tcols[c].append(rec.get(c))
        del caps, records

    images = pd.DataFrame({
        "image_id": pd.Series(ids, dtype=object),
        "source": pd.Series(rels, dtype=object),
        "path": pd.Series([str(abs_root / r) for r in rels], dtype=object),
    })
    if has_label:
        images["label"] = pd.Series(img_labels, dtype=object)
    if has_label:  # a text without its own label gets its image's
        tl = tcols["label"]
        for k, row in enumerate(text_img_rows):
            if tl[k] is None and row is not None:
                tl[k] = img_labels[row]
    texts = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in tcols.items()})
    if not len(images) and not len(texts):
        raise _nothing(root_display, col.items)
    return ItemList(images=images, texts=texts, skipped=col.items,
                    root=abs_root, source=source)


def from_folder(images_dir, captions=None, *, strict: bool = False,
                recursive: bool = True) -> ItemList:
    """Import a folder of images with an optional captions file.

    ``captions``: path to a .csv/.tsv/.jsonl file; None = use
    ``captions.{csv,tsv,jsonl}`` at the top of the folder if there is one;
    False = images only. See the module docstring for the rules.
    """
    root = Path(images_dir)
    if not root.exists():
        raise InputError(f"{root}: images folder not found.")
    if not root.is_dir():
        raise InputError(f"{root}: is a file; expected the folder that holds the images.")
    cap_path: Path | None
    if captions is None:
        cap_path = _find_captions_file(root, str(root))
    elif captions is False:
        cap_path = None
    else:
        cap_path = Path(captions)
        if cap_path.suffix.lower() not in _CAPTION_SUFFIXES:
            raise InputError(
                f"{cap_path}: captions must be a .csv, .tsv or .jsonl file with "
                "'image' and 'caption' columns."
            )
    source = {"kind": "folder", "path": str(root),
              "captions": None if cap_path is None else str(cap_path),
              "recursive": bool(recursive)}
    return _from_tree(root, cap_path, strict=strict, recursive=recursive,
                      root_display=str(root),
                      captions_display=None if cap_path is None else str(cap_path),
                      source=source)


# --------------------------------------------------------------------------
# Zip archives
# --------------------------------------------------------------------------

DEFAULT_MAX_EXTRACT_BYTES = 4 * 1024 ** 3


def max_extract_bytes() -> int:
    """``CLIPGEOM_MAX_EXTRACT_BYTES`` (default 4 GiB): the absolute cap on the
    bytes one archive may extract to."""
    raw = os.environ.get("CLIPGEOM_MAX_EXTRACT_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_EXTRACT_BYTES
    try:
        val = int(raw.replace("_", ""))
    except ValueError:
        val = 0
    if val < 1:
        raise InputError(f"CLIPGEOM_MAX_EXTRACT_BYTES={raw!r} is not a positive number "
                         f"of bytes; unset it to use the default "
                         f"({DEFAULT_MAX_EXTRACT_BYTES:,}).")
    return val


@dataclass(frozen=True)
class ZipLimits:
    """Caps for zip extraction (zip-bomb and resource guards).

    max_total_uncompressed: bytes written for the whole archive, absolutely
    (default ``CLIPGEOM_MAX_EXTRACT_BYTES``, 4 GiB).
    max_files: number of files extracted.
    max_ratio: uncompressed / compressed size of one member, checked for
    members bigger than ``ratio_min_bytes`` (small files of one colour can
    legitimately compress very well); and of the whole extraction against
    the archive's size once it exceeds ``total_ratio_min_bytes`` (thousands of
    small highly compressed members are a zip bomb too).
    max_member_bytes: size of one extracted file.
    free_margin_bytes: free disk space that must remain after extracting.
    """

    max_total_uncompressed: int = field(default_factory=max_extract_bytes)
    max_files: int = 50_000
    max_ratio: float = 200.0
    max_member_bytes: int = 512 * 1024 ** 2
    ratio_min_bytes: int = 1024 ** 2
    total_ratio_min_bytes: int = 64 * 1024 ** 2
    free_margin_bytes: int = 256 * 1024 ** 2


_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError,
                    NotImplementedError, RuntimeError, ValueError)


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.exists():
        raise InputError(f"{zip_path}: zip file not found.")
    if zip_path.is_dir():
        raise InputError(f"{zip_path}: is a folder; expected a .zip file.")
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise InputError(
            f"{zip_path}: not a valid zip archive ({exc}); it may be truncated "
            "or another format. Re-create or re-download it."
        ) from None
    except _ZIP_READ_ERRORS as exc:
        raise InputError(f"{zip_path}: cannot be read as a zip archive ({exc}).") from None


def _check_name(info: zipfile.ZipInfo, where: str) -> list[str]:
    """Validated path components of a member name ([] for the root itself)."""
    name = info.filename
    bad = None
    if "\\" in name:
        bad = "contains a backslash"
    elif name.startswith("/"):
        bad = "is an absolute path"
    elif _DRIVE.match(name):
        bad = "starts with a drive letter"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        bad = "contains control characters"
    elif ".." in name.split("/"):
        bad = "contains a '..' component"
    if bad is None:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            bad = "is a symbolic link"
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            bad = "is a special file (device, pipe or socket)"
        elif info.flag_bits & 0x1:
            bad = "is encrypted (password-protected archives are not supported)"
    if bad is not None:
        raise InputError(
            f"{where}: refused: member {name!r} {bad}. Re-create the zip from "
            "a plain folder of images (no links, no passwords)."
        )
    return [p for p in name.split("/") if p not in ("", ".")]


def _plan(zf: zipfile.ZipFile, where: str, limits: ZipLimits,
          select=None, left_out: list | None = None,
          archive_bytes: int | None = None) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every member name, then the sizes of the selected files.

    Returns (info, relative path) of the files to extract. ``select`` (a
    function of the relative path) limits the selection: True extracts,
    False skips silently, a string skips with that reason, which is added to
    ``left_out`` as ``(relative path, reason)``. By default every file except
    ``__MACOSX`` and hidden ones.
    """
    files: dict[str, zipfile.ZipInfo] = {}
    dirs: set[str] = set()
    for info in zf.infolist():
        parts = _check_name(info, where)
        if not parts:
            continue
        rel = "/".join(parts)
        for k in range(1, len(parts)):
            dirs.add("/".join(parts[:k]))
        if info.is_dir():
            dirs.add(rel)
            continue
        if rel in files:
            raise InputError(
                f"{where}: refused: member {rel!r} appears more than once. "
                "Re-create the zip without duplicate entries."
            )
        files[rel] = info
    clash = sorted(set(files) & dirs)
    if clash:
        raise InputError(
            f"{where}: refused: {clash[0]!r} is both a file and a folder in the archive."
        )
    plan = []
    for rel, info in files.items():
        parts = rel.split("/")
        if select is None:
            if any(_hidden(p) for p in parts):
                continue
        else:
            verdict = select(rel)
            if verdict is not True:
                if isinstance(verdict, str) and left_out is not None:
                    left_out.append((rel, verdict))
                continue
        plan.append((info, rel))
    if len(plan) > limits.max_files:
        raise InputError(
            f"{where}: refused: {len(plan):,} files, more than the "
            f"{limits.max_files:,} allowed. Split the archive."
        )
    total = 0
    for info, rel in plan:
        size, packed = int(info.file_size), int(info.compress_size)
        if size > limits.max_member_bytes:
            raise InputError(
                f"{where}: refused: {rel!r} would extract to {size:,} bytes, "
                f"more than the {limits.max_member_bytes:,} allowed for one file."
            )
        if size > limits.ratio_min_bytes and size > limits.max_ratio * max(packed, 1):
            raise InputError(
                f"{where}: refused: {rel!r} is compressed {size / max(packed, 1):,.0f}:1 "
                f"(more than {limits.max_ratio:g}:1), which looks like a zip bomb."
            )
        total += size
    if total > limits.max_total_uncompressed:
        raise InputError(
            f"{where}: refused: the files would extract to {total:,} bytes, "
            f"more than the {limits.max_total_uncompressed:,} allowed "
            "(CLIPGEOM_MAX_EXTRACT_BYTES)."
        )
    if archive_bytes is not None and total > limits.total_ratio_min_bytes \
            and total > limits.max_ratio * max(archive_bytes, 1):
        raise InputError(
            f"{where}: refused: the files would extract to {total:,} bytes from a "
            f"{archive_bytes:,}-byte archive ({total / max(archive_bytes, 1):,.0f}:1, "
            f"more than {limits.max_ratio:g}:1), which looks like a zip bomb."
        )
    return plan


def _stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str, dst,
            where: str, limits: ZipLimits, total: int) -> int:
    """Copy one member into the open file ``dst``, counting the bytes
    actually written; returns the new running total."""
    written = 0
    packed = max(int(info.compress_size), 1)
    try:
        with zf.open(info) as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                written += len(chunk)
                total += len(chunk)
                if written > info.file_size:
                    raise InputError(
                        f"{where}: refused: {rel!r} holds more data than its "
                        f"header declares ({info.file_size:,} bytes); the "
                        "archive is corrupt or hostile."
                    )
                if written > limits.max_member_bytes or \
                        total > limits.max_total_uncompressed or \
                        (written > limits.ratio_min_bytes
                         and written > limits.max_ratio * packed):
                    raise InputError(
                        f"{where}: refused: extracting {rel!r} exceeded the "
                        "size limits (possible zip bomb)."
                    )
                dst.write(chunk)
    except InputError:
        raise
    except _ZIP_READ_ERRORS as exc:
        raise InputError(
            f"{where}: member {rel!r} is corrupt ({exc}). Re-create or "
            "re-download the archive."
        ) from None
    if written != info.file_size:
        raise InputError(
            f"{where}: member {rel!r} is truncated ({written:,} of "
            f"{info.file_size:,} bytes). Re-create or re-download the archive."
        )
    return total


def _check_space(dest: Path, needed: int, where: str, margin: int = 0) -> None:
    """InputError unless ``needed`` bytes fit under ``dest`` with ``margin``
    bytes of free space left over (checked before anything is written)."""
    try:
        free = shutil.disk_usage(dest).free
    except OSError:
        return
    if needed > free - margin:
        raise InputError(
            f"{where}: extracting needs {needed:,} bytes but only {free:,} are "
            f"free under {dest}, and {margin:,} must stay free. Free some disk "
            "space or import a smaller archive."
        )


def safe_extract(zip_path, dest, *, limits: ZipLimits | None = None,
                 select=None, left_out: list | None = None) -> list[str]:
    """Extract a zip into the existing, empty folder ``dest``, safely.

    Every member name is checked first; the selected files' declared sizes
    are checked against ``limits`` (per file, in all, and in all against the
    archive's own size) and against the free disk space less
    ``limits.free_margin_bytes``; then each file is streamed with its bytes
    counted. ``select`` (a function of the relative path, see :func:`_plan`)
    chooses the files; by default all but hidden files and ``__MACOSX``.
    Members it skips with a reason are appended to ``left_out`` as
    ``(relative path, reason)``. Returns the extracted relative paths. On
    error, files already written stay in ``dest`` (callers extract into a
    fresh folder and remove it).
    """
    limits = limits or ZipLimits()
    zip_path, dest = Path(zip_path), Path(dest)
    where = str(zip_path)
    with _open_zip(zip_path) as zf:
        plan = _plan(zf, where, limits, select, left_out,
                     archive_bytes=_file_size(zip_path))
        _check_space(dest, sum(int(i.file_size) for i, _ in plan), where,
                     limits.free_margin_bytes)
        real_dest = os.path.realpath(dest)
        total = 0
        out = []
        for info, rel in plan:
            target = dest / rel
            if not os.path.realpath(target).startswith(real_dest + os.sep):
                raise InputError(f"{where}: refused: {rel!r} would be written "
                                 f"outside {dest}.")  # pragma: no cover
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as dst:
                    total = _stream(zf, info, rel, dst, where, limits, total)
            except OSError as exc:
                raise InputError(
                    f"{where}: cannot extract {rel!r} into {dest} "
                    f"({exc.strerror or exc})."
                ) from None
            out.append(rel)
    return out


def extract_member(zip_path, member: str, dest, *,
                   limits: ZipLimits | None = None) -> Path:
    """Extract one member of a zip to the file ``dest`` (atomically), with
    the same checks as :func:`safe_extract`. InputError if it is missing."""
    limits = limits or ZipLimits()
    zip_path, dest = Path(zip_path), Path(dest)
    where = str(zip_path)
    want = "/".join(p for p in member.split("/") if p not in ("", "."))
    with _open_zip(zip_path) as zf:
        plan = _plan(zf, where, limits, select=lambda rel: rel == want,
                     archive_bytes=_file_size(zip_path))
        if not plan:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            near = [n for n in names if posixpath.dirname(n) == posixpath.dirname(want)]
            shown = ", ".join(sorted(near or names)[:12])
            raise InputError(
                f"{where}: has no member {member!r}. It contains: {shown}."
            )
        info, rel = plan[0]
        dest.parent.mkdir(parents=True, exist_ok=True)
        _check_space(dest.parent, int(info.file_size), where, limits.free_margin_bytes)
        try:
            with replacing(dest) as tmp, open(tmp, "xb") as dst:
                _stream(zf, info, rel, dst, where, limits, 0)
        except OSError as exc:
            raise InputError(
                f"{where}: cannot write {dest} ({exc.strerror or exc})."
            ) from None
    return dest


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _member_rel(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def import_selection(names) -> tuple[dict[str, object], str | None]:
    """Which members of a zip an import extracts: ``(verdicts, top)``.

    Only image files (any depth) and the one captions file are extracted:
    ``captions.csv/.tsv/.jsonl`` at the top of the archive, or at the top of
    its single top-level folder ``top`` (None when the images do not all sit
    in one folder). Verdicts (see :func:`_plan`): True = extract, False =
    skip silently (hidden files, ``__MACOSX``), a string = skip and list with
    that reason.
    """
    rels = [_member_rel(n) for n in names if not n.endswith("/")]
    rels = [r for r in rels if r and not any(_hidden(p) for p in r.split("/"))]
    images = [r for r in rels if posixpath.splitext(r)[1].lower() in IMAGE_EXTENSIONS]
    caps = [r for r in rels if posixpath.basename(r).lower() in CAPTIONS_NAMES
            and r.count("/") <= 1]
    keep = images + caps
    tops = {r.split("/", 1)[0] for r in keep}
    top = next(iter(tops)) if len(tops) == 1 and all("/" in r for r in keep) else None
    img_set = set(images)
    verdicts: dict[str, object] = {}
    for r in rels:
        if r in img_set:
            verdicts[r] = True
        elif posixpath.basename(r).lower() in CAPTIONS_NAMES:
            if posixpath.dirname(r) == (top or ""):
                verdicts[r] = True
            else:
                verdicts[r] = ("a captions file is read only at the top of the archive "
                               "(or of its single top folder); not extracted.")
        else:
            verdicts[r] = (f"not an image ({_EXT_LIST}) nor the captions file; "
                           "not extracted.")
    return verdicts, top


def _safe_stem(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40].strip("._")
    return s or "zip"


def from_zip(zip_path, work_dir, *, limits: ZipLimits | None = None,
             strict: bool = False) -> ItemList:
    """Import a zip holding images (any sub-folders) and at most one captions
    file (``captions.csv/.tsv/.jsonl`` at the top level, or at the top of
    the archive's single top-level folder).

    Only the images and that captions file are extracted (see
    :func:`import_selection`), with :func:`safe_extract` into a new folder
    inside ``work_dir`` (created if needed); every other member is listed in
    ``skipped`` with the reason (hidden files and ``__MACOSX`` are ignored
    silently). The returned paths point into ``work_dir``, so keep it until
    the images are embedded. On error the new folder is removed and nothing
    is written anywhere else. ``limits`` defaults to :class:`ZipLimits`
    (``CLIPGEOM_MAX_EXTRACT_BYTES``).
    """
    limits = limits or ZipLimits()
    zip_path = Path(zip_path)
    work_dir = Path(work_dir)
    zf = _open_zip(zip_path)  # fail fast (and name the file) before mkdir
    try:
        for info in zf.infolist():  # unsafe names are refused before anything else
            _check_name(info, str(zip_path))
        verdicts, top = import_selection(zf.namelist())
    finally:
        zf.close()
    if not any(v is True for v in verdicts.values()):
        others = [r for r, v in verdicts.items() if isinstance(v, str)]
        more = (f" Its {len(others):,} other file(s) (first: {others[0]!r}) are not "
                "extracted." if others else "")
        raise InputError(f"{zip_path.name}: no image files ({_EXT_LIST}) and no captions "
                         f"file in the archive.{more}")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{work_dir}: cannot create the work folder "
                         f"({exc.strerror or exc}).") from None
    dest = Path(tempfile.mkdtemp(prefix=f"{_safe_stem(zip_path.stem)}-", dir=work_dir))
    try:
        left_out: list[tuple[str, str]] = []
        safe_extract(zip_path, dest, limits=limits,
                     select=lambda rel: verdicts.get(rel, False), left_out=left_out)
        root = dest / top if top else dest
        disp = f"{zip_path.name}/{top}" if top else zip_path.name
        cap = _find_captions_file(root, disp)
        cap_member = None if cap is None else (f"{top}/{cap.name}" if top else cap.name)
        source = {"kind": "zip", "zip": str(zip_path), "captions": cap_member,
                  "extracted_to": str(dest), "not_extracted": len(left_out)}
        prefix = f"{top}/" if top else ""
        absent = {r[len(prefix):]: why for r, why in left_out if r.startswith(prefix)}
        items = _from_tree(root, cap, strict=strict, recursive=True,
                           root_display=disp,
                           captions_display=None if cap is None else f"{disp}/{cap.name}",
                           source=source, absent=absent)
        items.skipped = [Skipped(f"{zip_path.name}/{r}", why)
                         for r, why in left_out] + items.skipped
        return items
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


# --------------------------------------------------------------------------
# MS-COCO captions
# --------------------------------------------------------------------------

def _coco_id(v) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool) and str(v) != ""


def load_coco(path) -> tuple[list[dict], list[dict]]:
    """Read and check an MS-COCO captions JSON: (images, annotations).

    InputError naming the file and the key for invalid JSON or structure
    (``images[i].file_name`` ...).
    """
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}). Re-download the annotations file."
        ) from None
    fmt = ("an MS-COCO captions file is a JSON object with 'images' "
           "[{id, file_name}] and 'annotations' [{id, image_id, caption}]")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; {fmt}.")
    for key in ("images", "annotations"):
        if key not in data:
            raise InputError(f"{path}: key {key!r} is missing; {fmt}.")
        if not isinstance(data[key], list):
            raise InputError(
                f"{path}: key {key!r} must be a list, got "
                f"{type(data[key]).__name__}; {fmt}."
            )
    images, anns = data["images"], data["annotations"]
    for i, im in enumerate(images):
        if not isinstance(im, dict):
            raise InputError(f"{path}: images[{i}] must be an object; {fmt}.")
        if "id" not in im or not _coco_id(im["id"]):
            raise InputError(
                f"{path}: images[{i}].id is missing or not an integer/string; {fmt}.")
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            raise InputError(
                f"{path}: images[{i}].file_name is missing or not a string; {fmt}.")
    for j, a in enumerate(anns):
        if not isinstance(a, dict):
            raise InputError(f"{path}: annotations[{j}] must be an object; {fmt}.")
        for key in ("id", "image_id"):
            if key not in a or not _coco_id(a[key]):
                raise InputError(
                    f"{path}: annotations[{j}].{key} is missing or not an "
                    f"integer/string; {fmt}.")
        if not isinstance(a.get("caption"), str):
            raise InputError(
                f"{path}: annotations[{j}].caption is missing or not a string; {fmt}.")
    return images, anns


def coco_file_problem(file_name: str) -> str | None:
    """Why a COCO ``file_name`` is unsafe to join to a folder, or None."""
    if "\\" in file_name or file_name.startswith("/") or _DRIVE.match(file_name) \
            or ".." in file_name.split("/") or "\x00" in file_name:
        return (f"file_name {file_name!r} is not a plain relative path (absolute, "
                "'..' or backslashes); refused.")
    return None


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit must be a positive whole number, got {limit!r}.")
    return limit


def from_coco(annotations_json, images_dir, *, limit: int | None = None,
              strict: bool = False) -> ItemList:
    """Import MS-COCO captions: the first ``limit`` images in the JSON's
    order (all if None) with all their captions.

    image_id = str(COCO image id), source = file_name, metadata ``coco_id``;
    text_id = str(annotation id); texts keep the JSON's annotation order.
    Images missing on disk, empty or with unsafe names are skipped (with
    their captions); annotations for image ids not in the JSON, empty and
    repeated captions are skipped.
    """
    limit = _check_limit(limit)
    ann_path = Path(annotations_json)
    root = Path(images_dir)
    if not root.is_dir():
        raise InputError(f"{root}: images folder not found.")
    images, anns = load_coco(ann_path)
    col = _Collector(strict)
    where = str(ann_path)
    first_at: dict[str, int] = {}
    for i, im in enumerate(images):
        first_at.setdefault(str(im["id"]), i)
    n_caps = Counter(str(a["image_id"]) for a in anns)
    chosen = images if limit is None else images[:limit]
    abs_root = Path(os.path.abspath(root))
    ids, srcs, paths, coco_ids = [], [], [], []
    accepted: set[str] = set()
    for i, im in enumerate(chosen):
        iid, fn = str(im["id"]), im["file_name"]
        caps_note = (f"; its {n_caps[iid]} caption(s) are left out"
                     if n_caps[iid] else "")
        if first_at[iid] != i:
            col.bad(f"{where}:images[{i}]",
                    f"duplicate image id {im['id']!r} (first at images"
                    f"[{first_at[iid]}]); this entry is ignored.")
            continue
        why = coco_file_problem(fn)
        if why:
            col.bad(f"{where}:images[{i}]", why + caps_note)
            continue
        p = root / fn
        if not p.is_file():
            col.bad(str(p), f"listed as images[{i}] (id {im['id']!r}) in "
                            f"{ann_path.name} but not found in {root}{caps_note}.")
            continue
        if p.stat().st_size == 0:
            col.bad(str(p), f"empty file (0 bytes){caps_note}.")
            continue
        accepted.add(iid)
        ids.append(iid)
        srcs.append(fn)
        paths.append(str(abs_root / fn))
        coco_ids.append(im["id"])
    if any(isinstance(c, str) for c in coco_ids):
        coco_ids = [str(c) for c in coco_ids]
    t_ids, t_caps, t_imgs = [], [], []
    seen_pair: dict[tuple, int] = {}
    seen_tid: dict[str, int] = {}
    for j, a in enumerate(anns):
        iid = str(a["image_id"])
        item = f"{where}:annotations[{j}]"
        if iid not in first_at:
            col.bad(item, f"image_id {a['image_id']!r} is not in the 'images' list.")
            continue
        if iid not in accepted:
            continue  # beyond the limit, or its image was skipped
        cap = a["caption"].strip()
        if not cap:
            col.bad(item, "empty caption.")
            continue
        tid = str(a["id"])
        if tid in seen_tid:
            col.bad(item, f"duplicate annotation id {a['id']!r} (first at "
                          f"annotations[{seen_tid[tid]}]).")
            continue
        if (iid, cap) in seen_pair:
            col.bad(item, f"duplicate of annotations[{seen_pair[(iid, cap)]}] "
                          "(same image and caption).")
            continue
        seen_tid[tid] = j
        seen_pair[(iid, cap)] = j
        t_ids.append(tid)
        t_caps.append(cap)
        t_imgs.append(iid)
    img_df = pd.DataFrame({
        "image_id": pd.Series(ids, dtype=object),
        "source": pd.Series(srcs, dtype=object),
        "path": pd.Series(paths, dtype=object),
        "coco_id": pd.Series(coco_ids, dtype=object if not coco_ids or
                             isinstance(coco_ids[0], str) else "int64"),
    })
    txt_df = pd.DataFrame({
        "text_id": pd.Series(t_ids, dtype=object),
        "caption": pd.Series(t_caps, dtype=object),
        "image_id": pd.Series(t_imgs, dtype=object),
    })
    if not len(img_df) and not len(txt_df):
        raise _nothing(str(root), col.items)
    source = {"kind": "coco", "annotations": str(ann_path), "images_dir": str(root),
              "limit": limit}
    return ItemList(images=img_df, texts=txt_df, skipped=col.items,
                    root=abs_root, source=source)
