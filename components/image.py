"""The one place the components' container image is named.

Set SCENESEARCH_IMAGE before compiling to name the image a cluster run uses (building and
tagging images per commit comes with the cluster issue); locally the subprocess runner ignores it.
"""

import os

BASE_IMAGE = os.environ.get("SCENESEARCH_IMAGE", "scenesearch/base:latest")
