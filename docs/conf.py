"""Sphinx configuration: the package's pages and its API reference from the docstrings."""
import os
import sys

# the docs describe the checkout they live in, installed or not
sys.path.insert(0, os.path.abspath(".."))

from pyelevator_pool import __version__  # noqa: E402

project = "pyelevator_pool"
author = "pyelevator_pool contributors"
copyright = "2026, " + author
version = release = __version__

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
# the reference documents what the package promises, in the order the source gives it
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
