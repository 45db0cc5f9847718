"""Checks the deployment files against each other and against the code.

Run by deploy/validate.sh (which installs kubernetes-validate and finds promtool):

    python deploy/validate_files.py [--promtool PATH] [--self-test]

What a container engine or a cluster would find too late, found from the files:

- Kubernetes manifests: every document valid against the Kubernetes API schemas in strict
  mode (unknown fields refused) for the oldest and newest versions checked; the
  kustomization lists every manifest; probes on /healthz and /readyz on the port the
  service listens on; resources set; every Secret key used documented in the
  kustomization; Services select a Deployment's pods.
- docker-compose.yml and the Kubernetes Deployments: each container runs a binary the
  workspace builds and the Dockerfile copies; each TOCSIN__SECTION__ variable and each
  TOCSIN_CONFIG file names only sections the service's `Config` has (anything else stops
  the service at start-up); [kafka] keys exist; mounted files exist.
- Prometheus scrape targets on the ports the compose services listen on.
- Dashboards: each panel has a data source and targets with a non-empty expression, and
  every expression parses (promtool, on the expressions as recording rules).
- Dashboards and alert rules use only metric names the services register, except the
  ones listed in PENDING_METRICS (announced, not exported yet): printed, not failed.

--self-test breaks copies of the files in known ways and checks that each is refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# Metrics the dashboards or rules use before the services export them: name -> who adds it.
PENDING_METRICS: dict[str, str] = {}
# Names Prometheus itself provides.
BUILTIN_METRICS = {"up"}
# The services whose HTTP server serves /metrics, /healthz and /readyz.
SERVICES = ("planner", "renderer", "sender", "tracker", "api")
# Kubernetes versions the manifests must be valid for: an old one still in wide use and
# the newest the installed schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SECRET_NAME = "tocsin-secrets"
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$provider": ".*",
}


class Checker:
    """Collects failures; every check adds to `errors` rather than stopping."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.passed = 0

    def fail(self, where: str, what: str) -> None:
        self.errors.append(f"{where}: {what}")

    def check(self, title: str, errors_before: int) -> bool:
        ok = len(self.errors) == errors_before
        self.passed += ok
        print(f"  {'ok  ' if ok else 'FAIL'} {title}")
        return ok


# ------------------------------------------------------------------ what the code says


class Code:
    """Facts read from the workspace: binaries, configuration sections, metrics."""

    def __init__(self) -> None:
        self.binaries = set()
        for manifest in ROOT.glob("services/*/Cargo.toml"):
            for binary in tomllib.loads(manifest.read_text()).get("bin", []):
                self.binaries.add(binary["name"])
        self.sections = {svc: config_sections(svc) for svc in SERVICES}
        # tocsin-loadgen reads the shared sections only.
        self.sections["loadgen"] = config_sections("loadgen")
        self.defaults = tomllib.loads((ROOT / "config/default.toml").read_text())
        self.metrics = set()
        for source in ROOT.glob("services/*/src/**/*.rs"):
            self.metrics.update(re.findall(r'"(tocsin_[a-z0-9_]+)"', source.read_text()))
        dockerfile = (ROOT / "Dockerfile").read_text()
        self.image_binaries = set(re.findall(r"target/release/([a-z0-9-]+)", dockerfile))
        self.image_binaries.add("tocsin-probe")


def config_sections(service: str) -> set[str]:
    """The fields of `pub struct Config` in services/<service>/src/config.rs."""
    source = (ROOT / f"services/{service}/src/config.rs").read_text()
    match = re.search(r"pub struct Config \{(.*?)\n\}", source, re.S)
    if not match:
        raise SystemExit(f"services/{service}/src/config.rs: no `pub struct Config`")
    return set(re.findall(r"pub (\w+):", match.group(1)))


def check_env(c: Checker, code: Code, where: str, service: str, names) -> None:
    """TOCSIN__SECTION__... variables: sections the service has, [kafka] keys that exist."""
    sections = code.sections[service]
    for name in names:
        if not name.startswith("TOCSIN__"):
            continue
        path = [p.lower() for p in name[len("TOCSIN__"):].split("__")]
        if path[0] not in sections:
            c.fail(where, f"{name}: {service} has no [{path[0]}] section "
                          f"(it has {', '.join(sorted(sections))}); it would not start")
        elif path[0] == "kafka":
            node = code.defaults
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    c.fail(where, f"{name}: no such key in config/default.toml")
                    break
                node = node[key]


def check_config_file(c: Checker, code: Code, where: str, service: str, text: str) -> None:
    """A TOCSIN_CONFIG file: TOML, with only sections the service has."""
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        c.fail(where, f"not TOML: {e}")
        return
    unknown = set(parsed) - code.sections[service]
    if unknown:
        c.fail(where, f"sections {sorted(unknown)} are not {service}'s; it would not start")


def check_binary(c: Checker, code: Code, where: str, command) -> None:
    if not command:
        c.fail(where, "no command: the image has no default service")
        return
    binary = command[0]
    if binary not in code.binaries and binary != "tocsin-probe":
        c.fail(where, f"{binary}: no such [[bin]] in services/*/Cargo.toml")
    elif binary not in code.image_binaries:
        c.fail(where, f"{binary}: the Dockerfile does not copy it into the image")


def listen_port(where: str, c: Checker, env: dict) -> int | None:
    listen = env.get("TOCSIN__HTTP__LISTEN")
    if not listen:
        c.fail(where, "TOCSIN__HTTP__LISTEN not set: the ops server would take a random port")
        return None
    host, _, port = str(listen).rpartition(":")
    if host not in ("0.0.0.0", "[::]"):
        c.fail(where, f"listens on {listen}: unreachable from outside the container")
    return int(port)


# ------------------------------------------------------------------------ compose


def check_compose(c: Checker, code: Code, compose: dict, prometheus: dict) -> None:
    where = "deploy/docker-compose.yml"
    services = compose.get("services", {})
    ports = {}
    for name, svc in services.items():
        if svc.get("image") != "tocsin:local":
            continue
        here = f"{where} service {name}"
        command = svc.get("entrypoint") or svc.get("command")
        check_binary(c, code, here, command)
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        crate = (command or [""])[0].removeprefix("tocsin-")
        if crate in code.sections:
            check_env(c, code, here, crate, env)
        if crate in SERVICES:
            port = listen_port(here, c, env)
            ports[crate] = port
            test = svc.get("healthcheck", {}).get("test", [])
            if test[1:] != ["tocsin-probe", str(port), "/readyz"]:
                c.fail(here, f"health check {test} is not tocsin-probe {port} /readyz")
            config = env.get("TOCSIN_CONFIG")
            if config:
                mounts = {
                    v.split(":")[1]: v.split(":")[0]
                    for v in svc.get("volumes", [])
                    if isinstance(v, str)
                }
                source = mounts.get(config)
                if source is None:
                    c.fail(here, f"TOCSIN_CONFIG={config} is not a mounted file")
                elif (DEPLOY / source).is_file():
                    check_config_file(c, code, f"deploy/{source}", crate,
                                      (DEPLOY / source).read_text())
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else ""
            if source.startswith(".") and not (DEPLOY / source).exists():
                c.fail(f"{where} service {name}", f"mounts {source}, which does not exist")
    missing = set(SERVICES) - set(ports)
    if missing:
        c.fail(where, f"no service runs {sorted(missing)}")
    # Prometheus scrapes each service where it listens.
    targets = {}
    for job in prometheus.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                targets[job["job_name"]] = target
    for service, port in ports.items():
        target = targets.get(f"tocsin-{service}")
        if target != f"{service}:{port}":
            c.fail("deploy/prometheus/prometheus.yml",
                   f"job tocsin-{service} scrapes {target}, the service listens on "
                   f"{service}:{port}")


# --------------------------------------------------------------------- kubernetes


def load_manifests(directory: Path) -> tuple[dict, list[tuple[str, dict]]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return kustomization, docs


def check_kubernetes(c: Checker, code: Code, directory: Path, kustomization: dict,
                     docs: list[tuple[str, dict]], kustomization_text: str) -> None:
    where = "deploy/k8s"
    listed = set(kustomization.get("resources", []))
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    for name in sorted(listed - present):
        c.fail(f"{where}/kustomization.yaml", f"lists {name}, which does not exist")
    for name in sorted(present - listed):
        c.fail(f"{where}/kustomization.yaml", f"does not list {name}")
    for file, doc in docs:
        name = f"{where}/{file} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                c.fail(name, f"Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                c.fail(name, f"Kubernetes {version}: no schema: {e.message}")
            except Exception as e:  # noqa: BLE001 - anything else is a failure too
                c.fail(name, f"Kubernetes {version}: {type(e).__name__}: {e}")
    config_maps = {
        d["metadata"]["name"]: d.get("data", {}) for _, d in docs if d.get("kind") == "ConfigMap"
    }
    deployments = [(f, d) for f, d in docs if d.get("kind") == "Deployment"]
    seen = set()
    for file, deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            here = f"{where}/{file} container {container['name']}"
            check_binary(c, code, here, container.get("command"))
            service = (container.get("command") or [""])[0].removeprefix("tocsin-")
            if service not in SERVICES:
                continue
            seen.add(service)
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            names = list(env)
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref not in config_maps:
                    c.fail(here, f"envFrom ConfigMap {ref} is not in the manifests")
                names += list(config_maps.get(ref, {}))
            check_env(c, code, here, service, names)
            port = listen_port(here, c, env)
            container_ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            if port not in container_ports.values():
                c.fail(here, f"listens on {port}, declares ports {container_ports}")
            annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/port") != str(port):
                c.fail(here, f"prometheus.io/port {annotations.get('prometheus.io/port')} "
                             f"is not the listen port {port}")
            for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                                ("readinessProbe", "/readyz")):
                get = container.get(probe, {}).get("httpGet", {})
                probe_port = container_ports.get(get.get("port"), get.get("port"))
                if get.get("path") != path or probe_port != port:
                    c.fail(here, f"{probe} should be GET {path} on port {port}, is {get}")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        c.fail(here, f"no {kind}.{resource}")
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                if ref.get("name") != SECRET_NAME:
                    c.fail(here, f"{item['name']}: Secret {ref.get('name')}, not {SECRET_NAME}")
                if not re.search(rf"^#\s+{re.escape(ref['key'])}\s", kustomization_text, re.M):
                    c.fail(here, f"{item['name']}: Secret key {ref['key']} is not documented "
                                 "in kustomization.yaml")
            config = env.get("TOCSIN_CONFIG")
            if config:
                mounted = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                directory_path, _, key = config.rpartition("/")
                volume = volumes.get(mounted.get(directory_path, ""), {})
                config_map = volume.get("configMap", {}).get("name")
                text = config_maps.get(config_map, {}).get(key)
                if text is None:
                    c.fail(here, f"TOCSIN_CONFIG={config} is not a key of a mounted ConfigMap")
                else:
                    check_config_file(c, code, f"{where} ConfigMap {config_map} {key}",
                                      service, text)
    missing = set(SERVICES) - seen
    if missing:
        c.fail(where, f"no Deployment runs {sorted(missing)}")
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for _, d in deployments]
    for file, svc in [(f, d) for f, d in docs if d.get("kind") == "Service"]:
        selector = svc["spec"].get("selector", {})
        if not any(selector.items() <= labels.items() for labels in pod_labels):
            c.fail(f"{where}/{file} Service/{svc['metadata']['name']}",
                   f"selector {selector} matches no Deployment's pods")


# ---------------------------------------------------------------- rules and dashboards


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\btocsin_[a-z0-9_]+\b", expr)) | (
        BUILTIN_METRICS & set(re.findall(r"\b[a-z_]+\b", expr)))


def check_metric_names(c: Checker, code: Code, where: str, expr: str, pending: set) -> None:
    for name in metric_names(expr):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if name in code.metrics or base in code.metrics or name in BUILTIN_METRICS:
            continue
        if name in PENDING_METRICS:
            pending.add(name)
            continue
        c.fail(where, f"metric {name} is registered by no service (services/*/src)")


def check_rules(c: Checker, code: Code, rules: dict, pending: set) -> None:
    where = "deploy/prometheus/alerts.yml"
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            check_metric_names(c, code, f"{where} {name}", rule["expr"], pending)
            if "alert" not in rule:
                continue
            if not rule.get("for"):
                c.fail(f"{where} {name}", "no `for:` duration")
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                c.fail(f"{where} {name}", "severity is neither warning nor critical")
            for annotation in ("summary", "description"):
                if not rule.get("annotations", {}).get(annotation):
                    c.fail(f"{where} {name}", f"no {annotation} annotation")


def dashboard_panels(board: dict):
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_dashboards(c: Checker, code: Code, boards: dict[str, dict], pending: set,
                     datasource_uids: set[str]) -> list[tuple[str, str]]:
    """Returns (name, expression) of every target, for promtool."""
    expressions = []
    uids = set()
    for file, board in boards.items():
        where = f"deploy/grafana/dashboards/{file}"
        if board.get("uid") in uids:
            c.fail(where, f"uid {board.get('uid')} used twice")
        uids.add(board.get("uid"))
        ids = set()
        for panel in dashboard_panels(board):
            title = f"{where} panel {panel.get('id')} {panel.get('title')!r}"
            if panel.get("id") in ids:
                c.fail(title, "panel id used twice")
            ids.add(panel.get("id"))
            if "gridPos" not in panel:
                c.fail(title, "no gridPos")
            if panel.get("type") == "row":
                continue
            ds = panel.get("datasource") or {}
            if ds.get("type") != "prometheus" or ds.get("uid") not in datasource_uids:
                c.fail(title, f"data source {ds} is not the Prometheus one")
            targets = panel.get("targets") or []
            if not targets:
                c.fail(title, "no targets")
            for target in targets:
                expr = (target.get("expr") or "").strip()
                if not expr:
                    c.fail(title, f"target {target.get('refId')} has no expression")
                    continue
                if not target.get("refId"):
                    c.fail(title, "a target has no refId")
                check_metric_names(c, code, title, expr, pending)
                expressions.append((f"{file} panel {panel.get('id')}{target.get('refId')}", expr))
    return expressions


def promtool_parses(c: Checker, promtool: str, expressions: list[tuple[str, str]]) -> None:
    rules = []
    for i, (_, expr) in enumerate(expressions):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:expression:{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
        path = f.name
    result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    Path(path).unlink()
    if result.returncode != 0:
        output = result.stdout + result.stderr
        for line in output.splitlines():
            found = re.search(r"dashboard:expression:(\d+)", line)
            if found:
                c.fail(f"dashboard expression {expressions[int(found.group(1))][0]}", line.strip())
        if not any("dashboard expression" in e for e in c.errors):
            c.fail("dashboard expressions", output.strip())


# ------------------------------------------------------------------------- running


def load_all():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    boards = {}
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        boards[path.name] = json.loads(path.read_text())
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]} | {"${datasource}"}
    k8s_dir = DEPLOY / "k8s"
    kustomization, docs = load_manifests(k8s_dir)
    kustomization_text = (k8s_dir / "kustomization.yaml").read_text()
    return compose, prometheus, rules, boards, uids, k8s_dir, kustomization, docs, kustomization_text


def run(promtool: str) -> int:
    code = Code()
    (compose, prometheus, rules, boards, uids, k8s_dir, kustomization, docs,
     kustomization_text) = load_all()
    c = Checker()
    pending: set[str] = set()

    e = len(c.errors)
    check_kubernetes(c, code, k8s_dir, kustomization, docs, kustomization_text)
    c.check(f"Kubernetes manifests: {len(docs)} documents, strict schemas of "
            f"{' and '.join(KUBERNETES_VERSIONS)}, probes, ports, resources, secrets, "
            "configuration", e)
    e = len(c.errors)
    check_compose(c, code, compose, prometheus)
    c.check("docker-compose.yml: binaries, configuration sections, health checks, mounts, "
            "Prometheus targets", e)
    e = len(c.errors)
    check_rules(c, code, rules, pending)
    c.check("alerts.yml: metric names, for, severity, annotations", e)
    e = len(c.errors)
    expressions = check_dashboards(c, code, boards, pending, uids)
    promtool_parses(c, promtool, expressions)
    c.check(f"dashboards: {len(boards)} files, {len(expressions)} expressions parsed by "
            "promtool, data sources, metric names", e)

    for name in sorted(pending):
        print(f"  note: {name} is used but not exported yet: {PENDING_METRICS[name]}")
    for name in sorted(set(PENDING_METRICS) & code.metrics):
        print(f"  note: {name} is exported now: remove it from PENDING_METRICS")
    for error in c.errors:
        print(f"    {error}")
    return 1 if c.errors else 0


def self_test(promtool: str) -> int:
    """Each broken copy must be refused, with a message naming what is wrong."""
    code = Code()
    (compose, prometheus, rules, boards, uids, k8s_dir, kustomization, docs,
     kustomization_text) = load_all()
    cases = []

    def case(title, expect, fn):
        cases.append((title, expect, fn))

    def deployment_docs(mutate):
        broken = copy.deepcopy(docs)
        for _, doc in broken:
            if doc.get("kind") == "Deployment":
                mutate(doc)
                break
        return broken

    def container(doc):
        return doc["spec"]["template"]["spec"]["containers"][0]

    def k8s(broken):
        return lambda c: check_kubernetes(c, code, k8s_dir, kustomization, broken,
                                          kustomization_text)

    case("a misspelt probe field", "initialDelay",
         k8s(deployment_docs(lambda d: container(d)["livenessProbe"].update(initialDelay=5))))
    case("replicas as a string", "replicas",
         k8s(deployment_docs(lambda d: d["spec"].update(replicas="two"))))
    case("an unknown kind", "no schema",
         k8s(docs + [("x.yaml", {"apiVersion": "v1", "kind": "Frobnicator",
                                  "metadata": {"name": "x"}})]))
    case("readiness on /healthz", "readinessProbe",
         k8s(deployment_docs(lambda d: container(d)["readinessProbe"]["httpGet"].update(
             path="/healthz"))))
    case("an undocumented secret key", "not documented",
         k8s(deployment_docs(lambda d: container(d)["env"].append(
             {"name": "TOCSIN__LOG__PII_KEY",
              "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": "nowhere"}}}))))
    case("a section the service lacks", "no [sender] section",
         k8s(deployment_docs(lambda d: container(d)["env"].append(
             {"name": "TOCSIN__SENDER__GROUP_ID", "value": "x"}))))

    def compose_with(mutate):
        broken = copy.deepcopy(compose)
        mutate(broken["services"])
        return lambda c: check_compose(c, code, broken, prometheus)

    case("compose: an unknown section", "no [tracker] section",
         compose_with(lambda s: s["planner"]["environment"].update(TOCSIN__TRACKER__X="1")))
    case("compose: a binary that does not exist", "no such [[bin]]",
         compose_with(lambda s: s["planner"].update(command=["tocsin-plannr"])))
    case("compose: a misspelt kafka key", "no such key",
         compose_with(lambda s: s["planner"]["environment"].update(
             TOCSIN__KAFKA__BROKER="kafka:9092")))
    case("compose: Prometheus scraping another port", "scrapes",
         compose_with(lambda s: s["planner"]["environment"].update(
             TOCSIN__HTTP__LISTEN="0.0.0.0:9999")))

    def board_with(mutate):
        broken = copy.deepcopy(boards)
        board = broken[sorted(broken)[0]]
        mutate(next(p for p in board["panels"] if p.get("type") != "row"))
        return lambda c: promtool_parses(
            c, promtool, check_dashboards(c, code, broken, set(), uids))

    case("a panel with an empty expression", "no expression",
         board_with(lambda p: p["targets"][0].update(expr="")))
    case("a panel without a data source", "data source",
         board_with(lambda p: p.pop("datasource")))
    case("a metric no service registers", "registered by no service",
         board_with(lambda p: p["targets"][0].update(expr="rate(tocsin_nothing_total[5m])")))
    case("an expression that does not parse", "dashboard expression",
         board_with(lambda p: p["targets"][0].update(expr="sum(rate(tocsin_bus_messages_consumed_total[5m])")))

    def rules_with(mutate):
        broken = copy.deepcopy(rules)
        mutate(broken["groups"][1]["rules"][0])
        return lambda c: check_rules(c, code, broken, set())

    case("an alert without for", "no `for:`", rules_with(lambda r: r.pop("for")))
    case("an alert without severity", "severity", rules_with(lambda r: r["labels"].clear()))

    failures = 0
    for title, expect, fn in cases:
        c = Checker()
        fn(c)
        refused = any(expect in error for error in c.errors)
        failures += not refused
        print(f"  {'ok  ' if refused else 'FAIL'} refuses {title}"
              + ("" if refused else f" (errors: {c.errors or 'none'})"))
    print(f"validate_files self-test: {len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--promtool", default="promtool")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return self_test(args.promtool)
    return run(args.promtool)


if __name__ == "__main__":
    sys.exit(main())
