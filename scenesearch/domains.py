"""Item domains: what a row of the manifest is. Data, not string literals scattered through the steps.

Scenes are the gallery; every other domain is a kind of query image, found under its own folder
of the dataset root. A new query domain is one entry of `QUERY_FOLDERS`.
"""

from __future__ import annotations

SCENE = "scene"
SCENE_FOLDER = "scenes"
QUERY_FOLDERS = {"queries": "photo", "easy_queries": "photo_easy", "sketches": "sketch"}  # <root>/<folder>/<class>/<name>.<png|jpg>
QUERY_DOMAINS = tuple(QUERY_FOLDERS.values())
FOLDERS = {SCENE_FOLDER: SCENE, **QUERY_FOLDERS}

# Class-level splits (data.split = zero_shot): unseen classes never reach training.
SEEN, UNSEEN = "seen", "unseen"


def is_query(domain: str) -> bool:
    """True for a query image of any domain (photo, sketch), False for a scene."""
    return domain in QUERY_DOMAINS
