"""Command-line tools that ship with the package (``python -m gzjax.tools.…``)."""
