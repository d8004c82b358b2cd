"""Check a reply body against docs/openapi.yaml: the document describes what nodes send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: the only difference used here is ``nullable``."""
    if isinstance(node, dict):
        out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


def check_against_openapi(path: str, method: str, status: int, body: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``body`` is what the document promises for
    this path, method and status (a method the path lacks: the generic error body)."""
    doc = yaml.safe_load(OPENAPI.read_text())
    operation = doc["paths"][path].get(method.lower())
    if operation is None:
        schema = {"$ref": "#/components/schemas/Error"}
    else:
        response = operation["responses"][str(status)]
        if "$ref" in response:
            response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        schema = response["content"]["application/json"]["schema"]
    jsonschema.validate(body, _json_schema({**schema, "components": doc["components"]}))
