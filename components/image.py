"""The one place the components' container image is named.

A run uses the image of its own commit: `make images` tags images with the git commit and
exports SCENESEARCH_IMAGE before compiling; locally the subprocess runner ignores images.
"""

import os

BASE_IMAGE = os.environ.get("SCENESEARCH_IMAGE", "scenesearch/base:latest")
