"""A quick "yes" for input a marshmallow schema certainly accepts; anything else goes to the schema.

marshmallow costs several microseconds per small object, and the admin API validates up to 1,000
events per request (it was a third of the server's CPU under batched ingest). ``compile_check``
reads a schema's fields once and returns a function that answers True only when every field is
of the exact type its field class takes, required fields are present, each field's own validators
pass, and no undeclared key is present where the schema refuses unknown keys. False is not an
error: the caller then runs the schema itself, which decides and writes the messages. The schema
stays the one place each rule is written; a schema this cannot read is always run in full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields

from handlers.catalogue import StrictBoolean, StrictInteger, StrictNumber

Check = Callable[[Any], bool]

_EXACT_TYPES: dict[type, tuple[type, ...]] = {
    fields.String: (str,),
    fields.Dict: (dict,),
    StrictBoolean: (bool,),
    StrictInteger: (int,),
    StrictNumber: (int, float),
}


def _never(_: Any) -> bool:
    return False


def _field_types(field: fields.Field[Any]) -> tuple[type, ...] | None:
    kind = type(field)
    if kind is fields.Dict and (field.key_field is not None or field.value_field is not None):  # type: ignore[attr-defined]
        return None
    if kind is fields.List and type(field.inner) is fields.Raw:  # type: ignore[attr-defined]
        return (list,)
    return _EXACT_TYPES.get(kind)


def compile_check(schema: Schema) -> Check:
    rules: list[tuple[str, tuple[type, ...], bool, list[Callable[[Any], Any]]]] = []
    for name, field in schema.fields.items():
        types = _field_types(field)
        if types is None:
            if field.required:
                return _never
            types = ()  # a field this cannot read (e.g. Nested): only its absence is a quick yes
        rules.append((field.data_key or name, types, field.required, list(field.validators)))
    known = frozenset(key for key, _, _, _ in rules)
    strict = schema.unknown == RAISE

    def check(value: Any) -> bool:
        if type(value) is not dict or (strict and not known.issuperset(value)):
            return False
        for key, types, required, validators in rules:
            if key not in value:
                if required:
                    return False
                continue
            item = value[key]
            if type(item) not in types:  # exact: bool is not an int here, None is never fine
                return False
            for validator in validators:
                try:
                    if validator(item) is False:
                        return False
                except ValidationError:
                    return False
        return True

    return check
