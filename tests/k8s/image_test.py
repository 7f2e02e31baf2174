#!/usr/bin/python3
"""The OCI image: built by deploy/image/build.sh, inspected with skopeo, run with podman.

  1. build (FROM scratch, COPY only) from the build tree's binaries, into a storage and an
     OCI archive under BUILD_DIR/k8s-image;
  2. skopeo inspect --config of the archive and of the local storage: user 65532:65532, the
     entrypoint, no shell;
  3. every program the Helm chart runs (command[0] of each rendered container) exists in the
     image and starts (--help) as user 65532 with a read-only root file system, no
     capabilities and no privilege escalation, as the chart's security context runs it;
     /bin/sh does not exist;
  4. a shard container (--network host, loopback only, the shard index from its hostname,
     deploy/local/policies.yaml mounted read-only) answers a gRPC health check, /readyz, and
     real quota calls whose policies need the image's time zone data; then it is stopped
     (SIGTERM, exit 0 after draining) and removed by the test.
podman runs with runc and lowered default ulimits (deploy/image/containers-env.sh).
Usage: image_test.py --build-dir DIR
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from tm_grpc import Client, grpc_health, http_probe, load_stubs  # noqa: E402

USER = "65532:65532"
ENTRYPOINT = ["/usr/local/bin/tokenmeter-aggregator"]
# How the chart's security context runs every container.
RESTRICTED = ["--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
              "--user=" + USER]


def log(msg):
    print("[image_test %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(cmd, check=True, timeout=120):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(cmd), result.returncode,
                                                       result.stdout, result.stderr))
    return result


def build(build_dir, out):
    for tool in ("buildah", "skopeo", "podman", "runc"):
        if shutil.which(tool) is None:
            sys.exit("image_test: %s not found (deploy/local/install-deps.sh installs it)" % tool)
    started = time.monotonic()
    result = run(["bash", os.path.join(ROOT, "deploy", "image", "build.sh"), build_dir, out],
                 timeout=300)
    image, archive = result.stdout.split()[-2:]
    os.environ["CONTAINERS_CONF"] = os.path.join(out, "containers.conf")
    os.environ["CONTAINERS_STORAGE_CONF"] = os.path.join(out, "storage.conf")
    size = os.path.getsize(archive) / 2**20
    log("built %s in %.1f s (%s); OCI archive %.1f MiB" % (
        image, time.monotonic() - started, result.stderr.strip().splitlines()[-1], size))
    return image, archive


def inspect(image, archive):
    for ref in ("oci-archive:" + archive, "containers-storage:" + image):
        config = json.loads(run(["skopeo", "inspect", "--config", ref]).stdout)["config"]
        assert config.get("User") == USER, "%s: user %r" % (ref, config.get("User"))
        assert config.get("Entrypoint") == ENTRYPOINT, "%s: %r" % (ref, config.get("Entrypoint"))
        assert not any("sh" == os.path.basename(p) for p in config.get("Entrypoint", []))
    log("skopeo inspect --config (archive and storage): User %s, Entrypoint %s, Cmd %s" %
        (config["User"], config["Entrypoint"], config.get("Cmd")))


def chart_programs(build_dir):
    """command[0] of every container the chart renders (defaults and DaemonSet mode)."""
    tools = run(["bash", os.path.join(HERE, "npm_tools.sh"), build_dir], timeout=600).stdout
    helm = os.path.join(tools.strip(), "node_modules", ".bin", "helm")
    chart = os.path.join(ROOT, "deploy", "helm", "tokenmeter")
    programs = set()
    for values in ("default-values.yaml", "sidecar-daemonset-values.yaml"):
        out = run([helm, "template", "tm", chart, "-f", os.path.join(chart, "ci", values)]).stdout
        for doc in yaml.safe_load_all(out):
            if not doc:
                continue
            specs = []
            if doc["kind"] in ("StatefulSet", "DaemonSet"):
                specs.append(doc["spec"]["template"]["spec"])
            elif doc["kind"] == "Pod":
                specs.append(doc["spec"])
            elif doc["kind"] == "ConfigMap" and "patch.yaml" in doc["data"]:
                specs.append(yaml.safe_load(doc["data"]["patch.yaml"])["spec"]["template"]["spec"])
            for spec in specs:
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    programs.add(c["command"][0])
    return sorted(programs)


def check_programs(image, programs):
    base = ["podman", "run", "--rm", "--network=host"] + RESTRICTED
    for program in programs:
        result = run(base + ["--entrypoint", program, image, "--help"])
        assert "Usage:" in result.stdout, result.stdout
    shell = run(base + ["--entrypoint", "/bin/sh", image, "-c", "true"], check=False)
    assert shell.returncode != 0, "the image has a shell"
    log("the chart's programs start in the image as %s, read-only root, no capabilities: %s; "
        "/bin/sh: absent (podman exit %d)" % (USER, " ".join(programs), shell.returncode))


def shard_ports(name):
    logs = run(["podman", "logs", name], check=False)
    m = re.search(r'msg="shard serving".* port=(\d+) metrics_port=(\d+) shard=(\d+/\d+)',
                  logs.stdout + logs.stderr)
    return m.groups() if m else None


def run_shard(image, out, stubs):
    name = "tokenmeter-image-test-" + uuid.uuid4().hex[:8]
    policies = os.path.join(out, "policies.yaml")
    shutil.copyfile(os.path.join(ROOT, "deploy", "local", "policies.yaml"), policies)
    os.chmod(policies, 0o644)
    cmd = ["podman", "run", "--detach", "--name", name, "--network=host",
           "--hostname=tokenmeter-aggregator-0"] + RESTRICTED + [
           "--tmpfs=/var/lib/tokenmeter:rw,U",
           "--volume=%s:/etc/tokenmeter/policies/policies.yaml:ro" % policies,
           image, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0",
           "--data-dir=/var/lib/tokenmeter/rocksdb", "--shard-index-from-hostname",
           "--shard-count=1", "--policy-file=/etc/tokenmeter/policies/policies.yaml"]
    container_id = name  # Until podman answers with the id; a failed start may leave it.
    try:
        container_id = run(cmd).stdout.strip()
        deadline = time.monotonic() + 30
        ports = None
        while ports is None and time.monotonic() < deadline:
            ports = shard_ports(container_id)
            time.sleep(0.2)
        assert ports, "no 'shard serving' log: %s" % run(["podman", "logs", container_id],
                                                          check=False).stderr
        grpc_port, metrics_port, shard = ports
        address = "127.0.0.1:%s" % grpc_port
        assert shard == "0/1", shard
        assert grpc_health(address), "gRPC health check failed"
        assert http_probe("http://127.0.0.1:%s/readyz" % metrics_port), "/readyz failed"
        log("container %s: shard %s (index from hostname), gRPC health SERVING on %s, /readyz "
            "200 on :%s" % (container_id[:12], shard, address, metrics_port))
        quota_calls(stubs, address)
        started = time.monotonic()
        run(["podman", "stop", "--time=20", container_id], timeout=60)
        state = json.loads(run(["podman", "inspect", container_id]).stdout)[0]["State"]
        result = run(["podman", "logs", container_id])
        logs = result.stdout + result.stderr
        assert state["ExitCode"] == 0, "exit code %s:\n%s" % (state["ExitCode"], logs[-2000:])
        assert "shard stopped" in logs, logs[-2000:]
        log("podman stop: drained and exited 0 in %.1f s" % (time.monotonic() - started))
    finally:
        run(["podman", "rm", "--force", "--time=5", container_id], check=False)
    remaining = run(["podman", "ps", "--all", "--quiet", "--filter", "id=" + container_id]).stdout
    assert not remaining.strip(), "container %s not removed" % container_id
    log("container removed")


def quota_calls(stubs, address):
    client = Client(stubs, address)
    try:
        scope = client.scope("acme", "agents", "coder-bot-1")
        decision = client.check(scope, 1000, 100)
        assert client.allowed(decision), decision
        ids = {limit.policy_id for limit in decision.limits}
        # acme's policies count calendar windows in Europe/Berlin: the image's zoneinfo.
        assert "acme-monthly-spend" in ids, ids
        reservation = "image-test-" + uuid.uuid4().hex[:8]
        assert client.allowed(client.reserve(reservation, scope, 2000, 500))
        client.commit(reservation, "acme", 1500, 400)
        denied = client.check(scope, 500000000, 0)  # Beyond acme's 400M tokens a day.
        assert not client.allowed(denied), denied
    finally:
        client.close()
    log("quota: Check allowed with %d limits (%s...), Reserve + Commit, an oversized Check "
        "denied" % (len(decision.limits), sorted(ids)[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    build_dir = os.path.abspath(args.build_dir)
    out = os.path.join(build_dir, "k8s-image")
    stubs = load_stubs(ROOT, os.path.join(build_dir, "k8s-stubs"))
    image, archive = build(build_dir, out)
    inspect(image, archive)
    check_programs(image, chart_programs(build_dir))
    run_shard(image, out, stubs)
    log("PASS")


if __name__ == "__main__":
    main()
