"""Runs containers of rendered Kubernetes pod specs as local processes, kubelet-style.

What a kubelet would do with a container of the chart, done on loopback:
  - command[0] (a path in the image) is mapped to the locally built program of that name;
  - env: literal values and downward-API fieldRefs (metadata.name / namespace / labels[...] /
    annotations[...], status.podIP) are resolved; $(VAR) references in env values and args
    are expanded with Kubernetes' rules ($$ escapes, unknown names stay as they are);
  - volumes: configMap volumes are written in the kubelet's atomic-writer layout
    (..data -> ..<version>/, key -> ..data/key) so a later update is an atomic swap; emptyDir
    and PersistentVolumeClaim (template) volumes become directories of the test; mount paths
    in args are replaced by those directories, and any other absolute path in an arg fails the
    test (the image's root file system is read-only);
  - network: each pod gets its own loopback address (127.x.y.z) as pod IP; "0.0.0.0:" and
    "127.0.0.1:" (the pod's loopback) listeners bind to it; cluster DNS names are substituted
    by the caller's resolver and none may remain;
  - the hostname is the pod name (a UTS namespace, uts_exec.py);
  - probes (grpc, httpGet, tcpSocket) are run against the pod IP, ports resolved by name.
Nothing here knows tokenmeter's flags: they come from the rendered manifests only.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

from tm_grpc import grpc_health, http_probe

HERE = os.path.dirname(os.path.abspath(__file__))


def expand_vars(text, env):
    """Kubernetes' $(VAR) expansion: $$ -> $, $(NAME) -> env[NAME] if defined, else kept."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i + 2:]:
            end = text.index(")", i + 2)
            name = text[i + 2:end]
            out.append(env[name] if name in env else text[i:end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class Pod:
    """One pod's identity: name, namespace, labels, IP, and its materialized volumes."""

    def __init__(self, name, namespace, labels, ip, workdir, volumes, configmaps):
        self.name, self.namespace, self.labels, self.ip = name, namespace, labels, ip
        self.workdir = workdir
        self.volume_dirs = {}
        os.makedirs(workdir, exist_ok=True)
        for volume in volumes:
            self.volume_dirs[volume["name"]] = self._materialize(volume, configmaps)

    def _materialize(self, volume, configmaps):
        path = os.path.join(self.workdir, "volumes", volume["name"])
        if "configMap" in volume:
            data = configmaps[volume["configMap"]["name"]]
            write_atomic_configmap(path, data, "v1")
        elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
            os.makedirs(path, exist_ok=True)
        else:
            raise AssertionError("volume %s: unsupported source %s" % (volume["name"], volume))
        return path

    def field(self, path):
        """A downward-API fieldRef value."""
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            source = self.labels if m.group(1) == "labels" else {}
            if m.group(2) not in source:
                raise AssertionError("fieldRef %s: the pod has no such label" % path)
            return source[m.group(2)]
        values = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                  "status.podIP": self.ip, "spec.nodeName": "local-node"}
        if path not in values:
            raise AssertionError("fieldRef %s is not supported here" % path)
        return values[path]


def write_atomic_configmap(path, data, version):
    """Writes/updates a configMap volume like the kubelet's atomic writer."""
    os.makedirs(path, exist_ok=True)
    version_dir = os.path.join(path, "..%s" % version)
    os.makedirs(version_dir)
    for key, value in data.items():
        with open(os.path.join(version_dir, key), "w") as f:
            f.write(value)
    tmp_link = os.path.join(path, "..data_tmp")
    os.symlink("..%s" % version, tmp_link)
    os.rename(tmp_link, os.path.join(path, "..data"))  # The atomic swap.
    for key in data:
        link = os.path.join(path, key)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", key), link)


class Container:
    """A running container of a pod: resolved argv and env, its process and its probes."""

    def __init__(self, pod, spec, programs, resolve_host):
        self.pod, self.spec = pod, spec
        self.name = spec["name"]
        self.env = self._env()
        self.argv = self._argv(programs, resolve_host)
        self.proc = None
        self.sigterm_at = None
        self.log_path = os.path.join(pod.workdir, "%s.log" % self.name)

    def _env(self):
        env = {}
        for item in self.spec.get("env", []):
            if "value" in item:
                env[item["name"]] = expand_vars(item["value"], env)
            elif "fieldRef" in item.get("valueFrom", {}):
                env[item["name"]] = self.pod.field(item["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise AssertionError("env %s: unsupported source" % item["name"])
        return env

    def _mounts(self):
        mounts = []
        for mount in self.spec.get("volumeMounts", []):
            assert "subPath" not in mount, "%s: subPath mounts get no updates" % mount["name"]
            mounts.append((mount["mountPath"].rstrip("/"), self.pod.volume_dirs[mount["name"]]))
        return sorted(mounts, key=lambda m: -len(m[0]))

    def _argv(self, programs, resolve_host):
        command = self.spec["command"]
        assert command[0] in programs, "%s: no local build of %s" % (self.name, command[0])
        argv = [programs[command[0]]]
        mounts = self._mounts()
        for raw in command[1:] + self.spec.get("args", []):
            arg = expand_vars(raw, self.env)
            assert "$(" not in arg, "%s: unresolved variable in %r" % (self.name, raw)
            arg = re.sub(r"\b(0\.0\.0\.0|127\.0\.0\.1):", self.pod.ip + ":", arg)
            arg = re.sub(r"[-a-z0-9{}.]+\.svc\.[-a-z0-9.]+", lambda m: resolve_host(m.group(0)),
                         arg)
            assert ".svc." not in arg, "%s: unresolved DNS name in %r" % (self.name, arg)
            argv.append(self._map_paths(arg, mounts))
        return argv

    def _map_paths(self, arg, mounts):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if not value.startswith("/"):
            return arg
        for mount_path, local in mounts:
            if value == mount_path or value.startswith(mount_path + "/"):
                return arg.replace(mount_path, local, 1)
        raise AssertionError("%s: %r is not on a volume (the root file system is read-only)"
                             % (self.name, arg))

    def start(self):
        log = open(self.log_path, "ab")
        argv = [sys.executable, "-B", os.path.join(HERE, "uts_exec.py"), self.pod.name] + self.argv
        env = dict({"PATH": "/usr/local/bin:/usr/bin:/bin"}, **self.env)  # + the image's PATH
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.pod.workdir, start_new_session=True)
        log.close()

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def port(self, port):
        """A probe's port: a number or the name of one of the container's ports."""
        if isinstance(port, int):
            return port
        for p in self.spec.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        raise AssertionError("%s: no port named %s" % (self.name, port))

    def probe(self, kind):
        """Runs the container's probe of this kind once; True if it passes."""
        probe = self.spec[kind]
        if "grpc" in probe:
            address = "%s:%d" % (self.pod.ip, self.port(probe["grpc"]["port"]))
            return grpc_health(address, probe["grpc"].get("service", ""))
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = "http://%s:%d%s" % (self.pod.ip, self.port(get["port"]), get.get("path", "/"))
            return http_probe(url)
        if "tcpSocket" in probe:
            try:
                socket.create_connection((self.pod.ip, self.port(probe["tcpSocket"]["port"])),
                                         timeout=2).close()
                return True
            except OSError:
                return False
        raise AssertionError("%s: unsupported %s %s" % (self.name, kind, probe))

    def wait_started(self, limit_seconds=60):
        """Polls the startup probe (or readiness) within its Kubernetes budget."""
        kind = "startupProbe" if "startupProbe" in self.spec else "readinessProbe"
        probe = self.spec[kind]
        budget = min(limit_seconds, probe.get("periodSeconds", 10) *
                     probe.get("failureThreshold", 3) + probe.get("initialDelaySeconds", 0))
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("%s of %s exited (%s):\n%s" % (
                    self.name, self.pod.name, self.proc.returncode, self.log_text()[-3000:]))
            if self.probe(kind):
                return
            time.sleep(0.1)
        raise AssertionError("%s of %s: %s failed for %.0f s:\n%s" % (
            self.name, self.pod.name, kind, budget, self.log_text()[-3000:]))

    def run_to_completion(self, timeout):
        """Runs a run-to-completion container (a test pod's); returns (exit code, output)."""
        self.start()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("%s did not finish in %d s" % (self.name, timeout))
        return self.proc.returncode, self.log_text()

    def send_sigterm(self):
        """What the kubelet does first when the pod is deleted."""
        if self.proc is not None and self.proc.poll() is None:
            self.sigterm_at = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, grace_seconds):
        """SIGTERM (unless sent already), then SIGKILL after the grace period; returns
        (exit code, seconds since SIGTERM)."""
        if self.proc is None or (self.proc.poll() is not None and self.sigterm_at is None):
            return (None if self.proc is None else self.proc.returncode), 0.0
        if self.sigterm_at is None:
            self.send_sigterm()
        started = self.sigterm_at
        try:
            self.proc.wait(timeout=max(0.1, grace_seconds - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "killed after %ss grace" % grace_seconds, time.monotonic() - started
        return self.proc.returncode, time.monotonic() - started

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_loopback_net(ports, attempts=50):
    """A 127.N.0.0/16 network whose .i.1 addresses have `ports` free, for pod IPs 127.N.i.1."""
    import random
    rng = random.Random()
    for _ in range(attempts):
        net = rng.randint(20, 250)
        ok = True
        for port in ports:
            s = socket.socket()
            try:
                s.bind(("127.%d.0.1" % net, port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return net
    raise AssertionError("no free loopback network for ports %s" % ports)
