"""Upload: images + captions, one zip, or precomputed .npy arrays -> a new dataset;
a sample zip to try it; the Jobs panel; deleting one's own datasets.

Images and zips are embedded by a background job (clipgeom.background): the
submit checks the upload, stages its files in the job's folder and starts the
job's process, so switching pages, touching a widget, closing the tab or
restarting the server never loses it. The Jobs panel (dashboard/jobs.py)
follows every job. Precomputed .npy arrays are imported at once (a check and a
copy: seconds at the size cap).

Each submit starts from an empty status area; the result of the latest
attempt (an error, the running job, then its dataset or its failure) is the
only one shown there. File names and reasons are the user's own (never the
server's staging paths) and are shown as plain text."""

import logging
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from clipgeom import embed, sample_zip, store, upload
from clipgeom.errors import ClipgeomError
from clipgeom.safety import plain_markdown
from dashboard import figures, jobs, ui

log = logging.getLogger("clipgeom.dashboard")
# The latest attempt: {"job": id} (an embedding job), {"ok": name} (an .npy
# import) or {"error": message}.
RESULT = "upload_result"
DELETED = "upload_deleted"      # {"ok": name} or {"error": message}: the latest deletion

jobs.select_finished(RESULT)    # this session's finished upload: selected on every page
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


def create(kind: str, name: str, files: dict, spec, overwrite: bool) -> dict:
    """Start the embedding job (images, zip) or import the arrays (.npy): the
    new RESULT."""
    if kind.startswith("Images"):
        return {"job": upload.start_embed_images(
            name, [pair(f) for f in files["images"]], pair(files["captions"]), spec,
            limits=limits, overwrite=overwrite)}
    if kind.startswith("One zip"):
        return {"job": upload.start_embed_zip(name, pair(files["zip"]), spec, limits=limits,
                                              overwrite=overwrite)}
    t0 = time.monotonic()
    ds = upload.import_npy(name, pair(files["image"]), pair(files["text"]),
                           pair(files["captions"]), limits=limits, overwrite=overwrite)
    return {"ok": ds.name, "seconds": time.monotonic() - t0}


def show_result(res: dict | None) -> None:
    """The latest attempt's outcome: the job while it runs, then the new dataset
    and its skipped files, or the error. Everything user-supplied is plain text."""
    if not res:
        return
    if "error" in res:
        st.error(plain_markdown(res["error"]))
        return
    if "job" in res:
        info = jobs.status(res["job"])
        if info is None:                    # removed from the Jobs panel
            return
        what = plain_markdown(repr(info.dataset))
        if info.active:
            on = " on Ray" if info.engine == "ray" else ""
            st.info(f"Embedding {what}{on} in the background (job {info.id}). You can switch "
                    "pages, change settings or close this tab: the job goes on, and the "
                    "Jobs panel below follows it.")
        elif info.resumable:
            st.warning(f"The job for {what} was interrupted (its process stopped). Resume "
                       "it in the Jobs panel below: it continues from its finished chunks.")
        elif info.state == "failed":
            st.error(plain_markdown(upload.user_message(info.error or "the job failed.")))
        elif info.state == "cancelled":
            st.info(f"The job for {what} was cancelled; no dataset was changed.")
        else:
            show_dataset(info.result, info.seconds())
        return
    show_dataset(res.get("ok"), res.get("seconds"))


def show_dataset(name, seconds) -> None:
    """A created dataset: its size, the time it took, its skipped files."""
    names = {d["name"] for d in store.list_datasets()}
    if name not in names:                   # deleted since
        return
    ds = store.open_dataset(name)
    st.success(f"Created dataset {plain_markdown(repr(ds.name))}: {ds.n_images:,} images, "
               f"{ds.n_texts:,} captions, {ds.dim} dimensions, {len(ds.pairs()[0]):,} "
               "pairs. It is now selected on every page.")
    if seconds is not None:
        st.caption(f"Took {seconds:.1f} s.")
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

    # One form: the files and the name are sent together on submit; the choices
    # above only change the form's shape.
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

    # The status area: one slot, emptied at every submit, then holding the
    # result. Nothing of an earlier attempt survives a new one.
    status = st.empty()
    if go:
        st.session_state.pop(RESULT, None)
        status.empty()
        if not (ready and name.strip()):
            status.warning("Give the dataset a name and choose its files first.")
        else:
            try:
                res = create(kind, name.strip(), files, spec, overwrite)
            except ClipgeomError as exc:
                st.session_state[RESULT] = {"error": upload.user_message(str(exc))}
            except Exception as exc:             # e.g. a full disk or a bug
                log.exception("upload failed")
                st.session_state[RESULT] = {"error": upload.user_message(
                    f"the upload failed ({type(exc).__name__}: {str(exc)[:300]}); no "
                    "dataset was changed.")}
            else:
                st.session_state[RESULT] = res
                if "ok" in res:                  # an import: selected on every page
                    st.session_state["dataset_request"] = res["ok"]
                    st.rerun()
    if not (go and not (ready and name.strip())):
        with status.container():
            show_result(st.session_state.get(RESULT))


# ------------------------------------------------------------------ jobs
with ui.section("Jobs"):
    st.subheader("Jobs")
    jobs.panel()


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
