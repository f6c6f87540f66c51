"""Entry point for ``python -m janitor``."""

from janitor.cli import main

main()
