"""The operator's live web page: the session, plots, pictures and 2D classes.

``server.py`` serves it from the service's event loop (aiohttp), ``api.py`` builds
its JSON documents from the ledger and the project folder, ``static/`` holds the
page (no external scripts: it works on an offline facility network).
See docs/dashboard.md.
"""
