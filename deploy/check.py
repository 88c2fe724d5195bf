"""The checks of deploy/check (run it, not this file: it provides the validators and the binary).

Each check prints one line, `ok` or `FAIL` with what is wrong; the exit code is 1 when any failed.
Beyond the schemas, the files are checked against each other and against what the gateway needs:
a configuration that comfygate refuses, a backend that no worker serves, a GPU given to two
workers or a published worker fails here rather than at the first deployment.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
BIN_DIR = Path(sys.executable).parent
GATEWAY_PORT = 8080


class Report:
    """The lines printed so far and whether any failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        print(f"ok    {what}")

    def fail(self, what: str, why: str) -> None:
        self.failures.append(what)
        print(f"FAIL  {what}: {why}")

    def expect(self, condition: bool, what: str, why: str) -> None:
        if condition:
            self.ok(what)
        else:
            self.fail(what, why)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def run_tool(report: Report, what: str, argv: list[str]) -> None:
    """Runs a validator; its output is shown when it fails."""
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 0:
        report.ok(what)
    else:
        output = (done.stdout + done.stderr).strip()
        report.fail(what, f"{argv[0].rsplit('/', 1)[-1]} exited {done.returncode}\n{indent(output)}")


def indent(text: str) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines())


# --- comfygate itself ---------------------------------------------------------------------------


def gateway_accepts(report: Report, what: str, env: dict[str, str], workdir: Path) -> None:
    """Loads a configuration as `serve` would (`doctor`'s `configuration` line): the file named by
    COMFYGATE_CONFIG and every COMFYGATE_* variable the deployment sets, nothing from this shell."""
    binary = os.environ.get("COMFYGATE_BIN", "target/debug/comfygate")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)} | env
    try:
        done = subprocess.run(
            [str(ROOT / binary), "doctor", "--json"],
            cwd=workdir,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        report.fail(what, f"cannot run {binary}: {e}")
        return
    try:
        checks = json.loads(done.stdout)["checks"]
        line = next(c for c in checks if c["name"] == "configuration")
    except (ValueError, KeyError, StopIteration):
        report.fail(what, f"{binary} doctor --json gave no configuration line:\n{indent(done.stdout + done.stderr)}")
        return
    if line["status"] == "pass":
        report.ok(what)
    else:
        report.fail(what, f"comfygate refuses it: {line['detail']}")


def mapped_env(env: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """The container's variables with every path under a mount replaced by its local copy."""
    out = {}
    for name, value in env.items():
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target.rstrip("/") + "/"):
                value = str(mounts[target]) + value[len(target) :]
                break
        out[name] = value
    return out


def load_toml(report: Report, what: str, text: str) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        report.fail(what, f"not valid TOML: {e}")
        return None


# --- compose ------------------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\})")


def interpolate(value, variables: dict[str, str]):
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR:+alt}`, `$$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        present = name in variables
        set_ = present and variables[name] != ""
        if op is None:
            return variables.get(name, "")
        if op in (":-", "-"):
            return variables[name] if (set_ if op == ":-" else present) else arg
        if op in (":+", "+"):
            return arg if (set_ if op == ":+" else present) else ""
        if not (set_ if op == ":?" else present):
            raise ValueError(f"${{{name}}} is required: {arg}")
        return variables[name]

    return INTERPOLATION.sub(one, value)


def env_file(path: Path) -> dict[str, str]:
    """A compose env file: KEY=VALUE lines, # comments."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def environment_of(service: dict) -> dict[str, str]:
    """A service's `environment:`, written as a mapping or as a list of KEY=VALUE."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def services_in(compose: dict, profiles: set[str]) -> dict[str, dict]:
    return {
        name: svc for name, svc in compose["services"].items() if not svc.get("profiles") or set(svc["profiles"]) & profiles
    }


def check_compose(report: Report) -> None:
    path = DEPLOY / "compose.yaml"
    run_tool(
        report,
        f"{rel(path)}: Compose specification",
        [str(BIN_DIR / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
    )
    raw = yaml.safe_load(path.read_text())
    modes = {"SQLite (default)": {}, "PostgreSQL (--env-file deploy/postgres.env)": env_file(DEPLOY / "postgres.env")}
    for mode, variables in modes.items():
        try:
            compose = interpolate(raw, variables)
        except ValueError as e:
            report.fail(f"compose, {mode}: interpolation", str(e))
            continue
        profiles = set(filter(None, variables.get("COMPOSE_PROFILES", "").split(",")))
        check_compose_mode(report, mode, compose, profiles)


def check_compose_mode(report: Report, mode: str, compose: dict, profiles: set[str]) -> None:
    services = services_in(compose, profiles)
    networks = compose.get("networks", {})
    gateway = services.get("comfygate")
    if gateway is None:
        report.fail(f"compose, {mode}", "no `comfygate` service")
        return
    workers = {name: svc for name, svc in services.items() if name.startswith("comfyui-")}
    report.expect(len(workers) >= 2, f"compose, {mode}: GPU workers", f"{len(workers)} comfyui-* services, expected 2 or more")

    published = sorted(name for name, svc in services.items() if svc.get("ports"))
    report.expect(published == ["comfygate"], f"compose, {mode}: only comfygate is published", f"published: {published}")
    for name, svc in services.items():
        if name == "comfygate":
            continue
        open_networks = [n for n in svc.get("networks", ["default"]) if not networks.get(n, {}).get("internal")]
        report.expect(
            not open_networks,
            f"compose, {mode}: {name} only on internal networks",
            f"on {open_networks} (give it `internal: true` networks only)",
        )
    if "postgres" in profiles:
        report.expect("postgres" in services, f"compose, {mode}: PostgreSQL service", "the profile starts no `postgres`")

    gpus: dict[str, str] = {}
    for name, svc in workers.items():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
        ids = [i for d in nvidia for i in d.get("device_ids", [])]
        if len(nvidia) != 1 or len(ids) != 1 or "count" in nvidia[0]:
            report.fail(
                f"compose, {mode}: {name} GPU",
                "reserve exactly one NVIDIA GPU by `device_ids: [\"N\"]` (with `count: 1` every worker gets GPU 0)",
            )
        elif ids[0] in gpus:
            report.fail(f"compose, {mode}: {name} GPU", f"GPU {ids[0]} is already {gpus[ids[0]]}'s")
        else:
            gpus[ids[0]] = name
            report.ok(f"compose, {mode}: {name} has GPU {ids[0]}")
        health = " ".join(map(str, svc.get("healthcheck", {}).get("test", [])))
        report.expect("/system_stats" in health, f"compose, {mode}: {name} health check", "no check of /system_stats")
        models = [v for v in svc.get("volumes", []) if isinstance(v, str) and "/models:" in v]
        report.expect(
            bool(models) and all(v.endswith(":ro") for v in models),
            f"compose, {mode}: {name} reads the models read-only",
            f"models volume {models or 'missing'}",
        )

    mounts, workdir = compose_mounts(report, mode, compose, gateway)
    env = mapped_env(environment_of(gateway), mounts)
    config_path = Path(env.get("COMFYGATE_CONFIG", "/nonexistent"))
    if config_path not in mounts.values() or not config_path.is_file():
        report.fail(f"compose, {mode}: configuration", "COMFYGATE_CONFIG names no mounted file")
        return
    config = load_toml(report, f"compose, {mode}: {rel(config_path)}", config_path.read_text())
    if config is not None:
        hosts = {urlsplit(b.get("url", "")).hostname for b in config.get("backends", [])}
        report.expect(
            hosts == set(workers),
            f"compose, {mode}: [[backends]] are the workers",
            f"backends reach {sorted(map(str, hosts))}, workers are {sorted(workers)}",
        )
        port = str(config.get("server", {}).get("listen", "")).rpartition(":")[2]
        targets = [str(p).rpartition(":")[2] for p in gateway.get("ports", [])]
        report.expect(
            port == str(GATEWAY_PORT) and targets == [port],
            f"compose, {mode}: the published port is the gateway's",
            f"listen port {port}, published container ports {targets}",
        )
    gateway_accepts(report, f"compose, {mode}: comfygate loads its configuration", env, workdir)


def compose_mounts(report: Report, mode: str, compose: dict, service: dict) -> tuple[dict[str, Path], Path]:
    """Where the service's files come from: bind mounts, named volumes (empty folders) and secrets
    (their files; the ones the operator writes get stand-ins)."""
    workdir = Path(tempfile.mkdtemp(prefix="compose-", dir=WORK))
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        target = rest.split(":")[0]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
        else:
            mounts[target] = Path(tempfile.mkdtemp(prefix="volume-", dir=workdir))
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir()
    stand_ins = {
        "admin_password": "check-admin-password",
        "database_url": "postgres://comfygate:check@postgres:5432/comfygate",
    }
    for name in service.get("secrets", []):
        name = name if isinstance(name, str) else name["source"]
        spec = compose.get("secrets", {}).get(name)
        if spec is None:
            report.fail(f"compose, {mode}: secret {name}", "not defined under `secrets:`")
            continue
        source = (DEPLOY / spec["file"]).resolve()
        if source.is_relative_to(DEPLOY / "secrets"):
            # Written by the operator (git-ignored): a stand-in of the documented form.
            (secrets_dir / name).write_text(stand_ins.get(name, "check") + "\n")
        elif source.is_file():
            shutil.copy(source, secrets_dir / name)
        else:
            report.fail(f"compose, {mode}: secret {name}", f"{spec['file']} does not exist")
            continue
    mounts["/run/secrets"] = secrets_dir
    return mounts, workdir


# --- Kubernetes ---------------------------------------------------------------------------------

# Kinds the Kubernetes schemas do not know, with the schema they are checked against instead.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject"): KUBE / "schemas" / "keda-scaledobject-v1alpha1.json"}


def check_kubernetes(report: Report) -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    listed = kustomization.get("resources", [])
    namespace = kustomization.get("namespace", "default")
    documents: list[tuple[Path, dict]] = []
    for file in sorted(KUBE.glob("*.yaml")):
        if file.name == "kustomization.yaml":
            continue
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
        documents += [(file, d) for d in docs]
        custom = all((d.get("apiVersion"), d.get("kind")) in CUSTOM_KINDS for d in docs)
        if custom:
            report.expect(
                file.name not in listed,
                f"{rel(file)}: kept out of kustomization.yaml",
                "its kind exists only where its operator is installed: apply it separately",
            )
        else:
            report.expect(file.name in listed, f"{rel(file)}: in kustomization.yaml", "not listed under resources")
    for name in listed:
        report.expect((KUBE / name).is_file(), f"kustomization.yaml: {name} exists", "listed but missing")

    standard = [str(KUBE / name) for name in listed if (KUBE / name).is_file()]
    run_tool(
        report,
        f"{rel(KUBE)}: {len(standard)} manifests against the Kubernetes schemas (strict)",
        [str(BIN_DIR / "kubernetes-validate"), "--strict", "--quiet", *standard],
    )
    for file, doc in documents:
        schema = CUSTOM_KINDS.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is not None:
            run_tool(
                report,
                f"{rel(file)}: {doc['kind']} against {rel(schema)}",
                [str(BIN_DIR / "check-jsonschema"), "--schemafile", str(schema), str(file)],
            )

    objects = {(d["kind"], d["metadata"]["name"]): d for _, d in documents}
    images = {i["name"] for i in kustomization.get("images", [])}
    for (kind, name), doc in objects.items():
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            report.expect(
                container["image"] in images,
                f"{kind}/{name}: image `{container['image']}` is set in kustomization.yaml",
                f"add it under `images:` (names used there: {sorted(images)})",
            )
    check_gateway_deployment(report, objects, namespace)
    check_workers(report, objects, namespace)


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_gateway_deployment(report: Report, objects: dict, namespace: str) -> None:
    deployment = objects.get(("Deployment", "comfygate"))
    if deployment is None:
        report.fail("Deployment/comfygate", "missing")
        return
    what = "Deployment/comfygate"
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    pod = pod_spec(deployment)
    container = pod["containers"][0]
    security = pod.get("securityContext", {}) | container.get("securityContext", {})
    report.expect(spec.get("replicas", 1) >= 2, f"{what}: 2 or more replicas", f"replicas: {spec.get('replicas', 1)}")
    report.expect(
        spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") == 0,
        f"{what}: rolling update keeps every replica until its successor is ready",
        "set strategy.rollingUpdate.maxUnavailable: 0",
    )
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        got = container.get(probe, {}).get("httpGet", {}).get("path")
        report.expect(got == path, f"{what}: {probe} on {path}", f"{probe} is {got}")
    report.expect(
        security.get("runAsNonRoot") is True
        and security.get("runAsUser") == 10001
        and security.get("readOnlyRootFilesystem") is True
        and security.get("allowPrivilegeEscalation") is False
        and security.get("capabilities", {}).get("drop") == ["ALL"]
        and security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{what}: non-root (10001), read-only, no capabilities, RuntimeDefault seccomp",
        f"securityContext is {security}",
    )
    resources = container.get("resources", {})
    report.expect(
        {"cpu", "memory"} <= set(resources.get("requests", {})) and "memory" in resources.get("limits", {}),
        f"{what}: resources",
        "set requests (cpu, memory) and a memory limit",
    )
    pdbs = [d for (k, _), d in objects.items() if k == "PodDisruptionBudget"]
    report.expect(
        any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs),
        f"{what}: a PodDisruptionBudget covers it",
        "no PodDisruptionBudget selects its pods",
    )
    services = [d for (k, _), d in objects.items() if k == "Service" and d["spec"].get("clusterIP") != "None"]
    report.expect(
        any(selects(s["spec"].get("selector", {}), labels) for s in services),
        f"{what}: a Service selects it",
        "no Service selects its pods",
    )

    workdir = Path(tempfile.mkdtemp(prefix="kubernetes-", dir=WORK))
    mounts = kube_mounts(report, what, objects, pod, container, workdir)
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            report.fail(f"{what}: env {var['name']}", "only literal values are checked here; use a mounted file (*_FILE)")
    env = mapped_env(env, mounts)
    config_file = Path(env.get("COMFYGATE_CONFIG", "/nonexistent"))
    if not config_file.is_relative_to(workdir) or not config_file.is_file():
        report.fail(f"{what}: configuration", "COMFYGATE_CONFIG names no mounted ConfigMap key")
        return
    config = load_toml(report, f"{what}: comfygate.toml", config_file.read_text())
    if config is not None:
        check_discovery(report, config, objects, namespace)
        port = str(config.get("server", {}).get("listen", "")).rpartition(":")[2]
        ports = {str(p["containerPort"]) for p in container.get("ports", [])}
        report.expect(port in ports, f"{what}: the container port is the gateway's", f"listen port {port}, ports {ports}")
    gateway_accepts(report, f"{what}: comfygate loads its configuration", env, workdir)


def kube_mounts(report: Report, what: str, objects: dict, pod: dict, container: dict, workdir: Path) -> dict[str, Path]:
    """Local copies of the container's mounts: ConfigMap and Secret keys as files, the rest empty."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            report.fail(f"{what}: volume {mount['name']}", "mounted but not defined")
            continue
        local = Path(tempfile.mkdtemp(prefix=f"{mount['name']}-", dir=workdir))
        files: dict[str, str] = {}
        if "configMap" in volume:
            source = objects.get(("ConfigMap", volume["configMap"]["name"]))
            files = dict(source.get("data", {})) if source else {}
        elif "secret" in volume:
            source = objects.get(("Secret", volume["secret"]["secretName"]))
            if source:
                files = {k: base64.b64decode(v).decode() for k, v in source.get("data", {}).items()}
                files |= source.get("stringData", {})
        else:
            mounts[mount["mountPath"]] = local
            continue
        if source is None:
            report.fail(f"{what}: volume {mount['name']}", "names an object these manifests do not define")
            continue
        for key, text in files.items():
            (local / key).write_text(text)
        if "subPath" in mount:
            if mount["subPath"] not in files:
                report.fail(f"{what}: mount {mount['mountPath']}", f"no key {mount['subPath']} in its volume")
                continue
            mounts[mount["mountPath"]] = local / mount["subPath"]
        else:
            mounts[mount["mountPath"]] = local
    return mounts


def check_discovery(report: Report, config: dict, objects: dict, namespace: str) -> None:
    """Each `discover` name is a headless Service of these manifests, on its port."""
    for backend in config.get("backends", []):
        target = backend.get("discover")
        if target is None:
            continue
        what = f"comfygate.toml: backend {backend.get('name')} discovers {target}"
        parts = urlsplit(target)
        labels = (parts.hostname or "").split(".")
        service = objects.get(("Service", labels[0]))
        expected = f"{labels[0]}.{namespace}.svc.cluster.local"
        ports = {p["port"] for p in service["spec"]["ports"]} if service else set()
        report.expect(
            service is not None
            and service["spec"].get("clusterIP") == "None"
            and parts.hostname == expected
            and (parts.port or 8188) in ports,
            what,
            f"expected the headless Service {expected} on one of its ports ({sorted(ports) or 'no such Service'})",
        )


def check_workers(report: Report, objects: dict, namespace: str) -> None:
    workers = [d for (k, _), d in objects.items() if k in ("StatefulSet", "Deployment") and d["metadata"]["name"] != "comfygate"]
    if not workers:
        report.fail("ComfyUI workers", "no StatefulSet or Deployment besides the gateway")
        return
    gateway_labels = objects[("Deployment", "comfygate")]["spec"]["template"]["metadata"]["labels"]
    policies = [d for (k, _), d in objects.items() if k == "NetworkPolicy"]
    for doc in workers:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        labels = doc["spec"]["template"]["metadata"]["labels"]
        container = pod_spec(doc)["containers"][0]
        limits = container.get("resources", {}).get("limits", {})
        report.expect(str(limits.get("nvidia.com/gpu")) == "1", f"{what}: one NVIDIA GPU per pod", f"limits: {limits}")
        probe = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
        report.expect(probe == "/system_stats", f"{what}: ready when ComfyUI answers", f"readinessProbe on {probe}")
        if doc["kind"] == "StatefulSet":
            service = objects.get(("Service", doc["spec"]["serviceName"]))
            report.expect(
                service is not None and service["spec"].get("clusterIP") == "None",
                f"{what}: its serviceName is a headless Service",
                f"serviceName {doc['spec']['serviceName']} is not a Service with clusterIP: None",
            )
        guarding = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
        sources = [peer for p in guarding for rule in p["spec"].get("ingress", []) for peer in rule.get("from", [None])]
        only_gateway = bool(guarding) and all(
            peer is not None
            and set(peer) == {"podSelector"}
            and selects(peer["podSelector"].get("matchLabels", {}), gateway_labels)
            for peer in sources
        )
        report.expect(
            only_gateway and all("Ingress" in p["spec"].get("policyTypes", ["Ingress"]) for p in guarding),
            f"{what}: a NetworkPolicy lets only the gateway in",
            "every ingress rule of the policies selecting it must name the gateway's pods alone",
        )
    scaled = [d for (k, _), d in objects.items() if k == "ScaledObject"]
    for doc in scaled:
        what = f"ScaledObject/{doc['metadata']['name']}"
        ref = doc["spec"]["scaleTargetRef"]
        report.expect(
            (ref.get("kind", "Deployment"), ref["name"]) in objects,
            f"{what}: scales {ref.get('kind', 'Deployment')}/{ref['name']} of these manifests",
            "its scaleTargetRef names no object here",
        )
        queries = [t["metadata"].get("query", "") for t in doc["spec"]["triggers"] if t["type"] == "prometheus"]
        report.expect(
            any("comfygate_desired_backends" in q for q in queries),
            f"{what}: follows comfygate_desired_backends",
            f"prometheus queries: {queries}",
        )
        report.expect(
            doc["metadata"].get("namespace") == namespace,
            f"{what}: in namespace {namespace}",
            f"namespace {doc['metadata'].get('namespace')} (it is applied without kustomize)",
        )


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (relative to the context) out: the last matching
    pattern decides; a pattern matching a parent folder covers what is inside."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def check_dockerfile(report: Report) -> None:
    path = DEPLOY / "Dockerfile"
    parser = DockerfileParser(path=str(path))
    instructions = parser.structure
    what = rel(path)
    stages: list[list[dict]] = []
    for ins in instructions:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    report.expect(len(stages) >= 2, f"{what}: multi-stage", f"{len(stages)} FROM")
    if len(stages) < 2:
        return
    build, final = stages[0], stages[-1]
    build_from = build[0]["value"].split()
    report.expect(
        build_from[0].startswith("rust:") and len(build_from) == 3 and build_from[1].upper() == "AS",
        f"{what}: a named Rust build stage",
        f"first stage is FROM {build[0]['value']}",
    )
    report.expect(
        any("cargo build --release --locked" in i["value"] for i in build if i["instruction"] == "RUN"),
        f"{what}: release build from Cargo.lock",
        "no `cargo build --release --locked` in the build stage",
    )
    report.expect(
        re.match(r"debian:[a-z]+-slim$", final[0]["value"]) is not None,
        f"{what}: slim Debian runtime",
        f"last stage is FROM {final[0]['value']}",
    )
    users = [i["value"].split(":")[0] for i in final if i["instruction"] == "USER"]
    report.expect(
        bool(users) and users[-1] not in ("root", "0"),
        f"{what}: runs as a non-root user",
        f"USER {users[-1] if users else '(none: root)'}",
    )
    health = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    report.expect(
        len(health) == 1 and f"127.0.0.1:{GATEWAY_PORT}/healthz" in health[0],
        f"{what}: HEALTHCHECK on /healthz",
        f"HEALTHCHECK {health}",
    )
    exposed = " ".join(i["value"] for i in final if i["instruction"] == "EXPOSE").split()
    report.expect(exposed == [str(GATEWAY_PORT)], f"{what}: EXPOSE {GATEWAY_PORT}", f"EXPOSE {exposed}")
    adds = [i["value"] for i in instructions if i["instruction"] == "ADD"]
    report.expect(
        not any(re.search(r"\b(https?|git)://|git@", a) for a in adds),
        f"{what}: no ADD of URLs",
        f"ADD {adds} (download in a RUN step that checks a hash)",
    )

    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for must_ship in ("Cargo.toml", "Cargo.lock", "src/main.rs", "migrations", "templates", "sim/Cargo.toml"):
        report.expect(
            not dockerignored(must_ship, patterns), f".dockerignore: sends {must_ship}", "the build needs it"
        )
    for must_not in ("target/debug/comfygate", ".git/HEAD", "deploy/secrets/admin_password", "comfygate-data/comfygate.db"):
        report.expect(dockerignored(must_not, patterns), f".dockerignore: leaves out {must_not}", "add a pattern for it")

    copies: dict[str, Path] = {}
    for ins in final:
        if ins["instruction"] != "COPY" or "--from" in ins["value"]:
            continue
        *sources, target = ins["value"].split()
        for source in sources:
            report.expect(
                (ROOT / source).exists() and not dockerignored(source, patterns),
                f"{what}: COPY {source} is in the build context",
                "missing, or left out by .dockerignore",
            )
            copies[target] = ROOT / source
    env = dict(parser.envs)  # the last stage's
    config = copies.get(env.get("COMFYGATE_CONFIG", ""))
    if config is None:
        report.fail(f"{what}: configuration", "ENV COMFYGATE_CONFIG names no file the image copies in")
        return
    settings = load_toml(report, f"{what}: {rel(config)}", config.read_text())
    if settings is not None:
        port = str(settings.get("server", {}).get("listen", "")).rpartition(":")[2]
        report.expect(
            port == str(GATEWAY_PORT),
            f"{what}: the image's configuration listens on the checked port",
            f"listen port {port}, HEALTHCHECK and EXPOSE use {GATEWAY_PORT}",
        )
    workdir = Path(tempfile.mkdtemp(prefix="image-", dir=WORK))
    gateway_accepts(report, f"{what}: comfygate loads the image's {rel(config)}", mapped_env(env, copies), workdir)


# --- systemd ------------------------------------------------------------------------------------


def check_systemd(report: Report) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service")) + sorted((DEPLOY / "systemd").glob("*.timer"))
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("skip  deploy/systemd: systemd-analyze is not installed")
        return
    # The units name the installed binary; verify checks that it exists, so it gets this build's.
    binary = str((ROOT / os.environ.get("COMFYGATE_BIN", "target/debug/comfygate")).resolve())
    copy = Path(tempfile.mkdtemp(prefix="systemd-", dir=WORK))
    for unit in units:
        (copy / unit.name).write_text(unit.read_text().replace("/usr/local/bin/comfygate", binary))
    done = subprocess.run(
        [analyze, "verify", *[str(copy / u.name) for u in units]], cwd=copy, capture_output=True, text=True
    )
    # It only warns about unknown keys and bad values: any word from it is a failure here.
    output = (done.stdout + done.stderr).strip()
    report.expect(
        done.returncode == 0 and not output,
        f"deploy/systemd: systemd-analyze verify ({', '.join(u.name for u in units)})",
        f"exit {done.returncode}\n{indent(output)}",
    )


def main() -> int:
    report = Report()
    check_dockerfile(report)
    check_compose(report)
    check_kubernetes(report)
    check_systemd(report)
    if report.failures:
        print(f"\ndeploy/check: {len(report.failures)} check(s) failed")
        return 1
    print("\ndeploy/check: all deployment files are valid")
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="comfygate-deploy-check-") as work:
        WORK = Path(work)
        sys.exit(main())
