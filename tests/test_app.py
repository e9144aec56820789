"""The dashboard's home page through Streamlit's AppTest (no browser)."""

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from clipgeom import store, synthetic

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _metrics(at):
    return {m.label: m.value for m in at.metric}


def test_home_on_synthetic_data(clipgeom_home):
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    assert not at.error
    assert any("SYNTHETIC DATA" in w.value for w in at.warning)
    m = _metrics(at)
    assert m["Images"] == "2,000" and m["Pairs"] == "2,000"
    assert "Separable features (Sep > 1, Eq. 5)" in m
    assert len(at.get("plotly_chart")) == 2


def test_picker_switches_to_a_stored_dataset(clipgeom_home):
    data = synthetic.two_shells(150, 16, seed=5)
    store.create_dataset("mine", data.image, data.text[:120],
                         model={"name": "ViT-B-32", "pretrained": "openai"})
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert at.selectbox(key="dataset_select").options[0] == "mine"
    m = _metrics(at)
    assert m["Images"] == "150" and m["Captions"] == "120" and m["Dimension"] == "16"
    assert not any("SYNTHETIC" in w.value for w in at.warning)
    assert any("ViT-B-32 (openai)" in md.value for md in at.markdown)
    # switch to the generator and back: the numbers follow the choice
    at.selectbox(key="dataset_select").select_index(1).run()
    assert _metrics(at)["Images"] == "2,000"


def test_unpaired_dataset_explains_missing_loss(clipgeom_home, rng):
    store.create_dataset("nopairs", rng.standard_normal((30, 8)).astype(np.float32) + 1,
                         rng.standard_normal((20, 8)).astype(np.float32) - 1)
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    assert any("unavailable" in i.value for i in at.info)


def test_temperature_changes_the_loss(clipgeom_home):
    at = AppTest.from_file(APP, default_timeout=180).run()
    key = "CLIP loss on 2,000 pairs (Eq. 7-8)"
    before = _metrics(at)[key]
    at.number_input[0].set_value(0.05).run()
    assert _metrics(at)[key] != before
