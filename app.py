"""clipgeom dashboard: the entry point. Run: streamlit run app.py

It only declares the pages (so the sidebar says "Home", not the file name);
each page lives in pages/ and draws itself.
"""

import streamlit as st

st.set_page_config(page_title="clipgeom: the geometry of CLIP embeddings",
                   page_icon="🔭", layout="wide")

PAGES = ["0_Home", "1_Separability", "2_Thin_shell_and_ellipsoid", "3_Alpha_shift_and_loss",
         "4_Conformity", "5_Projections_and_isotropy", "6_Search_and_interpolation",
         "7_Training_timeline", "10_Compare", "8_Upload", "9_Talk"]

st.navigation([st.Page(f"pages/{stem}.py", default=(stem == "0_Home")) for stem in PAGES]).run()
