"""Sphinx configuration: iemkey's docs, topics in Markdown (MyST) and reference pages generated from the
docstrings of the loader modules and the master-side utilities. `make docs` builds them with warnings as
errors."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))  # as Salt's loader puts them on the path of the modules it loads

# the loader modules share one file name (iemkey.py): each is imported under a name of its own
for kind, alias in (
    ("_modules", "iemkey_execution_module"),
    ("_states", "iemkey_state_module"),
    ("_runners", "iemkey_runner"),
    ("_engines", "iemkey_engine_module"),
    ("_grains", "iemkey_grain"),
):
    spec = importlib.util.spec_from_file_location(alias, REPO / kind / "iemkey.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)

project = "iemkey"
author = "the iemkey developers"
copyright = "2026, the iemkey developers"
release = (REPO / "VERSION").read_text().strip()
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_member_order = "bysource"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_static_path = []
suppress_warnings = ["myst.xref_missing"]
nitpicky = False
