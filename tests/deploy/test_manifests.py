"""deploy/: every manifest validates against the Kubernetes schema and its references line up."""

from __future__ import annotations

import copy
from pathlib import Path

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
        for c in t["spec"]["containers"]:
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
