"""A griffe extension for the API pages: reST roles in docstrings read as inline code.

The library's docstrings name things the Sphinx way (``:class:`~pkg.Name```),
which Markdown would show as a stray ``:class:`` before the name. Rewriting the
role to plain inline code keeps the docstrings as they are and the pages clean.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

# :class:`~a.b.C` -> `C`; :meth:`a.b.C.m` -> `a.b.C.m` (a leading ~ keeps only the last name, as in Sphinx)
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|obj|data|const):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class ReSTRolesAsCode(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
