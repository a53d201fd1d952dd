"""The feature browser: one streaming pass of the model over a corpus gathers, for every latent
of one or more SAEs, its firing statistics and contexts; the decoder rows give logit effects
and neighbours; a static site shows them (see build.py), and a local server adds a prompt view.
"""

from .build import BrowseOptions, build_site, site_pages
from .server import make_server

__all__ = ["BrowseOptions", "build_site", "make_server", "site_pages"]
