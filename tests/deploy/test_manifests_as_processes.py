"""The deployment as shipped reaches the demo's verdict: the rendered manifests run as processes.

Each Deployment of an overlay (one replica) and the report and promote CronJobs run as local
processes with the commands, args, env, mounted files, ports, probes and secrets of the rendered
objects (tests/deploy/pods.py says how a cluster is emulated). The demo's traffic goes to the
client-facing Service; the comparator, configured by the manifests, judges under the demo's
shortened-window policy. What differs from the shipped objects is what the demo changes too: the
ConfigMap's ``policy.toml`` is the demo policy, the comparator samples memory and looks every 2 s,
and the proxy waits 2 s for the candidate (the shipped 250 ms assumes the candidate has CPUs of
its own; here five processes share the machine's). Then:

* the good candidate (registry alias ``candidate`` = 2) gets PROMOTE, with memory samples of
  *both* model servers, the decision arrives at the webhook signed with the Secret's key, the
  promote Job moves the ``production`` alias and production serves version 2 without a restart;
* the bad candidate (alias moved to 3) gets REJECT and the promote Job refuses;
* the report CronJob writes its report with a read-only root filesystem, and without its scratch
  volume matplotlib cannot start.

Staging runs on SQLite; production on this machine's PostgreSQL (SHADOWTEE_TEST_PG_URL), with
its candidate's ``--device cuda`` served on the CPU (this machine has no GPU; bench/
cuda_libs_check.py checks the GPU image's libraries) and one replica of each Deployment.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shadowtee.traffic import digits_requests, drive
from tests.deploy.pods import ROOT, Cluster, PodError
from tests.deploy.render import render
from tests.support.poll import wait_until

DEPLOY = ROOT / "deploy"
EXPERIMENT = "digits-v1-vs-v2"
ROUTE = "/v2/models/digits/infer"
DEMO_POLICY = ROOT / "comparator" / "judge" / "demo_policy.toml"
REQUESTS = 2000  # the demo's defaults: 2,000 requests, 4 in flight, 100 per second
TOKEN = "test-ingest-token"
WEBHOOK_KEY = "test-webhook-secret"
DECISIONS = {"PROMOTE", "REJECT", "KEEP_OBSERVING"}


class Hooks(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("H", (Hooks,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/shadowtee", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and the pods run as uid 10001.
    path = Path(tempfile.mkdtemp(prefix="shadowtee-pods-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _get(url: str, timeout: float = 5.0) -> Any:
    # The comparator's API asks for the ingest token (the Secret's) on reads too.
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.load(resp)


def _stored_pairs(cluster: Cluster) -> int:
    try:
        doc = _get(cluster.url("comparator", 8090, "/v1/experiments"), 2)
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    rows = doc.get("experiments", []) if isinstance(doc, dict) else doc
    return next((int(r.get("n_pairs", 0)) for r in rows if r.get("name") == EXPERIMENT), 0)


def _wait_for(predicate: Any, timeout_s: float, what: str, step_s: float = 0.5) -> Any:
    return wait_until(predicate, what, timeout_s, step_s)


def _objects(overlay: str) -> list[dict[str, Any]]:
    objects, _ = render(DEPLOY / overlay)
    objects = copy.deepcopy(objects)
    for o in objects:
        for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if "--device" in c.get("args", []) and "cuda" in c["args"]:
                # No GPU on this machine: the production candidate's server runs on the CPU.
                c["args"] = ["cpu" if a == "cuda" else a for a in c["args"]]
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and "policy.toml" in o["data"])
    cm["data"]["policy.toml"] = DEMO_POLICY.read_text()
    return objects


def _date_shim(directory: Path) -> Path:
    """``date`` that reads ``yesterday`` as ``today``: the nightly job run on the day of the data."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "date"
    shim.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do shift; [ "$a" = yesterday ] && a=today; set -- "$@" "$a"; done\n'
        'exec /bin/date "$@"\n'
    )
    shim.chmod(0o755)
    return directory


def run_experiment(
    overlay: str,
    workdir: Path,
    db_url: str,
    candidate_version: str,
    webhook: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> tuple[dict[str, Any], Cluster]:
    """Start the overlay, seed the registry, drive the demo's traffic; the verdict reached."""
    hook_url, received = webhook
    secrets = {
        "shadowtee-comparator": {
            "database-url": db_url,
            "ingest-token": TOKEN,
            "webhook-url": hook_url,
            "webhook-secret": WEBHOOK_KEY,
        }
    }
    cluster = Cluster(
        _objects(overlay),
        workdir,
        secrets,
        external_writable=[Path(db_url.split(":///", 1)[1]).parent]
        if db_url.startswith("sqlite")
        else [],
        env_overrides={
            # as the demo shortens them: memory sampled every 2 s, a look (and its webhook) every 2 s
            "SHADOWTEE_COMPARATOR__SCRAPE_INTERVAL_S": "2",
            "SHADOWTEE_COMPARATOR__VERDICT_INTERVAL_S": "2",
            # as the demo does: five processes share this machine's cores, so the candidate's
            # deadline is 2 s instead of the shipped 250 ms, which assumes a pod with its own CPUs
            "SHADOWTEE_PROXY__SHADOW_TIMEOUT_MS": "2000",
        },
        path_prepend=[_date_shim(workdir / "shim")],
    )
    try:
        # The registry volume is seeded by the model pod's init container; the operator then
        # points the candidate alias at the version under test.
        cluster.run_init_containers("model")
        aliases = cluster.claim_dir("shadowtee-models") / "digits" / "aliases.json"
        assert json.loads(aliases.read_text()) == {"candidate": "2", "production": "1"}
        aliases.write_text(json.dumps({"candidate": candidate_version, "production": "1"}))
        servers = cluster.start_pod("model-candidate")
        servers += cluster.start_pod("model")
        servers += cluster.start_pod("comparator")
        cluster.wait_ready(servers, timeout_s=90)

        bodies, _ = digits_requests(ROOT / "models")
        url = cluster.url("model", 80, ROUTE)
        statuses = asyncio.run(drive(url, bodies, REQUESTS, 4, 100.0))
        assert statuses == {"200": REQUESTS}, statuses
        _wait_for(lambda: _stored_pairs(cluster) >= REQUESTS, 45, "every pair at the comparator")

        verdict_url = cluster.url("comparator", 8090, f"/v1/experiments/{EXPERIMENT}/verdict")

        def decided() -> dict[str, Any] | None:
            v = _get(verdict_url, 10)
            return v if str(v["decision"]).upper() != "KEEP_OBSERVING" else None

        verdict = _wait_for(decided, 90, "a decision under the demo policy", step_s=2)
        decision = str(verdict["decision"]).upper()

        # The hook carries the comparator's decision, signed with the Secret's key.
        def hooked() -> tuple[dict[str, str], bytes] | None:
            return next((h for h in received if decision.encode() in h[1].upper()), None)

        headers, body = _wait_for(hooked, 15, f"the {decision} webhook")
        t, mac = (p.split("=", 1)[1] for p in headers["X-Shadowtee-Signature"].split(","))
        expected = hmac.new(WEBHOOK_KEY.encode(), f"{t}.".encode() + body, hashlib.sha256)
        assert hmac.compare_digest(mac, expected.hexdigest())
        assert decision in json.dumps(json.loads(body)).upper()
        return verdict, cluster
    except BaseException:
        logs = "\n".join(f"--- {p.pod}/{p.container}\n{p.tail(2000)}" for p in cluster.processes)
        cluster.cleanup()
        print(logs)
        raise


def _check_memory_of_both_servers(cluster: Cluster, db_url: str) -> None:
    """The comparator stored RSS samples of both sides, scraped from the two model servers."""
    from comparator.store.store import Store

    comparator = cluster.named("Deployment", "comparator")["spec"]["template"]["spec"]
    args = comparator["containers"][0]["args"]
    targets = dict(a.split("=", 1) for a in args if a.startswith(("prod=", "candidate=")))
    for side, url in targets.items():
        with urllib.request.urlopen(cluster.translate("comparator", url, {}), timeout=5) as resp:
            text = resp.read().decode()
        assert "shadowtee_serving_" in text and "process_resident_memory_bytes" in text, side

    async def samples() -> set[tuple[str, str]]:
        store = await Store.open(db_url, upgrade=False)
        try:
            return {(m.side, m.kind) for m in await store.memory_samples(EXPERIMENT)}
        finally:
            await store.close()

    assert {("prod", "rss"), ("cand", "rss")} <= asyncio.run(samples())


def _check_promote(cluster: Cluster, promoted: bool) -> None:
    code, log = cluster.run_job("shadowtee-promote")
    aliases_file = cluster.claim_dir("shadowtee-models") / "digits" / "aliases.json"
    aliases = json.loads(aliases_file.read_text())
    if not promoted:
        assert code == 1, log
        assert aliases["production"] == "1"
        return
    assert code == 0, log
    assert aliases["production"] == "2"
    # Production serves the registry alias: version 2, swapped in without a restart.
    model_url = cluster.url("model-internal", 8001, "/v2/models/digits")
    _wait_for(
        lambda: str(_get(model_url).get("versions", [""])[0]) == "2" or None,
        30,
        "production to serve version 2",
    )


def _check_report(cluster: Cluster) -> None:
    code, log = cluster.run_job("shadowtee-daily-report")
    assert code == 0, log
    day = datetime.now(UTC).date().isoformat()
    out = cluster.claim_dir("shadowtee-reports") / day
    assert {"report.html", "report.json", "report.md"} <= {p.name for p in out.iterdir()}, log


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_staging_as_shipped_promotes_the_good_candidate_on_sqlite(
    workdir: Path, webhook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    db = workdir / "db"
    db.mkdir()
    db.chmod(0o777)
    db_url = f"sqlite:///{db}/shadowtee.sqlite"
    verdict, cluster = run_experiment("overlays/staging", workdir, db_url, "2", webhook)
    try:
        assert str(verdict["decision"]).upper() == "PROMOTE", verdict
        _check_memory_of_both_servers(cluster, db_url)
        _check_promote(cluster, promoted=True)
        _check_report(cluster)
    finally:
        cluster.cleanup()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_staging_as_shipped_rejects_the_bad_candidate_on_sqlite(
    workdir: Path, webhook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    db = workdir / "db"
    db.mkdir()
    db.chmod(0o777)
    verdict, cluster = run_experiment(
        "overlays/staging", workdir, f"sqlite:///{db}/shadowtee.sqlite", "3", webhook
    )
    try:
        assert str(verdict["decision"]).upper() == "REJECT", verdict
        _check_promote(cluster, promoted=False)
    finally:
        cluster.cleanup()


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    import asyncpg

    admin = os.environ.get("SHADOWTEE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"shadowtee_pods_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as exc:
        if os.environ.get("SHADOWTEE_REQUIRE_PG"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {admin}: {exc}")
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_production_as_shipped_promotes_the_good_candidate_on_postgresql(
    workdir: Path, fresh_pg: str, webhook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    verdict, cluster = run_experiment("overlays/production", workdir, fresh_pg, "2", webhook)
    try:
        assert str(verdict["decision"]).upper() == "PROMOTE", verdict
        _check_memory_of_both_servers(cluster, fresh_pg)
        _check_promote(cluster, promoted=True)
        _check_report(cluster)
    finally:
        cluster.cleanup()


def test_the_report_job_cannot_start_matplotlib_without_its_scratch_volume(workdir: Path) -> None:
    objects = _objects("base")
    job = next(o for o in objects if o["metadata"]["name"] == "shadowtee-daily-report")
    template = job["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    container["command"] = ["python", "-c", "import reports.plots"]
    container["args"] = []
    env = {"database-url": "sqlite:///unused"}
    ok = Cluster(copy.deepcopy(objects), workdir / "ok", {"shadowtee-comparator": env})
    if os.geteuid() == 0 and not ok.read_only_root:
        pytest.skip("running as root without unshare(1): a read-only root cannot be emulated")
    code, log = ok.run_job("shadowtee-daily-report")
    assert code == 0, log
    # The same container without the emptyDir on /tmp: a read-only root filesystem everywhere.
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp"]
    broken = Cluster(objects, workdir / "broken", {"shadowtee-comparator": env})
    code, log = broken.run_job("shadowtee-daily-report")
    assert code != 0 and ("matplotlib" in log or "writable" in log), log


def test_a_pod_missing_a_required_secret_key_does_not_start(workdir: Path) -> None:
    cluster = Cluster(_objects("overlays/staging"), workdir, {"shadowtee-comparator": {}})
    with pytest.raises(PodError, match="no key database-url"):
        cluster.start_pod("comparator")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_production_as_shipped_rejects_the_bad_candidate_on_postgresql(
    workdir: Path, fresh_pg: str, webhook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    verdict, cluster = run_experiment("overlays/production", workdir, fresh_pg, "3", webhook)
    try:
        assert str(verdict["decision"]).upper() == "REJECT", verdict
        _check_promote(cluster, promoted=False)
    finally:
        cluster.cleanup()
