"""The one rule for the names a user gives things (collections, adapters, versions, aliases):
1-64 letters, digits, '.', '_' or '-', starting with a letter or digit. A name becomes a folder
under RAGTUNE_HOME, so the rule also keeps every name a plain, portable file name."""

from __future__ import annotations

import re

from ragtune.platform.errors import RagtuneError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
NAME = re.compile(rf"^{NAME_PATTERN}$")
# an adapter reference: a name, optionally @ a version or alias (v2, production)
ADAPTER_REF = rf"^{NAME_PATTERN}(@[A-Za-z0-9_.-]{{1,64}})?$"


def check_name(name: str, what: str = "name") -> str:
    """`name` if it follows the rule, else a RagtuneError naming it and the rule."""
    if not isinstance(name, str) or not NAME.match(name):
        raise RagtuneError(f"{what} name {name!r} is not allowed: use 1-64 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")
    return name
