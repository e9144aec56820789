"""Upload: images + captions, one zip, or precomputed .npy arrays -> a new dataset;
a sample zip to try it; deleting one's own datasets.

Each submit starts from an empty status area (one st.empty slot that the
progress bar, then the result, replace); the result of the latest attempt,
success or error, is the only one shown. File names and reasons are the
user's own (never the server's staging paths) and are shown as plain text."""

import logging
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from clipgeom import embed, sample_zip, store, upload
from clipgeom.errors import ClipgeomError
from clipgeom.safety import plain_markdown
from dashboard import figures, ui

log = logging.getLogger("clipgeom.dashboard")
RESULT = "upload_result"        # {"ok": name} or {"error": message}: the latest attempt
DELETED = "upload_deleted"      # {"ok": name} or {"error": message}: the latest deletion

ui.page_header("upload")

st.title("Upload a dataset")
st.caption("Embed your own images and captions with the bundled demo model (offline) or any "
           "open_clip model (needs internet the first time, for its weights), or import "
           "embeddings you computed elsewhere. The new dataset appears in every page's "
           "dataset picker.")

max_mb = float(st.get_option("server.maxUploadSize"))
limits = upload.UploadLimits.from_megabytes(max_mb)


def pair(f):
    return None if f is None else (f.name, f.getvalue())


def progress_bar(slot):
    """A job.run progress callback drawing a bar (in ``slot``) with the ETA of
    the current stage."""
    bar = slot.progress(0.0, text="starting…")
    started: dict = {}

    def say(stage: str, done: int, total: int) -> None:
        t0 = started.setdefault(stage, time.monotonic())
        frac = done / total if total else 1.0
        eta = ""
        if 0 < done < total:
            eta = f", about {(time.monotonic() - t0) / done * (total - done):.0f} s left"
        bar.progress(min(frac, 1.0), text=f"{stage}: {done:,} of {total:,}{eta}")
    return say


def create(kind: str, name: str, files: dict, spec, overwrite: bool, say):
    if kind.startswith("Images"):
        return upload.embed_images(name, [pair(f) for f in files["images"]],
                                   pair(files["captions"]), spec, limits=limits,
                                   overwrite=overwrite, progress=say)
    if kind.startswith("One zip"):
        return upload.embed_zip(name, pair(files["zip"]), spec, limits=limits,
                                overwrite=overwrite, progress=say)
    return upload.import_npy(name, pair(files["image"]), pair(files["text"]),
                             pair(files["captions"]), limits=limits, overwrite=overwrite)


def show_result(res: dict | None) -> None:
    """The latest attempt's outcome: the new dataset and its skipped files, or
    the error. Everything user-supplied is plain text."""
    if not res:
        return
    if "error" in res:
        st.error(plain_markdown(res["error"]))
        return
    names = {d["name"] for d in store.list_datasets()}
    if res.get("ok") not in names:          # deleted since
        return
    ds = store.open_dataset(res["ok"])
    st.success(f"Created dataset {plain_markdown(repr(ds.name))}: {ds.n_images:,} images, "
               f"{ds.n_texts:,} captions, {ds.dim} dimensions, {len(ds.pairs()[0]):,} "
               "pairs. It is now selected on every page.")
    if res.get("seconds") is not None:
        st.caption(f"Took {res['seconds']:.1f} s.")
    skipped = upload.skipped_for_user(ds)
    if skipped:
        st.warning(f"{len(skipped)} item(s) were skipped:")
        figures.table(pd.DataFrame(skipped, columns=["item", "reason"]),
                      key=f"skipped-{ds.name}", caption="Skipped files and the reason "
                                                        "for each.")
    else:
        st.caption("No file was skipped.")


# ------------------------------------------------------------------ create
with ui.section("Create a dataset"):
    st.caption(f"Limits: {max_mb:g} MB per file and in all (server.maxUploadSize in "
               f".streamlit/config.toml), {limits.max_files:,} files "
               "(CLIPGEOM_MAX_UPLOAD_FILES). Larger sets: `python -m clipgeom embed`.")
    s1, s2 = st.columns([3, 1])
    s1.caption("Not sure what to upload? The sample zip holds "
               f"{len(sample_zip.sample_files()) - 1} small generated images and a "
               "captions.csv (columns image, caption; two captions per image): upload it "
               "as 'One zip' to try the whole pipeline, or copy its layout.")
    s2.download_button("Sample zip", sample_zip.sample_zip(), file_name=sample_zip.FILE_NAME,
                       mime="application/zip", key="upload_sample", on_click="ignore")

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
            st.caption("The demo CLIP was trained on generated shapes: it embeds any image, "
                       "but its geometry only means something for pictures like its world's.")
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
            imgs = st.file_uploader("Images",
                                    type=[s.lstrip(".") for s in upload.IMAGE_SUFFIXES],
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

    # The status area: one slot, emptied at every submit, then holding the bar,
    # then the result. Nothing of an earlier attempt survives a new one.
    status = st.empty()
    if go:
        st.session_state.pop(RESULT, None)
        status.empty()
        if not (ready and name.strip()):
            status.warning("Give the dataset a name and choose its files first.")
        else:
            t0 = time.monotonic()
            try:
                ds = create(kind, name.strip(), files, spec, overwrite,
                            progress_bar(status))
            except ClipgeomError as exc:
                st.session_state[RESULT] = {"error": upload.user_message(str(exc))}
            except Exception as exc:             # e.g. a network or torch failure
                log.exception("upload failed")
                st.session_state[RESULT] = {"error": upload.user_message(
                    f"the upload failed ({type(exc).__name__}: {str(exc)[:300]}); no "
                    "dataset was changed.")}
            else:
                st.session_state[RESULT] = {"ok": ds.name,
                                            "seconds": time.monotonic() - t0}
                st.session_state["dataset_request"] = ds.name   # selected on every page
                status.empty()
                st.rerun()
            status.empty()                       # the bar goes, whatever happened
    if not (go and not (ready and name.strip())):
        with status.container():
            show_result(st.session_state.get(RESULT))


# ------------------------------------------------------------------ delete
def _delete() -> None:
    """The Delete button's callback (runs before the page reruns, so the dataset
    picker at the top already lists what is left)."""
    target = st.session_state.get("delete_pick")
    if not st.session_state.get("delete_confirm"):
        return
    try:
        upload.delete_user_dataset(target)
    except ClipgeomError as exc:
        st.session_state[DELETED] = {"error": str(exc)}
    else:
        st.session_state[DELETED] = {"ok": target}
        if st.session_state.get("dataset") == target:
            st.session_state.pop("dataset", None)      # the picker falls back to the demo
        if (st.session_state.get(RESULT) or {}).get("ok") == target:
            st.session_state.pop(RESULT, None)
    st.session_state["delete_confirm"] = False


with ui.section("Delete a dataset"):
    st.subheader("Delete one of your datasets")
    done = st.session_state.pop(DELETED, None)
    if done and "ok" in done:
        st.success(f"Deleted dataset {plain_markdown(repr(done['ok']))}.")
    elif done:
        st.error(plain_markdown(done["error"]))
    mine = upload.user_datasets()
    if not mine:
        st.caption("You have no datasets of your own yet. Bundled datasets (the demo) "
                   "cannot be deleted.")
    else:
        d1, d2 = st.columns([2, 1])
        pick = d1.selectbox("Dataset to delete", mine, key="delete_pick",
                            help="Only your own datasets are listed; bundled ones cannot "
                                 "be deleted.")
        sure = d2.checkbox("I understand: its files are deleted for good",
                           key="delete_confirm")
        st.button("Delete dataset", key="delete_go", type="secondary", disabled=not sure,
                  on_click=_delete)
