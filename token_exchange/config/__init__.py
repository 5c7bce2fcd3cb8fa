"""The configuration: the declared model (``config_model``: pydantic, the JSON Schema) and the
settings the service reads (``settings``).

May import: ``oauth``, ``obs``.
"""
