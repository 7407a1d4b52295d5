"""Sphinx configuration of the bridge's documentation (``make docs``).

The reference pages are generated at build time from the code: the settings
table (``_ext/bridge_reference.py``), click's command tree (sphinx-click) and the
app's own ``/openapi.json``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "reteno-telegram-bridge"
author = "the reteno-telegram-bridge authors"
copyright = "2026, " + author  # noqa: A001 - Sphinx's name

extensions = ["myst_parser", "sphinx_click", "bridge_reference"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
nitpicky = True

html_theme = "furo"
html_title = "reteno-telegram-bridge"
