#!/usr/bin/env python3
"""docker.structure_selftest: check_compose.py fails when it should.

Copies docker/, README.md and CMakeLists.txt into a temporary root, breaks
one rule at a time and expects check_compose.py to exit 1 naming it (and 0
on the unbroken copy). A mutation whose text is no longer in the file fails
too, so this list follows the files it breaks.
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
CHECK = os.path.join(HERE, "check_compose.py")

C, P, D = "docker/compose.yaml", "docker/prometheus.yml", "docker/Dockerfile"
R, M = "README.md", "CMakeLists.txt"

# (file, text, replacement, what the failure must say)
MUTATIONS = [
    (C, "image: apache/kafka:3.8.0", "image: apache/kafka:latest", "is not pinned"),
    (C, "image: postgres:15", "image: postgres", "is not pinned"),
    (C, "  worker-3:\n    <<: *worker\n", "", "service worker-3 is missing"),
    (C, "envrun.activity --partitions 6", "envrun.activity --partitions 5", "envrun.activity gets 5 partitions"),
    (C, "        $$t --topic envrun.commands.dlq --partitions 3\n", "", "the contract's topics are"),
    (C, "KAFKA_PROCESS_ROLES: broker,controller", "KAFKA_PROCESS_ROLES: broker", "KAFKA_PROCESS_ROLES"),
    (
        C,
        "services:\n",
        "services:\n  zookeeper:\n    image: zookeeper:3.9.2\n",
        "ZooKeeper has no place",
    ),
    (C, "http://schema-registry:8081\n", "http://registry:8081\n", "ENVRUN_SCHEMA_REGISTRY_URL=http://registry:8081"),
    (C, "ENVRUN_KAFKA_BROKERS: kafka:9092", "ENVRUN_KAFKA_BROKERS: kafka:9093", "broker kafka:9093"),
    (C, "condition: service_completed_successfully", "condition: service_started", "wait for the topics"),
    (C, "      - worker-3\n", "      - worker-4\n", "depends on worker-4"),
    (C, "dockerfile: docker/Dockerfile", "dockerfile: docker/Dockerfile.dev", "not the repository's docker/Dockerfile"),
    (C, "    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready", "    x-hc:\n      test: [\"CMD-SHELL\", \"pg_isready", "postgres has no healthcheck"),
    (P, "worker-3:9464", "worker-3:9465", "scrape targets"),
    (C, "./prometheus.yml:/etc/prometheus/prometheus.yml", "./prometheus.yml:/etc/prometheus/p.yml", "does not mount docker/prometheus.yml"),
    (D, "USER envrun", "USER root", "non-root USER"),
    (D, "FROM debian:12-slim AS runtime", "FROM debian:12 AS runtime", "is not debian:12-slim"),
    (D, "COPY --from=build ", "COPY --from=builder ", "COPY --from=builder names no earlier stage"),
    (D, "libavro23 libpq5 libcurl4 libjansson4 \\\n", "libavro23 libcurl4 libjansson4 \\\n", "does not install libpq5"),
    (D, "libavro23 libpq5 libcurl4 libjansson4 \\\n", "libavro23 libpq-dev libcurl4 libjansson4 \\\n", "libpq-dev, a build package"),
    (D, "/healthz", "/readyz", "HEALTHCHECK on /healthz"),
    (D, "bash /src/scripts/build-release.sh /opt/envrun", "make", "RUNs scripts/build-release.sh"),
    (D, "RUN bash /src/scripts/install-deps.sh --build-only", "RUN bash /src/scripts/install-deps.sh", "install-deps.sh --build-only"),
    (D, "ENVRUN_HTTP_ADDR=0.0.0.0:9464", "ENVRUN_HTTP_ADDR=127.0.0.1:9464", "ENVRUN_HTTP_ADDR=0.0.0.0:9464"),
    (R, "| `envrun.commands` | 12 |", "| `envrun.commands` | 24 |", "envrun.commands gets 12 partitions, recommended 24"),
    (
        M,
        "pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)",
        "pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)\npkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)",
        "links libzstd",
    ),
]


def run(root):
    p = subprocess.run([sys.executable, CHECK, "--root", root], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in (C, P, D, R, M):
            os.makedirs(os.path.join(tmp, os.path.dirname(f)), exist_ok=True)
            shutil.copyfile(os.path.join(ROOT, f), os.path.join(tmp, f))
        rc, out = run(tmp)
        if rc != 0:
            print("selftest: FAIL: the unbroken copy does not pass:\n" + out)
            return 1
        for f, old, new, want in MUTATIONS:
            path = os.path.join(tmp, f)
            with open(path, encoding="utf-8") as fh:
                orig = fh.read()
            if old not in orig:
                print(f"selftest: FAIL: {f} no longer holds {old!r}: update this mutation")
                bad += 1
                continue
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(orig.replace(old, new, 1))
            try:
                rc, out = run(tmp)
            finally:
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(orig)
            if rc != 1 or want not in out:
                print(f"selftest: FAIL: {f}: {old!r} -> {new!r} gave exit {rc}, expected 1 and {want!r}:\n{out}")
                bad += 1
    if bad:
        print(f"selftest: {bad} of {len(MUTATIONS)} broken copies were not caught")
        return 1
    print(f"selftest: check_compose.py caught all {len(MUTATIONS)} broken copies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
