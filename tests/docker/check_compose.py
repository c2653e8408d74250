#!/usr/bin/env python3
"""docker.structure: docker/compose.yaml, docker/prometheus.yml and
docker/Dockerfile hold together (no container runtime needed).

  check_compose.py [--root DIR] [--compose F] [--prometheus F]
                   [--dockerfile F] [--readme F] [--cmake F]

Prints every broken rule and exits 1, else prints one line and exits 0.
The file options point at other copies (to see a rule fail).
"""

import argparse
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerfile  # noqa: E402

WORKERS = ["worker-1", "worker-2", "worker-3"]
REQUIRED = ["kafka", "postgres", "schema-registry", "topics", "prometheus"] + WORKERS
HEALTHY = ["postgres", "kafka", "schema-registry"]
WORKER_ENV = {
    "ENVRUN_KAFKA_BROKERS": None,
    "ENVRUN_DATABASE_URL": None,
    "ENVRUN_SCHEMA_REGISTRY_URL": "http://schema-registry:8081",
}
METRICS_PORT = 9464
# Partitions of each topic when README.md states none (a table row such as
# "| `envrun.commands` | 12 |" in README.md wins over these).
DEFAULT_PARTITIONS = {
    "envrun.commands": 12,
    "envrun.results": 12,
    "envrun.lease-events": 12,
    "envrun.activity": 6,
    "envrun.commands.dlq": 3,
}
# CMakeLists.txt's pkg_check_modules module -> the Debian 12 package of its
# shared library (None: linked by the tests only).
RUNTIME_PACKAGE = {
    "rdkafka": "librdkafka1",
    "avro-c": "libavro23",
    "jansson": "libjansson4",
    "libpq": "libpq5",
    "libcurl": "libcurl4",
    "cmocka": None,
}
DEBIAN_12_SLIM = re.compile(r"^debian:(12|bookworm)(\.\d+)?(-\d{8})?-slim(@sha256:[0-9a-f]{64})?$")


class Checker:
    def __init__(self):
        self.failures = []

    def check(self, ok, msg):
        if not ok:
            self.failures.append(msg)
        return ok


def env_dict(env):
    """A service's environment as a dict (compose allows a list too)."""
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {k: ("" if v is None else str(v)) for k, v in (env or {}).items()}


def depends(svc):
    """depends_on as {service: condition or None}."""
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return {name: None for name in d}
    return {name: (v or {}).get("condition") for name, v in d.items()}


def image_pinned(image):
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return tag != "" and tag != "latest"


def shell_text(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def readme_topics(readme):
    """Topic suffixes of README.md's 'Topics and records' table."""
    m = re.search(r"^## Topics and records\n(.*?)(?=^## )", readme, re.S | re.M)
    if not m:
        return None
    return re.findall(r"^\|\s*`([a-z.-]+)`\s*\|", m.group(1), re.M)


def readme_partitions(readme):
    """{topic: partitions} from README.md rows '| `envrun.x` | N |'."""
    return {t: int(n) for t, n in re.findall(r"^\|\s*`(envrun\.[a-z.-]+)`\s*\|\s*(\d+)\s*\|", readme, re.M)}


def check_compose(c, compose, compose_path, prom, prom_path, readme, root):
    services = compose.get("services") or {}
    for name in REQUIRED:
        c.check(name in services, f"compose: service {name} is missing")

    # Images pinned; what is built is built from docker/Dockerfile.
    compose_dir = os.path.dirname(os.path.abspath(compose_path))
    built = []
    for name, svc in services.items():
        image = svc.get("image")
        if image is not None:
            c.check(
                image_pinned(str(image)),
                f"compose: {name}: image {image} is not pinned to a tag (or is :latest)",
            )
        build = svc.get("build")
        if build is None:
            c.check(image is not None, f"compose: {name} has neither image nor build")
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = os.path.normpath(os.path.join(compose_dir, build.get("context", ".")))
        df = build.get("dockerfile", "Dockerfile")
        if c.check(
            context == os.path.normpath(root) and df == "docker/Dockerfile",
            f"compose: {name} is built from {context}/{df}, not the repository's docker/Dockerfile",
        ):
            built.append(name)
    c.check(
        sorted(built) == WORKERS,
        f"compose: the services built from docker/Dockerfile are {sorted(built)}, expected {WORKERS}",
    )

    # depends_on names services.
    for name, svc in services.items():
        for dep in depends(svc):
            c.check(dep in services, f"compose: {name} depends on {dep}, which is no service")

    # Kafka: KRaft, no ZooKeeper.
    for name, svc in services.items():
        text = (name + " " + str(svc.get("image", ""))).lower()
        c.check("zookeeper" not in text, f"compose: {name}: ZooKeeper has no place in a KRaft setup")
    kafka = services.get("kafka") or {}
    kenv = env_dict(kafka.get("environment"))
    c.check(
        str(kafka.get("image", "")).startswith("apache/kafka:"),
        "compose: kafka: image is not apache/kafka:<version>",
    )
    roles = set(r.strip() for r in kenv.get("KAFKA_PROCESS_ROLES", "").split(","))
    c.check(
        {"broker", "controller"} <= roles,
        "compose: kafka: KAFKA_PROCESS_ROLES must be broker,controller (KRaft, one node)",
    )
    c.check(
        bool(kenv.get("KAFKA_CONTROLLER_QUORUM_VOTERS")),
        "compose: kafka: KAFKA_CONTROLLER_QUORUM_VOTERS is not set",
    )
    c.check(
        not any("ZOOKEEPER" in k for k in kenv),
        "compose: kafka: a ZooKeeper setting in a KRaft broker",
    )
    advertised = kenv.get("KAFKA_ADVERTISED_LISTENERS", "")

    pg = services.get("postgres") or {}
    c.check(
        re.match(r"^postgres:15(\.|-|$)", str(pg.get("image", ""))) is not None,
        "compose: postgres: image is not postgres:15",
    )
    reg = services.get("schema-registry") or {}
    c.check(
        str(reg.get("image", "")).startswith("confluentinc/cp-schema-registry:"),
        "compose: schema-registry: image is not confluentinc/cp-schema-registry",
    )
    prom_svc = services.get("prometheus") or {}
    c.check(
        str(prom_svc.get("image", "")).startswith("prom/prometheus:"),
        "compose: prometheus: image is not prom/prometheus",
    )

    # Health checks the workers wait for.
    for name in HEALTHY:
        hc = (services.get(name) or {}).get("healthcheck") or {}
        test = hc.get("test")
        c.check(
            bool(test) and not hc.get("disable") and test != ["NONE"],
            f"compose: {name} has no healthcheck",
        )

    # Workers.
    for name in WORKERS:
        svc = services.get(name) or {}
        env = env_dict(svc.get("environment"))
        for var, want in WORKER_ENV.items():
            if c.check(bool(env.get(var)), f"compose: {name}: {var} is not set"):
                if want is not None:
                    c.check(env[var] == want, f"compose: {name}: {var}={env[var]}, expected {want}")
        brokers = env.get("ENVRUN_KAFKA_BROKERS", "")
        for b in filter(None, brokers.split(",")):
            c.check(
                b in advertised,
                f"compose: {name}: broker {b} is not one of kafka's advertised listeners",
            )
        m = re.match(r"^postgres(ql)?://[^@/]*@([^:/]+)", env.get("ENVRUN_DATABASE_URL", ""))
        c.check(
            m is not None and m.group(2) in services,
            f"compose: {name}: ENVRUN_DATABASE_URL does not name a compose service",
        )
        http = env.get("ENVRUN_HTTP_ADDR")
        c.check(
            http is None or http.endswith(f":{METRICS_PORT}"),
            f"compose: {name}: ENVRUN_HTTP_ADDR={http} is not on port {METRICS_PORT}",
        )
        deps = depends(svc)
        for dep in HEALTHY:
            c.check(
                deps.get(dep) == "service_healthy",
                f"compose: {name} does not wait for {dep} to be healthy",
            )
        c.check(
            deps.get("topics") == "service_completed_successfully",
            f"compose: {name} does not wait for the topics to be created",
        )

    # Topics: the contract's five (README's table), README's partitions.
    topics_svc = services.get("topics") or {}
    script = shell_text(topics_svc.get("entrypoint")) + "\n" + shell_text(topics_svc.get("command"))
    made = {}
    for line in script.splitlines():
        m = re.search(r"--topic[ =](\S+)", line)
        if not m:
            continue
        p = re.search(r"--partitions[ =](\d+)", line)
        c.check(p is not None, f"compose: topics: {m.group(1)} is created without --partitions")
        made[m.group(1)] = int(p.group(1)) if p else None
    suffixes = readme_topics(readme)
    if c.check(bool(suffixes), "README.md: no topic table under '## Topics and records'"):
        want_topics = sorted("envrun." + s for s in suffixes)
        c.check(
            sorted(made) == want_topics,
            f"compose: topics creates {sorted(made)}, the contract's topics are {want_topics}",
        )
    want = readme_partitions(readme) or DEFAULT_PARTITIONS
    for topic, n in sorted(made.items()):
        if topic in want:
            c.check(
                n == want[topic],
                f"compose: topics: {topic} gets {n} partitions, recommended {want[topic]}",
            )

    # Prometheus scrapes the workers' /metrics.
    m = re.search(r"--config\.file=(\S+)", shell_text(prom_svc.get("command")))
    config = m.group(1) if m else "/etc/prometheus/prometheus.yml"
    mounts = [str(v).split(":") for v in prom_svc.get("volumes") or []]
    c.check(
        any(
            len(v) >= 2
            and os.path.normpath(os.path.join(compose_dir, v[0])) == os.path.abspath(prom_path)
            and v[1] == config
            for v in mounts
        ),
        f"compose: prometheus does not mount {os.path.relpath(prom_path, root)} as its {config}",
    )
    targets = []
    for job in (prom or {}).get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            targets += [str(t) for t in sc.get("targets") or []]
    want_targets = sorted(f"{w}:{METRICS_PORT}" for w in WORKERS)
    c.check(
        sorted(targets) == want_targets,
        f"prometheus.yml: scrape targets {sorted(targets)}, expected {want_targets}",
    )


def check_dockerfile(c, text, cmake):
    stages = dockerfile.parse(text)
    if not c.check(len(stages) >= 2, "Dockerfile: expected a build stage and a runtime stage"):
        return
    names = {}
    for st in stages:
        c.check(
            DEBIAN_12_SLIM.match(st.image) is not None,
            f"Dockerfile:{st.line}: FROM {st.image} is not debian:12-slim (or bookworm-slim)",
        )
        for ins in st.instructions:
            if ins.keyword != "COPY":
                continue
            src = dockerfile.flag_value(ins.args, "from")
            if src is None:
                continue
            earlier = src in names or (src.isdigit() and int(src) < st.index)
            c.check(earlier, f"Dockerfile:{ins.line}: COPY --from={src} names no earlier stage")
        if st.name:
            names[st.name] = st.index
    build, final = stages[:-1], stages[-1]

    runs = [ins.args for st in build for ins in st.instructions if ins.keyword == "RUN"]
    c.check(
        any("scripts/build-release.sh" in r for r in runs),
        "Dockerfile: no build stage RUNs scripts/build-release.sh",
    )
    c.check(
        any(re.search(r"install-deps\.sh\s+--build-only", r) for r in runs),
        "Dockerfile: no build stage RUNs scripts/install-deps.sh --build-only",
    )
    c.check(
        any(ins.keyword == "COPY" and dockerfile.flag_value(ins.args, "from") for ins in final.instructions),
        "Dockerfile: the runtime stage copies nothing from the build stage",
    )

    users = [ins.args.split()[0] for ins in final.instructions if ins.keyword == "USER" and ins.args]
    c.check(
        bool(users) and users[-1].split(":")[0] not in ("root", "0"),
        "Dockerfile: the runtime stage does not switch to a non-root USER",
    )
    hcs = [ins.args for ins in final.instructions if ins.keyword == "HEALTHCHECK"]
    c.check(
        bool(hcs) and "/healthz" in hcs[-1] and not hcs[-1].upper().startswith("NONE"),
        "Dockerfile: the runtime stage has no HEALTHCHECK on /healthz",
    )
    entry = [ins.args for ins in final.instructions if ins.keyword == "ENTRYPOINT"]
    c.check(bool(entry) and "envrun-worker" in entry[-1], "Dockerfile: ENTRYPOINT is not envrun-worker")
    exposed = " ".join(ins.args for ins in final.instructions if ins.keyword == "EXPOSE")
    c.check(str(METRICS_PORT) in exposed.split(), f"Dockerfile: EXPOSE {METRICS_PORT} is missing")
    env = " ".join(ins.args for ins in final.instructions if ins.keyword == "ENV")
    c.check(
        re.search(rf"ENVRUN_HTTP_ADDR=0\.0\.0\.0:{METRICS_PORT}\b", env) is not None,
        f"Dockerfile: ENV ENVRUN_HTTP_ADDR=0.0.0.0:{METRICS_PORT} is missing",
    )

    pkgs = dockerfile.apt_installs(final)
    for p in pkgs:
        c.check(not p.endswith("-dev"), f"Dockerfile: the runtime stage installs {p}, a build package")
    for p in ("openssh-client", "bubblewrap"):
        c.check(p in pkgs, f"Dockerfile: the runtime stage does not install {p} (the drivers run it)")
    c.check(
        "curl" in pkgs or "wget" in pkgs,
        "Dockerfile: the runtime stage installs neither curl nor wget for the HEALTHCHECK",
    )
    modules = re.findall(r"pkg_check_modules\(\s*\w+\s+(?:REQUIRED\s+)?(?:IMPORTED_TARGET\s+)?([\w.+-]+)", cmake)
    c.check(bool(modules), "CMakeLists.txt: no pkg_check_modules found")
    for mod in modules:
        if not c.check(
            mod in RUNTIME_PACKAGE,
            f"CMakeLists.txt links {mod}: add its Debian runtime package to RUNTIME_PACKAGE in tests/docker/check_compose.py and to docker/Dockerfile",
        ):
            continue
        p = RUNTIME_PACKAGE[mod]
        c.check(
            p is None or p in pkgs,
            f"Dockerfile: the runtime stage does not install {p} ({mod}'s shared library)",
        )


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.normpath(os.path.join(here, "..", "..")))
    ap.add_argument("--compose")
    ap.add_argument("--prometheus")
    ap.add_argument("--dockerfile")
    ap.add_argument("--readme")
    ap.add_argument("--cmake")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    compose_path = a.compose or os.path.join(root, "docker", "compose.yaml")
    prom_path = a.prometheus or os.path.join(root, "docker", "prometheus.yml")
    paths = {
        "dockerfile": a.dockerfile or os.path.join(root, "docker", "Dockerfile"),
        "readme": a.readme or os.path.join(root, "README.md"),
        "cmake": a.cmake or os.path.join(root, "CMakeLists.txt"),
    }
    text = {}
    try:
        for k, p in paths.items():
            with open(p, encoding="utf-8") as f:
                text[k] = f.read()
        with open(compose_path, encoding="utf-8") as f:
            compose = yaml.safe_load(f)
        with open(prom_path, encoding="utf-8") as f:
            prom = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        print(f"docker.structure: FAIL: {e}")
        return 1

    c = Checker()
    if c.check(isinstance(compose, dict), f"{compose_path}: not a YAML mapping"):
        check_compose(c, compose, compose_path, prom, prom_path, text["readme"], root)
    check_dockerfile(c, text["dockerfile"], text["cmake"])
    for f in c.failures:
        print(f"docker.structure: FAIL: {f}")
    if c.failures:
        print(f"docker.structure: {len(c.failures)} rule(s) broken")
        return 1
    print("docker.structure: compose.yaml, prometheus.yml and Dockerfile hold together")
    return 0


if __name__ == "__main__":
    sys.exit(main())
