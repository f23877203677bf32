"""`saekit browse`: a read-only web browser over the feature database, live or exported to static files.

pages.py renders (Jinja templates, plotly.js plots), queries.py holds the SQL, server.py serves
(Starlette + uvicorn, one read-only open per request), export.py writes the pages to a folder.
"""

from saekit.browse.export import export_site
from saekit.browse.server import BrowseError, create_app, serve

__all__ = ["BrowseError", "create_app", "export_site", "serve"]
