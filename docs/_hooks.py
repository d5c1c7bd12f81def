"""MkDocs hook (mkdocs.yml ``hooks:``): the docstrings' Sphinx roles as code.

The package's docstrings cross-reference with Sphinx roles
(``:class:`ZCProtocol```), which mkdocstrings renders literally; this drops
the role and keeps the code span, so the API reference reads
``ZCProtocol``, not ``:class:ZCProtocol``.
"""

import re

_ROLE = re.compile(r":(?:class|func|meth|exc|attr|mod|data|obj):(<code>)~?")


def on_page_content(html: str, **kwargs: object) -> str:
    """Strip the roles from one page's HTML."""
    return _ROLE.sub(r"\1", html)
