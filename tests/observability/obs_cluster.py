"""Processes for the observability tests: aggregator shards, a sidecar, a Prometheus server and
the Python gRPC client, all on 127.0.0.1 with temporary directories.

Every process is started by Cluster and stopped by it, by PID (SIGTERM, then SIGKILL after a
bounded wait), also when a test fails. Every wait is a bounded polling loop on a condition.
Ports: the tokenmeter processes listen on port 0 and the chosen ports are read from their
"serving" log line; Prometheus gets a free port picked just before it starts.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"  # Debian's, with python3-grpcio.


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class Fatal(Exception):
    """Raised by a wait_for condition that can never hold any more (e.g. the process exited)."""


def wait_for(what, condition, timeout, interval=0.25):
    """Polls condition() until it returns a truthy value (returned) or timeout seconds pass.
    Exceptions of the condition count as "not yet", except Fatal."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - the condition may fail until it holds.
            last_error = e
        time.sleep(interval)
    raise TimeoutError("timed out after %ss waiting for %s (last error: %s)" %
                       (timeout, what, last_error))


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name, argv, log_path, env=None):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.log_file = open(log_path, "w")
        self.popen = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)
        self.pid = self.popen.pid
        log("started %s (pid %d): %s" % (name, self.pid, " ".join(argv)))

    def alive(self):
        return self.popen.poll() is None

    def wait_log(self, pattern, timeout):
        """Returns the first match of `pattern` in the log; fails early if the process exits."""
        regex = re.compile(pattern)

        def found():
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                m = regex.search(f.read())
            if m is None and not self.alive():
                raise Fatal("%s exited with %s" % (self.name, self.popen.returncode))
            return m
        try:
            return wait_for("%s log /%s/" % (self.name, pattern), found, timeout)
        except Exception:
            self.dump_log()
            raise

    def dump_log(self, lines=30):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
        log("--- last lines of %s (%s)" % (self.name, self.log_path))
        for line in tail:
            print("    " + line, flush=True)

    def stop(self, timeout=20):
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log("%s (pid %d) did not stop in %ss: SIGKILL" % (self.name, self.pid, timeout))
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self.log_file.close()
        return self.popen.returncode


class Cluster:
    """Use as a context manager: every process started is stopped on exit."""

    def __init__(self, workdir, aggregator_bin, sidecar_bin):
        self.workdir = workdir
        self.aggregator_bin, self.sidecar_bin = aggregator_bin, sidecar_bin
        self.procs = []
        self.shards = []   # [(grpc_port, metrics_port)]
        self.sidecar = None  # (grpc_port, metrics_port)
        self.prometheus_url = None
        self.stubs = os.path.join(workdir, "stubs")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        return False

    def stop_all(self):
        for p in reversed(self.procs):
            rc = p.stop()
            log("stopped %s (pid %d, exit %s)" % (p.name, p.pid, rc))
        self.procs = []

    def _start(self, name, argv, env=None):
        p = Proc(name, argv, os.path.join(self.workdir, name + ".log"), env)
        self.procs.append(p)
        return p

    def start_shards(self, count, policy_file, extra_args=()):
        starting = []
        for i in range(count):
            data = os.path.join(self.workdir, "shard-%d" % i)
            os.makedirs(data, exist_ok=True)
            argv = [self.aggregator_bin, "--listen", "127.0.0.1:0", "--metrics-listen",
                    "127.0.0.1:0", "--data-dir", data, "--shard-index", str(i),
                    "--shard-count", str(count), "--drain-seconds", "2",
                    "--policy-poll-seconds", "0.5"]
            if policy_file:
                argv += ["--policy-file", policy_file]
            starting.append(self._start("shard-%d" % i, argv + list(extra_args)))
        for p in starting:
            m = p.wait_log(r'msg="shard serving".* port=(\d+) metrics_port=(\d+)', 60)
            self.shards.append((int(m.group(1)), int(m.group(2))))
        log("shards (grpc, metrics): %s" % self.shards)

    def shard_addrs(self):
        return ",".join("127.0.0.1:%d" % g for g, _ in self.shards)

    def start_sidecar(self):
        data = os.path.join(self.workdir, "sidecar")
        os.makedirs(data, exist_ok=True)
        p = self._start("sidecar", [self.sidecar_bin, "--listen", "127.0.0.1:0",
                                    "--metrics-listen", "127.0.0.1:0", "--data-dir", data,
                                    "--aggregators", self.shard_addrs(), "--drain-seconds", "2"])
        m = p.wait_log(r'msg="sidecar serving".* port=(\d+) metrics_port=(\d+)', 60)
        self.sidecar = (int(m.group(1)), int(m.group(2)))
        log("sidecar (grpc, metrics): %s" % (self.sidecar,))

    def sidecar_addr(self):
        return "127.0.0.1:%d" % self.sidecar[0]

    def metrics_targets(self):
        return (["127.0.0.1:%d" % m for _, m in self.shards],
                ["127.0.0.1:%d" % self.sidecar[1]] if self.sidecar else [])

    def client(self, *args, background=False, timeout=180):
        """Runs tm_client.py; background=True returns its Proc (stopped with the cluster)."""
        argv = [PYTHON, os.path.join(HERE, "tm_client.py"), "--proto-root",
                os.path.join(ROOT, "proto"), "--stubs", self.stubs] + list(args)
        if background:
            return self._start("client-%s" % args[0], argv)
        log("running: %s" % " ".join(argv))
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        print(r.stdout, end="", flush=True)
        if r.returncode != 0:
            raise RuntimeError("tm_client %s failed with %d" % (args[0], r.returncode))
        return r.stdout

    def start_prometheus(self, rule_files, scrape_interval="1s", attempts=3):
        """A Prometheus server scraping every shard and the sidecar; returns its base URL."""
        prom = shutil.which("prometheus")
        if prom is None:
            raise RuntimeError("prometheus not found (Debian package prometheus)")
        shards, sidecars = self.metrics_targets()
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "rule_files": list(rule_files),
            "scrape_configs": [
                {"job_name": "tokenmeter-aggregator",
                 "static_configs": [{"targets": [t], "labels": {"shard": str(i)}}
                                    for i, t in enumerate(shards)]},
                {"job_name": "tokenmeter-sidecar", "static_configs": [{"targets": sidecars}]},
            ],
        }
        path = os.path.join(self.workdir, "prometheus.yml")
        with open(path, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML.
        for attempt in range(attempts):  # The picked port may be taken meanwhile: retry.
            port = free_port()
            p = self._start("prometheus-%d" % attempt, [
                prom, "--config.file=" + path,
                "--storage.tsdb.path=" + os.path.join(self.workdir, "prometheus-data"),
                "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"])
            url = "http://127.0.0.1:%d" % port

            def ready():
                if not p.alive():
                    raise Fatal("prometheus exited with %s" % p.popen.returncode)
                return http_get(url + "/-/ready")  # Raises until it answers 200.
            try:
                wait_for("prometheus ready", ready, 60)
                self.prometheus_url = url
                log("prometheus at %s" % url)
                return url
            except Exception as e:  # noqa: BLE001
                log("prometheus attempt %d failed: %s" % (attempt, e))
                p.dump_log()
                p.stop()
                self.procs.remove(p)
        raise RuntimeError("prometheus did not start")

    def api(self, path, **params):
        url = "%s/api/v1/%s?%s" % (self.prometheus_url, path, urllib.parse.urlencode(params))
        try:
            body = json.loads(http_get(url, timeout=10))
        except urllib.error.HTTPError as e:
            body = json.loads(e.read().decode("utf-8"))
        return body


def scrape(port):
    return http_get("http://127.0.0.1:%d/metrics" % port)


def fail(msg):
    log("FAIL: " + msg)
    sys.exit(1)
