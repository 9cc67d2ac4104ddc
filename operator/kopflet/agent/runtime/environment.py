"""A container's environment: env, envFrom, ConfigMap/Secret keys and the downward API.

Pure: ConfigMaps and Secrets come from a :class:`ReferenceResolver` the agent's main loop
implements over its watch cache, so a missing object is reported at once
(``CreateContainerConfigError``) instead of waiting on an API call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from kopflet.api import UID, Container, EnvVar

CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"

# The core's rule for envFrom keys; others are skipped, not fatal.
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_FIELD_KEY = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


class ContainerConfigError(Exception):
    """The container cannot be configured as specified; reported as
    ``CreateContainerConfigError`` and retried on the next pass (the object may appear)."""

    reason = CREATE_CONTAINER_CONFIG_ERROR


class ReferenceResolver(Protocol):
    """ConfigMaps and Secrets by namespace and name, values as bytes (Secret data decoded,
    ConfigMap ``data`` UTF-8 encoded, ``binaryData`` decoded); ``None`` when absent."""

    def config_map(self, namespace: str, name: str) -> Mapping[str, bytes] | None: ...

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None: ...


@dataclass(frozen=True, kw_only=True)
class InstanceFacts:
    """What the downward API can expose of the instance."""

    name: str
    namespace: str
    uid: UID
    node_name: str
    instance_ip: str = ""
    host_ip: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def field_value(facts: InstanceFacts, path: str) -> str:
    simple = {
        "metadata.name": facts.name,
        "metadata.namespace": facts.namespace,
        "metadata.uid": facts.uid,
        "spec.nodeName": facts.node_name,
        "status.instanceIP": facts.instance_ip,
        # The core spellings, for templates copied from a Pod.
        "status.podIP": facts.instance_ip,
        "status.hostIP": facts.host_ip,
    }
    if path in simple:
        return simple[path]
    match = _FIELD_KEY.fullmatch(path)
    if match is not None:
        source = facts.labels if match[1] == "labels" else facts.annotations
        return source.get(match[2], "")
    raise ContainerConfigError(f"unsupported fieldRef path {path!r}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The core's ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal
    ``$``, anything else is left as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _decode(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _config_map_key(
    resolver: ReferenceResolver, namespace: str, name: str, key: str, optional: bool
) -> str | None:
    data = resolver.config_map(namespace, name)
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'configmap "{name}" not found')
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in ConfigMap {namespace}/{name}")
    return _decode(data[key])


def _secret_key(
    resolver: ReferenceResolver, namespace: str, name: str, key: str, optional: bool
) -> str | None:
    data = resolver.secret(namespace, name)
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'secret "{name}" not found')
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in Secret {namespace}/{name}")
    return _decode(data[key])


def _env_var_value(
    var: EnvVar, env: Mapping[str, str], resolver: ReferenceResolver, facts: InstanceFacts
) -> str | None:
    source = var.value_from
    if source is None:
        return expand(var.value or "", env)
    ns = facts.namespace
    if (ref := source.config_map_key_ref) is not None:
        return _config_map_key(resolver, ns, ref.name, ref.key, bool(ref.optional))
    if (sref := source.secret_key_ref) is not None:
        return _secret_key(resolver, ns, sref.name, sref.key, bool(sref.optional))
    if source.field_ref is not None:
        return field_value(facts, source.field_ref.field_path)
    raise ContainerConfigError(f"env {var.name}: valueFrom names no source")


def resolve_env(
    container: Container, *, resolver: ReferenceResolver, facts: InstanceFacts
) -> dict[str, str]:
    """The container's environment in the core order: envFrom sources, then env."""
    env: dict[str, str] = {}
    for source in container.env_from or ():
        prefix = source.prefix or ""
        if source.config_map_ref is not None:
            ref = source.config_map_ref
            data = resolver.config_map(facts.namespace, ref.name)
            if data is None and not ref.optional:
                raise ContainerConfigError(f'configmap "{ref.name}" not found')
        elif source.secret_ref is not None:
            sref = source.secret_ref
            data = resolver.secret(facts.namespace, sref.name)
            if data is None and not sref.optional:
                raise ContainerConfigError(f'secret "{sref.name}" not found')
        else:
            continue
        for key, raw in (data or {}).items():
            if _ENV_NAME.fullmatch(prefix + key):
                env[prefix + key] = _decode(raw)
    for var in container.env or ():
        value = _env_var_value(var, env, resolver, facts)
        if value is not None:
            env[var.name] = value
    return env
