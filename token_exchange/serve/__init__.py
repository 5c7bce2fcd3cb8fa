"""Running it: the command line (``cli``), the WSGI entry point (``wsgi``), the development mode
(``devmode``), CPU affinity of workers.

May import: every floor below.
"""
