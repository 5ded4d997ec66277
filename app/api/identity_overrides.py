"""Finds where a chain request tries to name a tenant or user other than its token's.

Such values are never used (identity comes from the token alone: `app.api.chains`),
but an attempt is worth a security event. Looked for in `config.configurable` and
`config.metadata` (nested, as far as `MAX_DEPTH`), in the config a `/c/{config_hash}/`
path carries, and in the top-level fields of the input (or each batch input). A value
equal to the caller's own tenant or user overrides nothing and is not reported; the
run-context key itself always is (only the server may set it).
"""

from __future__ import annotations

import json
from typing import Any

from langserve.lzstring import LZString

from app.core.auth import Principal
from chains.context import RUN_CONTEXT_KEY

MAX_DEPTH = 4
MAX_FINDINGS = 10


def _own_value(key: str, value: object, principal: Principal) -> bool:
    return (key == "tenant_id" and value == principal.tenant_id) or (key == "user_id" and value == principal.user_id)


def _walk(value: object, where: str, principal: Principal, found: list[dict[str, Any]], depth: int = 0) -> None:
    if not isinstance(value, dict) or depth > MAX_DEPTH or len(found) >= MAX_FINDINGS:
        return
    for key, inner in value.items():
        if key == RUN_CONTEXT_KEY or (key in ("tenant_id", "user_id") and not _own_value(key, inner, principal)):
            found.append({"where": f"{where}.{key}", "value": inner if isinstance(inner, (str, int)) else "…"})
        else:
            _walk(inner, f"{where}.{key}", principal, found, depth + 1)


def _configs(body: dict[str, Any], config_hash: str | None) -> list[tuple[str, object]]:
    config = body.get("config")
    configs: list[tuple[str, object]] = (
        [(f"config[{i}]", c) for i, c in enumerate(config)] if isinstance(config, list) else [("config", config)]
    )
    if config_hash:
        try:
            decoded = LZString.decompressFromEncodedURIComponent(config_hash)  # type: ignore[no-untyped-call]
            configs.append(("path config", json.loads(decoded or "")))
        except (ValueError, TypeError, KeyError, IndexError):
            pass  # LangServe refuses it by itself
    return configs


def identity_overrides(body: object, config_hash: str | None, principal: Principal) -> list[dict[str, Any]]:
    """Each place the request names another tenant or user, as `{where, value}`."""
    if not isinstance(body, dict):
        return []
    found: list[dict[str, Any]] = []
    for where, config in _configs(body, config_hash):
        if isinstance(config, dict):
            for section in ("configurable", "metadata"):
                _walk(config.get(section), f"{where}.{section}", principal, found)
    inputs = body.get("inputs")
    items = [(f"inputs[{i}]", item) for i, item in enumerate(inputs)] if isinstance(inputs, list) else []
    items.append(("input", body.get("input")))
    for where, item in items:
        if isinstance(item, dict):
            found += [{"where": f"{where}.{key}", "value": item[key] if isinstance(item[key], (str, int)) else "…"}
                      for key in ("tenant_id", "user_id") if key in item and not _own_value(key, item[key], principal)]
    return found[:MAX_FINDINGS]
