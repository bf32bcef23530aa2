"""The one place the components' container image and decorator are named.

Set SCENESEARCH_IMAGE before compiling to name the image a cluster run uses (building and
tagging images per commit comes with the cluster issue); locally the subprocess runner ignores it.

`component` declares every task with `install_kfp_package=False`: the images install kfp from
requirements.lock, and so does `make setup`. Without it each task's command would start with
`pip install kfp`, and kfp.local holds one lock around every task whose command installs
packages, so the branches of a ParallelFor would run one at a time.
"""

import functools
import os

from kfp import dsl

BASE_IMAGE = os.environ.get("SCENESEARCH_IMAGE", "scenesearch/base:latest")
component = functools.partial(dsl.component, base_image=BASE_IMAGE, install_kfp_package=False)
