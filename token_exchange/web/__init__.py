"""Flask: the app factory (``app.create_app``), the views, response headers, load shedding, the
served JavaScript client. The HTTP layer ends here.

May import: every floor below (``oauth``, ``obs``, ``config``, ``sources``, ``grant``).
"""
