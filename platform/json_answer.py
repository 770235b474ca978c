"""What counts as a valid JSON answer, in one place: the adapter's card, `ragtune eval` and the
server's metrics all ask this. The whole answer must be one JSON object (a helpdesk parser gets
the whole text; a surrounding ```json fence is tolerated) and, given a schema, pass it."""

from __future__ import annotations

import json
from typing import Any


def parse_answer(text: str) -> Any:
    """The answer as a JSON value, or None when the whole text is not JSON."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    try:
        return json.loads(s)
    except (ValueError, RecursionError):
        return None


def schema_valid(value: Any, schema: dict[str, Any] | None) -> bool:
    """`value` passes `schema` (no schema: any value); a schema jsonschema cannot apply (a $ref it
    cannot resolve, a broken keyword) counts as not valid, never as an error."""
    if schema is None:
        return True
    import jsonschema
    from referencing.exceptions import Unresolvable

    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        return cls(schema).is_valid(value)
    except (jsonschema.SchemaError, Unresolvable, RecursionError):
        return False


def json_valid(text: str, schema: dict[str, Any] | None = None) -> bool:
    """True when the whole answer is one JSON object that passes `schema` (when given)."""
    value = parse_answer(text)
    return isinstance(value, dict) and schema_valid(value, schema)
