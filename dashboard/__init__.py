"""Streamlit-side helpers shared by app.py and pages/: data loading with
caching, the dataset picker, error display. All maths stays in clipgeom."""
