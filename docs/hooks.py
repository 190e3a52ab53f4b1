"""MkDocs hook: subscripts in docstrings are not cross-references.

A docstring that writes `params["conv1"]["w"]` without backticks reads, in
Markdown, as a reference-style link whose label is `"w"`; mkdocs-autorefs then
warns that it found no such target, and `mkdocs build --strict` fails. This
filter drops exactly those warnings: ones whose target is not a dotted Python
name (quotes, commas, ellipses). A broken reference to a real name
(`[conv2d][jaxconv.conv2d_typo]`) still fails the strict build.
"""

import logging
import re

_TARGET = re.compile(r"Could not find cross-reference target '(?P<target>.*)'$")
_PYTHON_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class _SubscriptsAreNotReferences(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        match = _TARGET.search(record.getMessage())
        return match is None or bool(_PYTHON_NAME.match(match.group("target")))


def on_config(config):
    """Attach the filter to mkdocs-autorefs' loggers (a filter acts on the logger a record is logged on)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("mkdocs.plugins.mkdocs_autorefs"):
            logging.getLogger(name).addFilter(_SubscriptsAreNotReferences())
    return config
