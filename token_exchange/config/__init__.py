"""The configuration: the declared model (``config_model``: pydantic, the JSON Schema), which
is what the service reads, and loading it with the rules between keys (``settings``).

May import: ``oauth``, ``obs``.
"""
