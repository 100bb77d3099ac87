"""Sphinx configuration of the pope API reference and guides.

Built by the test command (``scripts/test.sh``) with warnings as errors::

    python -m sphinx -W --keep-going -b html -q docs docs/_build/html

No notebook is executed; the modules are imported as installed (``pip install -e .[docs]``).
"""

from __future__ import annotations

import pope

project = "pope"
author = "pope developers"
copyright = "pope developers"
release = pope.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]

# The markdown guides (docs/*.md) use $...$ / $$...$$ maths, tables and links to
# headings of other pages (``data-format.md#large-logs``).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# numpydoc-style docstrings, read by napoleon (part of Sphinx: one dependency fewer).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# Parameter and return types stay text: a type field made of cross-references turns shape
# words such as ``(n,)`` into links that match several attributes named ``n``.
napoleon_use_param = False
napoleon_use_rtype = False
# "Attributes" sections are laid out like "Parameters" (a field list with text types): as
# attribute directives they would describe NamedTuple fields a second time, and as :ivar:
# fields their shape words would again become ambiguous links.
napoleon_custom_sections = [("Attributes", "params_style")]

autosummary_generate = True
autosummary_imported_members = False
# Packages re-export names (``pope.evaluate`` is ``pope.estimators.pope.evaluate``): each
# object is documented once, in the module that defines it, so ``__all__`` is not followed.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "ignore-module-all": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Unresolved references in type hints (numpy.typing aliases, torch types) are not errors:
# the reference is not nitpicky.
nitpicky = False

html_theme = "furo"
html_title = f"pope {release}"
html_static_path: list[str] = []
