"""The version of rq-janitor, kept where the build backend reads it."""

__version__ = "0.1.0"
