"""Validate Kubernetes manifests the way the API server would, without an API server.

* Built-in kinds are checked with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas as JSON
  schema, strict mode: unknown fields are errors) for every Kubernetes version we claim,
  :data:`SUPPORTED_VERSIONS` (1.28 to 1.31; the installed kubernetes-validate ships 1.25 to 1.37).
* Custom resources are checked against the ``openAPIV3Schema`` of their CRD (given as a dict
  or a YAML file), with the Kubernetes extensions (``x-kubernetes-int-or-string``,
  ``x-kubernetes-preserve-unknown-fields``, ``nullable``) translated to JSON schema and unknown
  fields reported as the API server's pruning would drop them.

``validate_manifest(obj, crds=[...])`` raises :class:`ManifestError` listing every problem;
``schema_errors(obj, schema)`` returns the messages for one CRD schema.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

#: Kubernetes minor versions this project claims to support.
SUPPORTED_VERSIONS: tuple[str, ...] = ("1.28", "1.29", "1.30", "1.31")


class ManifestError(ValueError):
    """A manifest that the API server would reject; ``errors`` holds one message per problem."""

    def __init__(self, what: str, errors: list[str]) -> None:
        super().__init__(f"{what}: " + "; ".join(errors))
        self.errors = errors


def _to_json_schema(schema: Any, strict: bool) -> Any:
    """Translate a structural OpenAPI v3 schema (as in a CRD) into plain JSON schema."""
    if isinstance(schema, list):
        return [_to_json_schema(s, strict) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: _to_json_schema(v, strict)
        for k, v in schema.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "format", "example")
    }
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        strict
        and schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    return out


def _path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts).lstrip(".") or "<root>"


def schema_errors(obj: Mapping[str, Any], schema: Mapping[str, Any], strict: bool = True) -> list[str]:
    """Messages (``spec.x.y: problem``) for everything in ``obj`` that ``schema`` rejects.

    ``apiVersion``, ``kind`` and ``metadata`` are the API server's business, not the schema's.
    """
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    sch = copy.deepcopy(dict(schema))
    for k in ("apiVersion", "kind", "metadata"):
        sch.get("properties", {}).pop(k, None)
    validator = jsonschema.Draft202012Validator(_to_json_schema(sch, strict))
    return sorted(f"{_path(e)}: {e.message}" for e in validator.iter_errors(body))


def load_crds(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read CRD documents from YAML files."""
    crds = []
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


def crd_schema(obj: Mapping[str, Any], crds: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The ``openAPIV3Schema`` that a CRD in ``crds`` declares for ``obj``'s apiVersion and kind."""
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    for crd in crds:
        spec = crd.get("spec", {})
        if spec.get("group") != group or spec.get("names", {}).get("kind") != obj.get("kind"):
            continue
        for ver in spec.get("versions", []):
            if ver.get("name") == version:
                return (ver.get("schema") or {}).get("openAPIV3Schema")
    return None


def validate_manifest(
    obj: Mapping[str, Any],
    *,
    crds: Iterable[Mapping[str, Any]] = (),
    versions: Iterable[str] = SUPPORTED_VERSIONS,
    strict: bool = True,
) -> None:
    """Raise :class:`ManifestError` unless ``obj`` is valid for every version (or its CRD)."""
    data = dict(obj)
    what = f'{data.get("kind", "?")} "{data.get("metadata", {}).get("name", "?")}"'
    crds = list(crds)
    schema = crd_schema(data, crds)
    if schema is not None:
        errors = schema_errors(data, schema, strict)
        if errors:
            raise ManifestError(what, errors)
        return
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(data, version, strict=strict)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"Kubernetes {version}: {_path(exc)}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"Kubernetes {version}: {exc.message} (and no CRD given for it)")
    if errors:
        raise ManifestError(what, errors)
