"""autoglm_export: take an AutoGLM-Phone-9B-family checkpoint and ship it to phones."""

__version__ = "0.1.0"
