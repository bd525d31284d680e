"""Run rendered Kubernetes objects as local processes: each container's command, args, env and
mounted files, on loopback.

What a cluster would do, done on this machine:

* **ports**: every container port of every pod gets a free loopback port. In a container's
  strings (args, env values, ConfigMap files), ``SVC.NS.svc[.cluster.local]:PORT`` becomes the
  loopback port of the container port the Service's ``targetPort`` names, and
  ``0.0.0.0|127.0.0.1|localhost:PORT`` the loopback port of the pod's own container port;
* **volumes**: a ConfigMap is written to a directory (read-only), an emptyDir is a fresh
  directory per pod, a PersistentVolumeClaim one directory per claim shared by the pods that
  mount it; mount paths in the container's strings become those directories;
* **the image**: its ``ENTRYPOINT``, ``PATH`` and ``ENV`` come from the Dockerfile's runtime stage,
  ``/opt/shadowtee/bin`` is this venv's ``bin``, ``/models`` the repository's ``models``. Any other
  image path the container names (``/tmp`` when nothing is mounted there, ``HOME``) is a directory
  of a read-only "root filesystem";
* **the read-only root filesystem**: run as root (CI), each container runs in a mount namespace
  of its own (``unshare -m``) where ``/`` is remounted read-only and only its writable volumes
  (and a SQLite database's directory, which stands in for a database server) are bind-mounted
  read-write, so any other write fails with EROFS as in the pod. It still runs as root: the
  interpreter may live under a home directory ``runAsUser`` could not read. As another user, the
  emulated root directories are mode 0555 instead;
* **secrets**: ``secretKeyRef`` values come from the test's dict; a missing key fails the start
  unless the reference is ``optional``, as the kubelet does;
* **probes**: a container is ready when its readinessProbe's ``httpGet`` answers 2xx/3xx.

Deployments run one replica each. Nothing here needs a network beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port as free_port

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
IMAGE_PREFIX = "/opt/shadowtee/bin"
IMAGE_HOME = "/nonexistent"  # the image's user (Dockerfile: useradd --home-dir /nonexistent)

__all__ = ["Cluster", "PodError", "Process", "free_port", "image_config"]


class PodError(AssertionError):
    """A container could not start, exited, or never became ready; the message has its log."""


def image_config(dockerfile: Path = ROOT / "Dockerfile") -> tuple[list[str], dict[str, str], str]:
    """(ENTRYPOINT, ENV, WORKDIR) of the Dockerfile's last stage."""
    text = dockerfile.read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    entry: list[str] = []
    env: dict[str, str] = {}
    workdir = "/"
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENTRYPOINT":
            import json

            entry = json.loads(rest)
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif word == "WORKDIR":
            workdir = rest.strip()
    return entry, env, workdir


_RO_SCRIPT = """
while [ "$1" != -- ]; do mount --bind "$1" "$1" || exit 125; shift; done; shift
mount -o remount,bind,ro / || exit 125
exec "$@"
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _RO_SCRIPT,
        "sh",
        "--",
        "true",
    ]
    return subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0


def _pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        if o["kind"] == "Deployment":
            yield o["metadata"]["name"], o["spec"]["template"]
        elif o["kind"] == "CronJob":
            yield o["metadata"]["name"], o["spec"]["jobTemplate"]["spec"]["template"]


@dataclass
class Process:
    pod: str
    container: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[int, int]
    spec: Obj

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@dataclass
class Cluster:
    """The objects of one rendered overlay, run as processes under ``workdir``."""

    objects: list[Obj]
    workdir: Path
    secrets: Mapping[str, Mapping[str, str]]
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    path_prepend: list[Path] = field(default_factory=list)
    # Directories outside the pods that stay writable (a SQLite database standing in for a server).
    external_writable: list[Path] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entrypoint, self.image_env, self.image_workdir = image_config()
        self.read_only_root = os.geteuid() == 0 and _can_unshare()
        self.ports: dict[tuple[str, int], int] = {}
        for pod, template in _pod_templates(self.objects):
            for c in template["spec"]["containers"]:
                for p in c.get("ports", []):
                    self.ports[(pod, p["containerPort"])] = free_port()
        self.rootfs = self.workdir / "rootfs"
        (self.rootfs / "tmp").mkdir(parents=True)
        self.rootfs.chmod(0o555)
        (self.rootfs / "tmp").chmod(0o555)
        self.claims: dict[str, Path] = {}

    # -- lookups ------------------------------------------------------------------------------

    def named(self, kind: str, name: str) -> Obj:
        return next(o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name)

    def template(self, pod: str) -> Obj:
        return next(t for name, t in _pod_templates(self.objects) if name == pod)

    def service_port(self, service: str, port: int) -> int:
        """The loopback port behind ``service:port`` (its targetPort on the pod it selects)."""
        svc = self.named("Service", service)
        sport = next(p for p in svc["spec"]["ports"] if p["port"] == port)
        target = sport.get("targetPort", port)
        sel = svc["spec"]["selector"]
        pods = [
            (name, t)
            for name, t in _pod_templates(self.objects)
            if all(t["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
        ]
        if len(pods) != 1:
            raise PodError(f"Service {service}: selects {len(pods)} pod templates")
        name, t = pods[0]
        for c in t["spec"]["containers"]:
            for p in c.get("ports", []):
                if target in (p.get("name"), p["containerPort"]):
                    return self.ports[(name, p["containerPort"])]
        raise PodError(f"Service {service}: targetPort {target!r} is no container port")

    def url(self, service: str, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.service_port(service, port)}{path}"

    def claim_dir(self, claim: str) -> Path:
        if claim not in self.claims:
            self.named("PersistentVolumeClaim", claim)  # must exist
            self.claims[claim] = self._writable(self.workdir / "pvc" / claim)
        return self.claims[claim]

    # -- translation --------------------------------------------------------------------------

    def _writable(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        return path

    def _mounts(self, pod: str, template: Obj, container: Obj) -> dict[str, Path]:
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if "configMap" in vol:
                target = self._configmap_dir(pod, vol["configMap"]["name"])
            elif "emptyDir" in vol:
                target = self._writable(self.workdir / "pods" / pod / "emptydir" / m["name"])
            elif "persistentVolumeClaim" in vol:
                target = self.claim_dir(vol["persistentVolumeClaim"]["claimName"])
            else:
                raise PodError(f"{pod}: volume type of {m['name']} not supported here")
            mounts[m["mountPath"]] = target
        return mounts

    def _configmap_dir(self, pod: str, name: str) -> Path:
        cm = self.named("ConfigMap", name)
        out = self.workdir / "pods" / pod / "configmap" / name
        if not out.exists():
            out.mkdir(parents=True)
            for key, value in cm.get("data", {}).items():
                (out / key).write_text(self._translate_pod_file(pod, value))
                (out / key).chmod(0o444)
            out.chmod(0o555)
        return out

    def _translate_pod_file(self, pod: str, text: str) -> str:
        # ConfigMap files name container paths too (spool_dir): translated with the pod's mounts.
        template = self.template(pod)
        mounts: dict[str, Path] = {}
        for c in template["spec"]["containers"]:
            for m in c.get("volumeMounts", []):
                vol = next(v for v in template["spec"]["volumes"] if v["name"] == m["name"])
                if "configMap" not in vol:
                    mounts[m["mountPath"]] = self._mounts(pod, template, {"volumeMounts": [m]})[
                        m["mountPath"]
                    ]
        return self.translate(pod, text, mounts)

    def translate(self, pod: str, text: str, mounts: Mapping[str, Path]) -> str:
        paths: dict[str, str] = {
            "/models": str(ROOT / "models"),
            "/tmp": str(self.rootfs / "tmp"),
            IMAGE_HOME: str(self.rootfs / IMAGE_HOME.strip("/")),
            IMAGE_PREFIX: str(VENV_BIN),
        }
        paths.update({k: str(v) for k, v in mounts.items()})
        path_alt = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
        pattern = re.compile(
            r"(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc(?:\.cluster\.local)?:(?P<sport>\d+)"
            r"|(?P<local>0\.0\.0\.0|127\.0\.0\.1|localhost):(?P<lport>\d+)"
            rf"|(?<![\w.-])(?P<path>{path_alt})(?=[/#\s\"':]|$)"
        )

        def sub(m: re.Match[str]) -> str:
            if m["svc"]:
                return f"127.0.0.1:{self.service_port(m['svc'], int(m['sport']))}"
            if m["local"]:
                key = (pod, int(m["lport"]))
                if key not in self.ports:
                    raise PodError(f"{pod}: {m[0]} is not a container port of the pod")
                return f"127.0.0.1:{self.ports[key]}"
            return paths[m["path"]]

        return pattern.sub(sub, text)

    # -- running ------------------------------------------------------------------------------

    def _env(self, pod: str, container: Obj, mounts: Mapping[str, Path]) -> dict[str, str]:
        env = {"HOME": IMAGE_HOME, **self.image_env}
        from_secrets: dict[str, str] = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ref = e["valueFrom"]["secretKeyRef"]
            secret = self.secrets.get(ref["name"], {})
            if ref["key"] in secret:
                from_secrets[e["name"]] = secret[ref["key"]]  # taken literally, never translated
            elif not ref.get("optional", False):
                raise PodError(f"{pod}: Secret {ref['name']} has no key {ref['key']}")
        env = {k: self.translate(pod, v, mounts) for k, v in env.items()}
        env.update(from_secrets)
        # Without a volume on /tmp the container's /tmp is read-only: so is TMPDIR here.
        env.setdefault("TMPDIR", self.translate(pod, "/tmp", mounts))
        image_path = env.get("PATH", "").replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        env["PATH"] = os.pathsep.join([*(str(p) for p in self.path_prepend), image_path])
        env.update(self.env_overrides)
        return env

    def _read_only_root(
        self, argv: list[str], container: Obj, mounts: Mapping[str, Path]
    ) -> list[str]:
        """``argv`` wrapped to run with ``/`` read-only but for the writable volumes."""
        if not self.read_only_root:
            return argv
        writable = [
            str(mounts[m["mountPath"]])
            for m in container.get("volumeMounts", [])
            if not m.get("readOnly") and "/configmap/" not in str(mounts[m["mountPath"]])
        ]
        writable += [str(p) for p in self.external_writable]
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _RO_SCRIPT,
            "sh",
            *writable,
            "--",
            *argv,
        ]

    def start(self, pod: str, container: Obj, *, init: bool = False) -> Process:
        template = self.template(pod)
        mounts = self._mounts(pod, template, container)
        argv = list(container.get("command") or self.entrypoint) + list(container.get("args", []))
        if not container.get("command"):
            argv[0] = str(VENV_BIN / argv[0])
        argv = [self.translate(pod, a, mounts) for a in argv]
        env = self._env(pod, container, mounts)
        cwd = self.translate(pod, self.image_workdir, mounts)
        log = self.workdir / "logs" / f"{pod}-{container['name']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self._read_only_root(argv, container, mounts),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        p = Process(pod, container["name"], proc, log, self._pod_ports(pod), container)
        if not init:
            self.processes.append(p)
        return p

    def _pod_ports(self, pod: str) -> dict[int, int]:
        return {cport: port for (name, cport), port in self.ports.items() if name == pod}

    def run_init_containers(self, pod: str, timeout_s: float = 30.0) -> None:
        for c in self.template(pod)["spec"].get("initContainers", []):
            p = self.start(pod, c, init=True)
            try:
                code = p.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.stop(1)
                raise PodError(f"{pod}/{c['name']}: still running after {timeout_s} s") from None
            if code != 0:
                raise PodError(f"{pod}/{c['name']}: exited {code}\n{p.tail()}")

    def start_pod(self, pod: str) -> list[Process]:
        self.run_init_containers(pod)
        return [self.start(pod, c) for c in self.template(pod)["spec"]["containers"]]

    def wait_ready(self, procs: list[Process], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [p for p in procs if "readinessProbe" in p.spec]
        while pending:
            for p in list(pending):
                if p.proc.poll() is not None:
                    raise PodError(f"{p.pod}/{p.container}: exited {p.proc.returncode}\n{p.tail()}")
                if self._probe(p, p.spec["readinessProbe"]):
                    pending.remove(p)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise PodError(
                    "never ready: "
                    + "; ".join(f"{p.pod}/{p.container}:\n{p.tail(1500)}" for p in pending)
                )
            time.sleep(0.2)

    def _probe(self, p: Process, probe: Obj) -> bool:
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(cp["containerPort"] for cp in p.spec["ports"] if cp.get("name") == port)
        url = f"http://127.0.0.1:{p.ports[port]}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return 200 <= resp.status < 400
        except (urllib.error.URLError, OSError):
            return False

    def run_job(self, cronjob: str, timeout_s: float = 60.0) -> tuple[int, str]:
        """Run a CronJob's pod once (like ``kubectl create job --from=cronjob/NAME``)."""
        self.run_init_containers(cronjob)
        (container,) = self.template(cronjob)["spec"]["containers"]
        p = self.start(cronjob, container, init=True)
        try:
            code = p.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.stop(1)
            raise PodError(f"{cronjob}: still running after {timeout_s} s\n{p.tail()}") from None
        return code, p.tail(6000)

    def stop_all(self) -> None:
        for p in reversed(self.processes):
            with contextlib.suppress(Exception):
                p.stop()

    def cleanup(self) -> None:
        self.stop_all()
        for path in (self.rootfs, self.rootfs / "tmp"):
            with contextlib.suppress(OSError):
                path.chmod(stat.S_IRWXU)
        for d in self.workdir.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                with contextlib.suppress(OSError):
                    d.chmod(0o777)
        shutil.rmtree(self.workdir, ignore_errors=True)
