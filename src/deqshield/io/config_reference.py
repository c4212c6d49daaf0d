"""The config-file reference (``docs/config.md``), generated from the validated settings
classes so that it cannot drift from the code: ``python -m deqshield.io.config_reference``."""

from __future__ import annotations

import json
from typing import Any

from deqshield.io.config import ExperimentConfig

HEADER = """# Config reference

Generated from the settings classes by `python -m deqshield.io.config_reference > docs/config.md`
(a test checks that this file is current). Every section rejects unknown keys. A section with
a `name` key is one of several classes, chosen by that name.

An experiment config has the sections `data`, `model` and `train`:
"""


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        return f"[{spec['$ref'].split('/')[-1]}](#{spec['$ref'].split('/')[-1].lower()})"
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in spec["enum"])
    for key in ("anyOf", "oneOf"):
        if key in spec:
            return " or ".join(_type(option) for option in spec[key])
    kind = spec.get("type", "any")
    if kind == "array":
        items = spec.get("items") or spec.get("prefixItems") or {}
        inner = (", ".join(_type(item) for item in items) if isinstance(items, list)
                 else _type(items))
        return f"list of {inner}"
    return str(kind)


def _bounds(spec: dict[str, Any]) -> str:
    marks = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=",
             "exclusiveMaximum": "<"}
    return ", ".join(f"{mark} {spec[key]}" for key, mark in marks.items() if key in spec)


def _table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| key | type | default | constraint |", "|---|---|---|---|"]
    for key, spec in schema.get("properties", {}).items():
        default = ("*required*" if key in required
                   else f"`{json.dumps(spec.get('default'))}`" if "default" in spec else "")
        lines.append(f"| `{key}` | {_type(spec)} | {default} | {_bounds(spec)} |")
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    schema = ExperimentConfig.model_json_schema()
    lines = [HEADER] + _table(schema)
    for name, definition in sorted(schema["$defs"].items()):
        description = " ".join(definition.get("description", "").split())
        lines += ["", f"## {name}", ""] + ([description, ""] if description else [])
        lines += _table(definition)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
