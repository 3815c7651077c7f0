"""Request handlers, one module per area; each exposes ``setup(app)``."""
