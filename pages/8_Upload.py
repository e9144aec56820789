"""Upload: images + captions, one zip, or precomputed .npy arrays -> a new dataset."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from clipgeom import embed, store, upload
from dashboard import figures, ui

ui.page_header("upload")

st.title("Upload a dataset")
st.caption("Embed your own images and captions with the bundled demo model (offline) or any "
           "open_clip model (needs internet the first time, for its weights), or import "
           "embeddings you computed elsewhere. The new dataset appears in every page's "
           "dataset picker.")

max_mb = float(st.get_option("server.maxUploadSize"))
limits = upload.UploadLimits.from_megabytes(max_mb)
st.caption(f"Limits: {max_mb:g} MB per file and in all (server.maxUploadSize in "
           f".streamlit/config.toml), {limits.max_files:,} files "
           "(CLIPGEOM_MAX_UPLOAD_FILES). Larger sets: `python -m clipgeom embed`.")

kind = st.radio("What are you uploading?",
                ["Images + captions file", "One zip (images + captions.csv)",
                 "Precomputed .npy embeddings"], key="upload_kind")
spec = None
if not kind.startswith("Precomputed"):
    demo_dir = Path(store.ASSETS_DIR) / "demo-model"
    has_demo = (demo_dir / "demo-clip.pt").exists()
    choices = (["demo model (bundled, offline)"] if has_demo else []) + ["open_clip model"]
    which = st.radio("Model", choices, key="upload_model", horizontal=True)
    if which.startswith("demo"):
        spec = embed.ModelSpec(str(demo_dir / "demo-clip.json"),
                               checkpoint=str(demo_dir / "demo-clip.pt"))
        st.caption("The demo CLIP was trained on generated shapes: it embeds any image, but "
                   "its geometry only means something for pictures like its world's.")
    else:
        m1, m2 = st.columns(2)
        arch = m1.text_input("open_clip architecture", "ViT-B-32", key="upload_arch")
        tag = m2.text_input("pretrained tag", "openai", key="upload_tag",
                            help="Downloaded once from the model hub; needs internet.")
        spec = embed.ModelSpec(arch.strip(), pretrained=tag.strip() or None)

# One form: changing a field while a dataset is being embedded does not rerun the
# page (which would abort the job); the choices above only change the form's shape.
with st.form("upload_form", border=False):
    c1, c2 = st.columns([2, 1])
    name = c1.text_input("Dataset name", key="upload_name", placeholder="my-photos",
                         help="Letters, digits, '.', '_' and '-'.")
    overwrite = c2.checkbox("Replace an existing dataset of this name",
                            key="upload_overwrite")
    files: dict = {}
    if kind.startswith("Images"):
        imgs = st.file_uploader("Images", type=[s.lstrip(".") for s in upload.IMAGE_SUFFIXES],
                                accept_multiple_files=True, key="upload_images")
        caps = st.file_uploader("Captions file: columns image, caption",
                                type=["csv", "tsv", "jsonl"], key="upload_captions")
        files = {"images": imgs or [], "captions": caps}
        ready = bool(imgs) and caps is not None
    elif kind.startswith("One zip"):
        z = st.file_uploader("Zip archive", type=["zip"], key="upload_zip")
        files = {"zip": z}
        ready = z is not None
    else:
        n1, n2, n3 = st.columns(3)
        files = {"image": n1.file_uploader("Image embeddings [N, d] .npy", type=["npy"],
                                           key="upload_npy_image"),
                 "text": n2.file_uploader("Text embeddings [M, d] .npy", type=["npy"],
                                          key="upload_npy_text"),
                 "captions": n3.file_uploader("Captions (optional)",
                                              type=["txt", "csv", "tsv", "jsonl"],
                                              key="upload_npy_captions")}
        ready = files["image"] is not None and files["text"] is not None
    go = st.form_submit_button("Create dataset", type="primary")


def pair(f):
    return None if f is None else (f.name, f.getvalue())


def progress_bar():
    """A job.run progress callback drawing a bar with the ETA of the current stage."""
    bar = st.progress(0.0, text="starting…")
    started: dict = {}

    def say(stage: str, done: int, total: int) -> None:
        t0 = started.setdefault(stage, time.monotonic())
        frac = done / total if total else 1.0
        eta = ""
        if 0 < done < total:
            eta = f", about {(time.monotonic() - t0) / done * (total - done):.0f} s left"
        bar.progress(min(frac, 1.0), text=f"{stage}: {done:,} of {total:,}{eta}")
    return bar, say


if go and not (ready and name.strip()):
    st.warning("Give the dataset a name and choose its files first.")
elif go:
    bar, say = progress_bar()
    try:                                        # the bar goes, whatever happens
        with ui.user_errors():
            if kind.startswith("Images"):
                ds = upload.embed_images(name.strip(), [pair(f) for f in files["images"]],
                                         pair(files["captions"]), spec, limits=limits,
                                         overwrite=overwrite, progress=say)
            elif kind.startswith("One zip"):
                ds = upload.embed_zip(name.strip(), pair(files["zip"]), spec, limits=limits,
                                      overwrite=overwrite, progress=say)
            else:
                ds = upload.import_npy(name.strip(), pair(files["image"]), pair(files["text"]),
                                       pair(files["captions"]), limits=limits,
                                       overwrite=overwrite)
    finally:
        bar.empty()
    st.session_state["dataset_request"] = ds.name  # selected on every page at once
    st.session_state["upload_done"] = ds.name
    st.rerun()

done = st.session_state.get("upload_done")
if done and done in {d["name"] for d in store.list_datasets()}:
    ds = store.open_dataset(done)
    st.success(f"Created dataset {ds.name!r}: {ds.n_images:,} images, {ds.n_texts:,} "
               f"captions, {ds.dim} dimensions, {len(ds.pairs()[0]):,} pairs. It is now "
               "selected on every page.")
    skipped = ds.manifest.get("skipped") or []
    if skipped:
        st.warning(f"{len(skipped)} item(s) were skipped:")
        figures.table(pd.DataFrame(skipped), key=f"skipped-{ds.name}",
                      caption="Skipped files and the reason for each.")
    else:
        st.caption("No file was skipped.")
