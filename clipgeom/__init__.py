"""clipgeom: the geometry of CLIP embeddings before normalisation.

Core package of the clipgeom dashboard: datasets on disk (:mod:`store`),
analysis functions named after the papers' equations (:mod:`geometry`,
:mod:`loss`, :mod:`conformity`, :mod:`transforms`, :mod:`projection`,
:mod:`interpolate`), the report (:mod:`report`) and the CLI (``python -m
clipgeom``). Nothing here imports Streamlit.
"""

from .errors import ClipgeomError, DatasetError, InputError

__version__ = "0.1.0"
__all__ = ["ClipgeomError", "DatasetError", "InputError", "__version__"]
