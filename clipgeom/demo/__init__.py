"""The bundled demo: a generated world of shapes and captions (:mod:`.world`).

The world's concept frequencies and the truth of every caption are known
exactly, so the dashboard's demo data (a small CLIP trained on it from
scratch) can be checked against ground truth.
"""

from .world import (BACKGROUNDS, COLOURS, ODD_CAPTIONS, POSITIONS, RELATIONS,
                    SHAPES, SIZES, TEXTURES, Caption, Obj, ObjectQuery, Scene,
                    World, WorldConfig, caption_is_true, caption_text,
                    concept_probabilities, generate, parse_caption, render)

__all__ = [
    "BACKGROUNDS", "COLOURS", "ODD_CAPTIONS", "POSITIONS", "RELATIONS", "SHAPES",
    "SIZES", "TEXTURES", "Caption", "Obj", "ObjectQuery", "Scene", "World",
    "WorldConfig", "caption_is_true", "caption_text", "concept_probabilities",
    "generate", "parse_caption", "render",
]
