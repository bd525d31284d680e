"""Cross-reference checks over rendered manifests: each returns a list of problems (empty is good)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for o in objects:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]
        elif o["kind"] == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _port_names(template: Obj) -> set[str]:
    return {
        p["name"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p
    }


def selector_problems(objects: list[Obj]) -> list[str]:
    out = []
    for o in objects:
        if o["kind"] in WORKLOADS:
            sel = o["spec"]["selector"]["matchLabels"]
            labels = o["spec"]["template"]["metadata"]["labels"]
            if not _matches(sel, labels):
                out.append(
                    f"{o['kind']} {o['metadata']['name']}: selector {sel} does not match its pods {labels}"
                )
    return out


def service_problems(objects: list[Obj]) -> list[str]:
    out = []
    templates = [t for _, t in pod_templates(objects)]
    for svc in (o for o in objects if o["kind"] == "Service"):
        name = svc["metadata"]["name"]
        pods = [t for t in templates if _matches(svc["spec"]["selector"], t["metadata"]["labels"])]
        if not pods:
            out.append(f"Service {name}: selector {svc['spec']['selector']} matches no pods")
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and not all(target in _port_names(t) for t in pods):
                out.append(f"Service {name}: targetPort {target!r} is not a named port of its pods")
    return out


def probe_problems(objects: list[Obj]) -> list[str]:
    out = []
    for owner, t in pod_templates(objects):
        for c in t["spec"]["containers"]:
            names = {p["name"] for p in c.get("ports", []) if "name" in p}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(kind, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in names:
                    out.append(
                        f"{owner['metadata']['name']}/{c['name']}: {kind} port {port!r} not declared"
                    )
    return out


def network_policy_problems(objects: list[Obj]) -> list[str]:
    out = []
    templates = [t for _, t in pod_templates(objects)]
    for np_ in (o for o in objects if o["kind"] == "NetworkPolicy"):
        name = np_["metadata"]["name"]
        pods = [
            t
            for t in templates
            if _matches(np_["spec"]["podSelector"].get("matchLabels", {}), t["metadata"]["labels"])
        ]
        if not pods:
            out.append(f"NetworkPolicy {name}: podSelector matches no pods")
            continue
        for rule in np_["spec"].get("ingress", []):
            for src in rule.get("from", []):
                sel = src.get("podSelector", {}).get("matchLabels")
                if sel and not any(_matches(sel, t["metadata"]["labels"]) for t in templates):
                    out.append(f"NetworkPolicy {name}: source {sel} matches no pods")
            for port in rule.get("ports", []):
                p = port.get("port")
                if isinstance(p, str) and not all(p in _port_names(t) for t in pods):
                    out.append(f"NetworkPolicy {name}: port {p!r} is not a named port of its pods")
    return out


def reference_problems(
    objects: list[Obj], generated: set[str], external_secrets: set[str]
) -> list[str]:
    out = []
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for owner, t in pod_templates(objects):
        who = owner["metadata"]["name"]
        for vol in t["spec"].get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in generated:
                out.append(
                    f"{who}: volume {vol['name']} uses unknown ConfigMap {vol['configMap']['name']}"
                )
            pvc = vol.get("persistentVolumeClaim")
            if pvc and pvc["claimName"] not in claims:
                out.append(f"{who}: volume {vol['name']} uses unknown claim {pvc['claimName']}")
        mounts = {m["name"] for c in t["spec"]["containers"] for m in c.get("volumeMounts", [])}
        missing = mounts - {v["name"] for v in t["spec"].get("volumes", [])}
        out += [f"{who}: volumeMount {m} has no volume" for m in sorted(missing)]
        for c in t["spec"]["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in external_secrets:
                    out.append(
                        f"{who}/{c['name']}: env {env['name']} uses undocumented Secret {ref['name']}"
                    )
    return out


def all_problems(objects: list[Obj], generated: set[str], external_secrets: set[str]) -> list[str]:
    return (
        selector_problems(objects)
        + service_problems(objects)
        + probe_problems(objects)
        + network_policy_problems(objects)
        + reference_problems(objects, generated, external_secrets)
    )
