"""Hostile and faulty inputs (issue 10): each case here was accepted wrongly, or
answered with the wrong message or a traceback, before the fix it guards.

Arrays (complex, float32 overflow), caption files (unterminated quotes, size
caps, streaming memory), zip archives (bombs made of many small members,
non-image members, the absolute and free-space caps) and the CLI on top of them.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clipgeom import captions, ingest, store, validate
from clipgeom.captions import CaptionLimits, read_captions
from clipgeom.errors import ClipgeomError, InputError
from clipgeom.ingest import ZipLimits, from_zip, safe_extract

from fixtures_media import image_bytes

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*")} \
        if Path(root).exists() else set()


def emb(n, d=6, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=(n, d)) + 2.0).astype(dtype)


# --------------------------------------------------------------------------
# 1-2. Arrays: complex values, values too large for float32
# --------------------------------------------------------------------------

def test_complex_array_is_refused_not_truncated():
    x = emb(4).astype(np.complex64) + 1j  # the imaginary part would be dropped silently
    with pytest.raises(InputError, match="complex values") as err:
        validate.embeddings(x, "my array")
    assert "my array" in str(err.value)
    # A complex array whose imaginary part is zero is still refused: the user
    # must say the data are real (x.real), the dtype alone is the signal.
    with pytest.raises(InputError, match="complex values"):
        validate.embeddings(emb(4).astype(np.complex128), "z")
    with pytest.raises(InputError, match="complex values"):
        validate.check_dtype(np.dtype("c16"), "header")
    assert validate.check_dtype("<f8") == np.float64


def test_complex_npy_is_refused_by_the_importer(tmp_path, clipgeom_home):
    np.save(tmp_path / "img.npy", emb(3).astype(np.complex128) * (1 + 2j))
    np.save(tmp_path / "txt.npy", emb(3, seed=1))
    with pytest.raises(InputError, match=r"img\.npy.*complex values"):
        store.import_arrays("cx", tmp_path / "img.npy", tmp_path / "txt.npy")
    assert "cx" not in [d["name"] for d in store.list_datasets()]


def test_float64_overflow_says_too_large_and_names_the_first_row(tmp_path, clipgeom_home):
    x = emb(6, dtype=np.float64)
    x[4, 1] = 1e300          # finite in float64, Inf in float32
    x[2, 0] = -5e38          # just past float32's max (3.4e38)
    with pytest.raises(InputError) as err:
        validate.embeddings(x, "big")
    msg = str(err.value)
    assert "too large for float32" in msg and "NaN" not in msg
    assert "rows 2, 4" in msg and "row 2," in msg    # the first row, named
    # Real NaN/Inf are still called that, and both problems are told apart.
    x[0, 0] = np.nan
    msg = str(pytest.raises(InputError, validate.embeddings, x, "big").value)
    assert "NaN or Inf values in row 0" in msg and "too large for float32 in rows 2, 4" in msg
    # Through the importer (a memory-mapped float64 .npy), the file is named.
    y = emb(3, dtype=np.float64)
    y[1, 2] = 1e39
    np.save(tmp_path / "img.npy", y)
    np.save(tmp_path / "txt.npy", emb(3, seed=1))
    with pytest.raises(InputError, match=r"img\.npy.*too large for float32 in row 1"):
        store.import_arrays("big", tmp_path / "img.npy", tmp_path / "txt.npy")
    # The largest float32 itself is fine.
    ok = emb(3, dtype=np.float64)
    ok[0, 0] = float(np.finfo(np.float32).max)
    assert np.isfinite(validate.embeddings(ok, "ok")).all()


# --------------------------------------------------------------------------
# 3. CSV: an unterminated quote swallows the rest of the file
# --------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_unterminated_quote_is_refused_naming_the_line_it_opened(tmp_path):
    rows = ["image,caption"] + [f"{k},caption {k}" for k in range(1, 20)]
    rows[7] = '7,"a caption whose quote never closes'   # line 8
    p = _write(tmp_path / "c.csv", "\n".join(rows) + "\n")
    with pytest.raises(InputError) as err:
        read_captions(p)
    msg = str(err.value)
    assert "c.csv, line 8:" in msg and "never closed" in msg
    # The same in a .tsv, and with the quote in a later column on a CRLF file.
    rows = ["caption\timage\tlabel"] + [f"cap {k}\t{k}\tx" for k in range(10)]
    rows[4] = 'cap 3\t3\t"label open'                    # line 5
    p = _write(tmp_path / "c.tsv", "\r\n".join(rows) + "\r\n")
    with pytest.raises(InputError, match=r"c\.tsv, line 5: a quoted field opened"):
        read_captions(p)


def test_quote_closed_many_lines_later_is_refused_not_swallowed(tmp_path):
    # line 3 opens a quote; line 7 starts with a quoted field: its first quote
    # closes line 3's, so rows 4-6 would all be one caption (plus junk).
    text = ('image,caption\n0,fine\n1,"an open quote, more\n2,two\n3,three\n'
            '4,four\n"5",five\n6,six\n')
    p = _write(tmp_path / "q.csv", text)
    with pytest.raises(InputError) as err:
        read_captions(p)
    msg = str(err.value)
    assert "q.csv, line 3:" in msg and "only closes on line 7" in msg
    # An unescaped quote inside a quoted caption is refused on its own line.
    p = _write(tmp_path / "u.csv", 'image,caption\n0,fine\n1,"say "hi" there"\n2,b\n')
    with pytest.raises(InputError, match=r"u\.csv, line 3: text after the closing quote"):
        read_captions(p)
    # A legitimately quoted multi-line caption and doubled quotes still read.
    good = _write(tmp_path / "g.csv", 'image,caption\n0,"two\nlines"\n1,"say ""hi"""\n2,b"c\n')
    df = read_captions(good)
    assert df["caption"].tolist() == ["two\nlines", 'say "hi"', 'b"c']
    assert df.attrs["lines"] == [2, 4, 5]


def test_a_runaway_quote_in_a_big_file_is_named_before_the_field_limit(tmp_path):
    # 20,000 rows after an open quote: the csv module's own field limit stops
    # the read; the message still names the line where the quote opened.
    lines = ["caption,image", "ok,0", '"runaway,1'] + [f"row {k},{k}" for k in range(20_000)]
    p = _write(tmp_path / "r.csv", "\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        read_captions(p)
    assert "r.csv, line 3:" in str(err.value)
    assert "quote" in str(err.value)


# --------------------------------------------------------------------------
# 4. Caps per file and per caption; streaming memory
# --------------------------------------------------------------------------

def test_caption_caps_are_enforced_and_stated(tmp_path, monkeypatch):
    p = _write(tmp_path / "c.csv", "caption,image\n" + "".join(f"c{k},{k}\n" for k in range(6)))
    lim = CaptionLimits(max_captions=5, max_chars=50)
    with pytest.raises(InputError) as err:
        read_captions(p, limits=lim)
    msg = str(err.value)
    assert "more than 5 captions" in msg and "CLIPGEOM_MAX_CAPTIONS" in msg
    assert "50 characters" in msg                  # both caps are stated
    assert len(read_captions(p, limits=CaptionLimits(max_captions=6))) == 6
    # One caption over the length cap: refused, naming its line, in every format.
    long = "x" * 51
    cases = {
        "l.csv": f"caption,image\nok,0\n{long},1\n",
        "l.tsv": f"caption\timage\nok\t0\n{long}\t1\n",
        "l.txt": f"ok\n{long}\n",
        "l.jsonl": '{"caption": "ok"}\n{"caption": "%s"}\n' % long,
    }
    for name, text in cases.items():
        line = 3 if name.endswith("sv") else 2
        with pytest.raises(InputError, match=rf"{name}, line {line}: the caption is 51 "
                                             r"characters long; the limit is 50"):
            read_captions(_write(tmp_path / name, text), limits=lim)
    # Environment variables set the defaults (what an upload server uses).
    monkeypatch.setenv("CLIPGEOM_MAX_CAPTIONS", "3")
    with pytest.raises(InputError, match="more than 3 captions"):
        read_captions(_write(tmp_path / "e.txt", "a\nb\nc\nd\n"))
    monkeypatch.setenv("CLIPGEOM_MAX_CAPTIONS", "lots")
    with pytest.raises(InputError, match="CLIPGEOM_MAX_CAPTIONS='lots'"):
        read_captions(_write(tmp_path / "f.txt", "a\n"))
    monkeypatch.delenv("CLIPGEOM_MAX_CAPTIONS")
    assert CaptionLimits.from_env() == CaptionLimits(2_000_000, 10_000)


def test_blank_lines_do_not_grow_memory_or_count_at_the_end(tmp_path):
    p = _write(tmp_path / "b.txt", "one\n\n  \ntwo\n" + "\n" * 200_000)
    df = read_captions(p, limits=CaptionLimits(max_captions=4))
    assert df["caption"].tolist() == ["one", "", "", "two"]
    assert df.attrs["lines"] == [1, 2, 3, 4]


def test_a_single_huge_line_is_refused_without_reading_it_whole(tmp_path):
    p = tmp_path / "one.txt"
    with open(p, "wb") as f:
        f.write(b"y" * (3 * 1024 * 1024))
    with pytest.raises(InputError, match=r"one\.txt, line 1: longer than 1,048,576 bytes"):
        read_captions(p)


_MEASURE = textwrap.dedent("""
    import random, resource, sys
    from clipgeom.captions import read_captions
    random.seed(0)
    words = "a photo of the dog cat running on grass beach with red small man".split()
    with open(sys.argv[1], "w") as f:
        f.write("image,caption,label\\n")
        size = i = 0
        while size < int(sys.argv[2]):
            cap = " ".join(random.choice(words) for _ in range(random.randint(8, 20)))
            line = f'img{i:07d}.jpg,"{cap}, again",lab{i % 10}\\n'
            f.write(line)
            size += len(line)
            i += 1
    def status(key):
        with open("/proc/self/status") as st:
            return next(int(ln.split()[1]) for ln in st if ln.startswith(key + ":"))
    try:  # reset the high-water mark (Linux >= 4.0), so earlier peaks do not hide this one
        with open("/proc/self/clear_refs", "w") as cr:
            cr.write("5")
        base, peak_of = status("VmRSS"), lambda: status("VmHWM")
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    df = read_captions(sys.argv[1])
    peak = peak_of()
    assert len(df) == i, (len(df), i)
    print((peak - base) / 1024)
""")


def test_parsing_a_10mb_csv_stays_within_6x_its_size(tmp_path):
    """Peak RSS growth (getrusage in a fresh process) while parsing a generated
    10 MB captions CSV. Reading the whole text and then every record at once
    took 87 MB (8.7x); streaming row by row takes ~38 MB."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "m.csv"),
                          str(10_000_000)], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    grew_mb = float(out.stdout.strip().splitlines()[-1])
    assert grew_mb < 60, f"parsing a 10 MB CSV grew RSS by {grew_mb:.0f} MB"


# --------------------------------------------------------------------------
# 5. Zip: many small members, non-image members, absolute and disk caps
# --------------------------------------------------------------------------

def _zip(path: Path, entries) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _small_limits(**kw) -> ZipLimits:
    base = dict(ratio_min_bytes=1024 ** 2, total_ratio_min_bytes=256 * 1024,
                max_total_uncompressed=64 * 1024 ** 2, free_margin_bytes=0)
    base.update(kw)
    return ZipLimits(**base)


def test_bomb_of_many_members_each_under_the_ratio_floor_is_refused(tmp_path):
    # The reported attack in miniature: many members of zeros, each below the
    # per-member ratio floor (so each looks harmless), named as images.
    z = _zip(tmp_path / "many.zip", [(f"z{k:04d}.png", bytes(100_000)) for k in range(40)])
    assert z.stat().st_size < 40_000                     # 4 MB of zeros in ~20 KB
    work = tmp_path / "work"
    with pytest.raises(InputError, match=r"many\.zip: refused: the files would extract to "
                                         r"4,000,000 bytes from a .*zip bomb"):
        from_zip(z, work, limits=_small_limits())
    assert tree(work) == set()                           # nothing was written
    # Below the whole-archive floor, the same ratio is not called a bomb.
    ok = _zip(tmp_path / "few.zip", [(f"z{k}.png", bytes(100_000)) for k in range(2)])
    assert sorted(safe_extract(ok, _mk(tmp_path / "few"), limits=_small_limits())) == \
        ["z0.png", "z1.png"]


def _mk(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def test_only_images_and_the_captions_file_are_extracted(tmp_path):
    entries = [("set/a.png", image_bytes()), ("set/b.png", image_bytes(color=(0, 0, 255))),
               ("set/captions.csv", "image,caption\na.png,red\nb.png,blue\nnotes.bin,x\n"),
               ("set/sub/captions.csv", "image,caption\n"),
               ("set/.hidden.png", image_bytes()), ("__MACOSX/set/._a.png", b"junk")]
    entries += [(f"set/blob{k:02d}.bin", bytes(200_000)) for k in range(30)]
    entries += [("set/notes.bin", b"not an image")]
    z = _zip(tmp_path / "mixed.zip", entries)
    work = tmp_path / "work"
    il = from_zip(z, work, limits=_small_limits())
    written = [p for p in work.rglob("*") if p.is_file()]
    assert sorted(p.name for p in written) == ["a.png", "b.png", "captions.csv"]
    assert sum(p.stat().st_size for p in written) < 10_000   # not 6 MB of blobs
    listed = {s.item: s.reason for s in il.skipped}
    for k in range(30):
        assert listed[f"mixed.zip/set/blob{k:02d}.bin"].startswith("not an image")
    assert "top of the archive" in listed["mixed.zip/set/sub/captions.csv"]
    assert not any("hidden" in i or "MACOSX" in i for i in listed)
    # A caption naming a member that was not extracted says why, as in a folder.
    assert "'notes.bin' is not an image file" in listed["mixed.zip/set/captions.csv:4"]
    assert il.images["image_id"].tolist() == ["a", "b"]
    assert il.texts["caption"].tolist() == ["red", "blue"]


def test_absolute_extract_cap_from_the_environment(tmp_path, monkeypatch):
    z = _zip(tmp_path / "big.zip", [(f"i{k}.bmp", os.urandom(50_000)) for k in range(4)])
    monkeypatch.setenv("CLIPGEOM_MAX_EXTRACT_BYTES", "150000")
    assert ZipLimits().max_total_uncompressed == 150_000
    with pytest.raises(InputError, match=r"200,000 bytes, more than the 150,000 allowed "
                                         r"\(CLIPGEOM_MAX_EXTRACT_BYTES\)"):
        from_zip(z, tmp_path / "w")
    monkeypatch.setenv("CLIPGEOM_MAX_EXTRACT_BYTES", "-1")
    with pytest.raises(InputError, match="CLIPGEOM_MAX_EXTRACT_BYTES"):
        ZipLimits()
    monkeypatch.delenv("CLIPGEOM_MAX_EXTRACT_BYTES")
    assert ZipLimits().max_total_uncompressed == 4 * 1024 ** 3


def test_free_disk_space_is_checked_before_extracting(tmp_path, monkeypatch):
    z = _zip(tmp_path / "ok.zip", [(f"i{k}.bmp", os.urandom(50_000)) for k in range(4)])
    real = ingest.shutil.disk_usage

    def tight(path):
        u = real(path)
        return type(u)(u.total, u.total - 250_000, 250_000)  # 250 KB free
    monkeypatch.setattr(ingest.shutil, "disk_usage", tight)
    work = tmp_path / "w"
    with pytest.raises(InputError, match=r"needs 200,000 bytes but only 250,000 are free.*"
                                         r"100,000 must stay free"):
        from_zip(z, work, limits=_small_limits(free_margin_bytes=100_000))
    assert tree(work) == set()
    il = from_zip(z, work, limits=_small_limits(free_margin_bytes=10_000))
    assert il.n_images == 4


def test_cli_embed_refuses_a_zip_bomb_cleanly(tmp_path, clipgeom_home):
    z = _zip(tmp_path / "bomb.zip", [(f"z{k:03d}.png", bytes(100_000)) for k in range(40)])
    out = subprocess.run([sys.executable, "-m", "clipgeom", "embed", "bomb", "--zip", str(z)],
                         capture_output=True, text=True, timeout=120,
                         env=_env(CLIPGEOM_HOME=str(clipgeom_home),
                                  CLIPGEOM_MAX_EXTRACT_BYTES="1000000"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "clipgeom: error:" in out.stderr and "CLIPGEOM_MAX_EXTRACT_BYTES" in out.stderr
    assert not any((clipgeom_home / "uploads").iterdir())   # staging removed


# --------------------------------------------------------------------------
# Errors from readers are always the product's own
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name,data", [
    ("nul.csv", b"caption,image\na\x00b,0\n"),
    ("deep.jsonl", b'{"caption": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
    ("digits.jsonl", b'{"caption": "x", "n": ' + b"9" * 5000 + b"}\n"),
    ("cr.csv", b"caption,image\ra,0\rb,1\r"),
    ("bom.tsv", "\ufeffcaption\timage\nx\t0\n".encode()),
    ("latin.csv", "caption\ncaf\u00e9\n".encode("latin-1")),
])
def test_odd_caption_files_give_a_dataframe_or_an_input_error(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    try:
        df = read_captions(p)
    except ClipgeomError as exc:
        assert name in str(exc)
    else:
        assert "caption" in df.columns and len(df.attrs["lines"]) == len(df)


def test_csv_cell_leaves_numbers_and_neutralises_formulas():
    from clipgeom.safety import csv_cell
    assert csv_cell(-1.5) == -1.5 and csv_cell(-3) == -3
    for s in ("=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(s) == "'" + s
    assert csv_cell("plain") == "plain"
    assert captions.CaptionLimits().describe().startswith("at most 2,000,000 captions")


def test_csv_reader_round_trip_of_the_cli_output_keeps_text_literal():
    from clipgeom.safety import csv_cell
    buf = io.StringIO()
    csv.writer(buf).writerow([csv_cell("=HYPERLINK(\"http://x\",\"y\")"), "-0.250000"])
    row = next(csv.reader(io.StringIO(buf.getvalue())))
    assert row == ["'=HYPERLINK(\"http://x\",\"y\")", "-0.250000"]


def test_a_zip_with_no_images_says_what_it_holds_and_writes_nothing(tmp_path):
    z = _zip(tmp_path / "blobs.zip", [(f"m{k:03d}.bin", bytes(100_000)) for k in range(40)])
    work = tmp_path / "work"
    with pytest.raises(InputError, match=r"blobs\.zip: no image files .* Its 40 other "
                                         r"file\(s\) \(first: 'm000\.bin'\) are not extracted"):
        from_zip(z, work)
    assert tree(work) == set()
