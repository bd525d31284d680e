"""deploy/: every manifest validates against the Kubernetes schema and its references line up."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.deploy import crossref
from tests.deploy.render import render

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed"
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.31.0"
# Secrets created out of band (documented in deploy/base/comparator.yaml and the README).
EXTERNAL_SECRETS = {"shadowtee-comparator"}
KUSTOMIZATIONS = ["base", "overlays/staging", "overlays/production"]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[list[dict], set[str]]:
    return render(DEPLOY / request.param)


def _validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_object_validates_strictly_against_the_kubernetes_schema(rendered) -> None:
    objects, _ = rendered
    assert {o["kind"] for o in objects} >= {
        "Deployment",
        "Service",
        "CronJob",
        "NetworkPolicy",
        "Namespace",
        "PersistentVolumeClaim",
    }
    for obj in objects:
        _validate(obj)


def test_selectors_ports_probes_policies_and_references_line_up(rendered) -> None:
    objects, generated = rendered
    assert crossref.all_problems(objects, generated, EXTERNAL_SECRETS) == []


def test_schema_validation_rejects_an_unknown_field() -> None:
    objects, _ = render(DEPLOY / "base")
    dep = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(dep)


def _broken(mutate) -> list[str]:
    objects, generated = render(DEPLOY / "base")
    objects = copy.deepcopy(objects)
    mutate(objects)
    return crossref.all_problems(objects, generated, EXTERNAL_SECRETS)


def _named(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_a_service_whose_selector_matches_no_pod_is_caught() -> None:
    problems = _broken(
        lambda objs: _named(objs, "Service", "comparator")["spec"]["selector"].update(
            {"app.kubernetes.io/name": "comparatr"}
        )
    )
    assert any("Service comparator" in p and "matches no pods" in p for p in problems)


def test_a_renamed_container_port_breaks_service_and_probe_references() -> None:
    def rename(objs: list[dict]) -> None:
        c = _named(objs, "Deployment", "comparator")["spec"]["template"]["spec"]["containers"][0]
        c["ports"][0]["name"] = "http"

    problems = _broken(rename)
    assert any("targetPort 'ingest'" in p for p in problems)
    assert any("readinessProbe port 'ingest'" in p for p in problems)
    assert any("NetworkPolicy comparator-ingest-from-proxies: port 'ingest'" in p for p in problems)


def test_a_deployment_selector_that_misses_its_pods_is_caught() -> None:
    problems = _broken(
        lambda objs: _named(objs, "Deployment", "model")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "prod"}
        )
    )
    assert any("Deployment model: selector" in p for p in problems)


def test_an_unknown_configmap_or_secret_is_caught() -> None:
    def break_refs(objs: list[dict]) -> None:
        t = _named(objs, "Deployment", "comparator")["spec"]["template"]["spec"]
        t["volumes"][0]["configMap"]["name"] = "nope"
        t["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] = "db-password"

    problems = _broken(break_refs)
    assert any("unknown ConfigMap nope" in p for p in problems)
    assert any("undocumented Secret db-password" in p for p in problems)


def test_pods_run_as_non_root_with_a_read_only_root_filesystem() -> None:
    objects, _ = render(DEPLOY / "overlays/production")
    for owner, t in crossref.pod_templates(objects):
        assert t["spec"]["securityContext"]["runAsNonRoot"] is True, owner["metadata"]["name"]
        for c in t["spec"]["containers"] + t["spec"].get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert "limits" in c["resources"] and "memory" in c["resources"]["limits"]


def test_candidate_requests_a_gpu_in_production_and_not_in_staging() -> None:
    def candidate(kdir: str) -> dict:
        objs, _ = render(DEPLOY / kdir)
        return _named(objs, "Deployment", "model-candidate")["spec"]["template"]["spec"]

    prod = candidate("overlays/production")
    assert prod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in prod["tolerations"])
    staging = candidate("overlays/staging")
    assert "nvidia.com/gpu" not in staging["containers"][0]["resources"]["limits"]
    assert "tolerations" not in staging


def test_sidecar_grace_period_outlasts_the_proxy_drain() -> None:
    objects, _ = render(DEPLOY / "base")
    spec = _named(objects, "Deployment", "model")["spec"]["template"]["spec"]
    # proxy drain = tee grace + shutdown flush, bounded well under 30 s by the proxy's defaults
    assert spec["terminationGracePeriodSeconds"] >= 40


# -- what the shipped layout must line up (issue: the deployment reaches a verdict) -----------

SPOOL_MARGIN = 1.25
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 10**6, "G": 10**9}


def quantity_bytes(q: str) -> int:
    """A Kubernetes memory/storage quantity (``1Gi``, ``800M``, ``1048576``) in bytes."""
    for suffix, factor in UNITS.items():
        if q.endswith(suffix) and q[: -len(suffix)].isdigit():
            return int(q[: -len(suffix)]) * factor
    assert q.isdigit(), f"unsupported quantity {q!r}"
    return int(q)


def config_toml(objects: list[dict], key: str = "shadowtee.toml") -> dict:
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and key in o.get("data", {}))
    return tomllib.loads(cm["data"][key])


def _container(objects: list[dict], deployment: str, name: str) -> dict:
    spec = _named(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def _arg(container: dict, flag: str) -> list[str]:
    args = container["args"]
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_the_spool_volume_is_sized_above_max_spool_bytes_with_a_margin(kdir: str) -> None:
    objects, _ = render(DEPLOY / kdir)
    max_spool = config_toml(objects)["proxy"]["max_spool_bytes"]
    spec = _named(objects, "Deployment", "model")["spec"]["template"]["spec"]
    spool = next(v for v in spec["volumes"] if v["name"] == "spool")
    proxy = next(c for c in spec["containers"] if c["name"] == "shadowtee-proxy")
    mount = next(m for m in proxy["volumeMounts"] if m["name"] == "spool")
    assert config_toml(objects)["proxy"]["spool_dir"] == mount["mountPath"]
    size = quantity_bytes(spool["emptyDir"]["sizeLimit"])
    assert size >= SPOOL_MARGIN * max_spool, (size, max_spool, size / max_spool)


def test_the_spool_margin_check_catches_a_volume_equal_to_the_bound() -> None:
    assert quantity_bytes("1Gi") < SPOOL_MARGIN * quantity_bytes("1Gi")
    assert quantity_bytes("800Mi") == 838860800


def _service_target(objects: list[dict], url: str) -> tuple[dict, dict]:
    """The (Service port, container) an in-cluster URL ``http://svc.ns.svc:PORT/...`` reaches."""
    parts = urlsplit(url)
    svc_name, ns = str(parts.hostname).split(".")[:2]
    svc = _named(objects, "Service", svc_name)
    assert svc["metadata"]["namespace"] == ns
    port = next(p for p in svc["spec"]["ports"] if p["port"] == parts.port)
    pods = [
        t
        for _, t in crossref.pod_templates(objects)
        if all(t["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    ]
    assert len(pods) == 1, url
    for c in pods[0]["spec"]["containers"]:
        for p in c.get("ports", []):
            if port["targetPort"] in (p.get("name"), p["containerPort"]):
                return port, c
    raise AssertionError(f"{url}: no container port {port['targetPort']}")


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_the_comparator_samples_memory_from_both_model_servers(kdir: str) -> None:
    objects, _ = render(DEPLOY / kdir)
    comparator = _container(objects, "comparator", "comparator")
    scrapes = dict(s.split("=", 1) for s in _arg(comparator, "--scrape"))
    for side, deployment in (("prod", "model"), ("candidate", "model-candidate")):
        _, target = _service_target(objects, scrapes[side])
        assert target["args"][0] == "serve", f"{side} scrapes {target['name']}, not a model server"
        assert target is _container(objects, deployment, "model")
        listen = _arg(target, "--listen")[0]
        assert not listen.startswith("127."), f"{side}: {listen} cannot be scraped from another pod"
    cfg = config_toml(objects)
    assert cfg["comparator"]["scrape_experiment"] == cfg["proxy"]["experiment"]


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_the_client_service_publishes_only_the_proxys_data_port(kdir: str) -> None:
    objects, _ = render(DEPLOY / kdir)
    ports = _named(objects, "Service", "model")["spec"]["ports"]
    assert [p["targetPort"] for p in ports] == ["proxy-http"]
    internal = _named(objects, "Service", "model-internal")["spec"]["ports"]
    assert {p["targetPort"] for p in internal} == {"proxy-admin", "model-http"}
    # Only the comparator and Prometheus reach the internal ports; clients reach the data port.
    policy = _named(objects, "NetworkPolicy", "model-from-clients-and-comparator")["spec"]
    open_rules = [r for r in policy["ingress"] if "from" not in r]
    assert [p["port"] for r in open_rules for p in r["ports"]] == ["proxy-http"]


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_both_models_are_served_through_the_registry_aliases_promote_moves(kdir: str) -> None:
    objects, _ = render(DEPLOY / kdir)
    promote = _named(objects, "CronJob", "shadowtee-promote")["spec"]["jobTemplate"]["spec"]
    pspec = promote["template"]["spec"]
    script = pspec["containers"][0]["args"][0]
    found = re.search(r"--registry (\S+)", script)
    assert found is not None, script
    registry = found[1]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pspec["volumes"]}
    mounts = {m["mountPath"]: claim[m["name"]] for m in pspec["containers"][0]["volumeMounts"]}
    for deployment, alias in (("model", "production"), ("model-candidate", "candidate")):
        spec = _named(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        model = next(c for c in spec["containers"] if c["name"] == "model")
        assert _arg(model, "--model") == [f"{registry}#digits@{alias}"]
        vols = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]
        }
        mount = next(m for m in model["volumeMounts"] if m["mountPath"] == registry)
        assert vols[mount["name"]] == mounts[registry], deployment


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_the_webhook_secret_and_url_come_from_the_secret(kdir: str) -> None:
    objects, _ = render(DEPLOY / kdir)
    env = {e["name"]: e for e in _container(objects, "comparator", "comparator")["env"]}
    for var, key in (
        ("SHADOWTEE_COMPARATOR__WEBHOOK_SECRET", "webhook-secret"),
        ("SHADOWTEE_COMPARATOR__WEBHOOK_URL", "webhook-url"),
    ):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("shadowtee-comparator", key)


def test_the_report_job_has_a_writable_scratch_dir_for_matplotlib() -> None:
    objects, _ = render(DEPLOY / "base")
    spec = _named(objects, "CronJob", "shadowtee-daily-report")["spec"]["jobTemplate"]["spec"]
    c = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert env["MPLCONFIGDIR"].startswith("/tmp/") and "emptyDir" in vols[mounts["/tmp"]]
