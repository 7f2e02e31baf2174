"""gRPC helpers of the Kubernetes tests: tokenmeter.v1 stubs, kubelet-style probes, traffic.

Stubs are generated from proto/ with protoc + grpc_python_plugin (Debian protobuf-compiler-grpc)
into a directory of the build tree, once. The gRPC health check is sent as raw bytes, as the
kubelet's gRPC probe does (grpc.health.v1.Health/Check, field 1 = service name), so no health
proto is needed. Every RPC has a deadline.
"""
import glob
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import grpc

RPC_TIMEOUT = 5.0


def load_stubs(repo_root, out_dir):
    """Generates (once) and imports the tokenmeter.v1 stubs; returns a dict of modules.

    Generated into a private directory renamed into place, so tests running in parallel
    never import a half-written tree."""
    proto_root = os.path.join(repo_root, "proto")
    protos = sorted(glob.glob(os.path.join(proto_root, "tokenmeter", "v1", "*.proto")))
    marker = os.path.join(out_dir, "tokenmeter", "v1", "usage_pb2_grpc.py")
    if not os.path.exists(marker) or any(
            os.path.getmtime(p) > os.path.getmtime(marker) for p in protos):
        plugin = shutil.which("grpc_python_plugin")
        if plugin is None:
            sys.exit("grpc_python_plugin not found (Debian protobuf-compiler-grpc)")
        tmp = "%s.tmp.%d" % (out_dir, os.getpid())
        os.makedirs(tmp)
        subprocess.run(["protoc", "-I" + proto_root, "--python_out=" + tmp,
                        "--grpc_out=" + tmp, "--plugin=protoc-gen-grpc=" + plugin] + protos,
                       check=True)
        old = "%s.old.%d" % (out_dir, os.getpid())
        if os.path.exists(out_dir):
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:  # Another test put its (identical) tree in place first.
            shutil.rmtree(tmp)
        shutil.rmtree(old, ignore_errors=True)
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    from tokenmeter.v1 import event_pb2, quota_pb2, quota_pb2_grpc  # noqa: E402
    from tokenmeter.v1 import sidecar_pb2, sidecar_pb2_grpc, usage_pb2, usage_pb2_grpc  # noqa
    return {"event": event_pb2, "quota": quota_pb2, "quota_grpc": quota_pb2_grpc,
            "sidecar": sidecar_pb2, "sidecar_grpc": sidecar_pb2_grpc, "usage": usage_pb2,
            "usage_grpc": usage_pb2_grpc}


def grpc_health(address, service="", timeout=2.0):
    """What a kubelet gRPC probe does: True iff Health/Check answers SERVING."""
    request = b"" if not service else b"\x0a" + bytes([len(service)]) + service.encode()
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=None, response_deserializer=None)
        try:
            response = check(request, timeout=timeout)
        except grpc.RpcError:
            return False
    return response == b"\x08\x01"


def http_probe(url, timeout=2.0):
    """What a kubelet httpGet probe does: True iff the status is 200..399."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError):
        return False


class Client:
    """Report / Quota through a sidecar, Usage straight from the shards."""

    def __init__(self, stubs, sidecar_address):
        self.pb = stubs
        self._channel = grpc.insecure_channel(sidecar_address)
        self.report_stub = stubs["sidecar_grpc"].ReportServiceStub(self._channel)
        self.quota_stub = stubs["quota_grpc"].QuotaServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def event(self, event_id, tenant, team, user, model, inp, out):
        e = self.pb["event"].UsageEvent(event_id=event_id, tenant=tenant, team=team, user=user,
                                        application="k8s-test", provider="openai", model=model)
        e.tokens.input = inp
        e.tokens.output = out
        e.occurred_at.GetCurrentTime()
        return e

    def report(self, events):
        request = self.pb["sidecar"].ReportRequest(events=events)
        return self.report_stub.Report(request, timeout=RPC_TIMEOUT).accepted

    def scope(self, tenant, team="", user="", model="gpt-4o"):
        return self.pb["event"].Scope(tenant=tenant, team=team, user=user, provider="openai",
                                      model=model)

    def check(self, scope, inp, out):
        usage = self.pb["event"].TokenCounts(input=inp, output=out)
        request = self.pb["quota"].CheckRequest(scope=scope, usage=usage)
        return self.quota_stub.Check(request, timeout=RPC_TIMEOUT)

    def reserve(self, reservation_id, scope, inp, out, ttl_ms=60000):
        estimate = self.pb["event"].TokenCounts(input=inp, output=out)
        request = self.pb["quota"].ReserveRequest(reservation_id=reservation_id, scope=scope,
                                                  estimate=estimate, ttl_ms=ttl_ms)
        return self.quota_stub.Reserve(request, timeout=RPC_TIMEOUT)

    def commit(self, reservation_id, tenant, inp, out):
        actual = self.pb["event"].TokenCounts(input=inp, output=out)
        request = self.pb["quota"].CommitRequest(reservation_id=reservation_id, tenant=tenant,
                                                 actual=actual)
        return self.quota_stub.Commit(request, timeout=RPC_TIMEOUT)

    def allowed(self, decision):
        return decision.result == self.pb["quota"].QuotaDecision.ALLOWED


def tenant_usage(stubs, shard_addresses, tenant, start, end):
    """The tenant's hourly totals summed over [start, end) from its owner shard.

    Returns (owner index, UsageTotals-like dict) or (None, reason). Every other shard must
    refuse the tenant with FAILED_PRECONDITION (it is not the owner)."""
    owner, totals, refusals = None, None, []
    for index, address in enumerate(shard_addresses):
        with grpc.insecure_channel(address) as channel:
            stub = stubs["usage_grpc"].UsageServiceStub(channel)
            request = stubs["usage"].GetUsageRequest(
                scope=stubs["event"].Scope(tenant=tenant),
                granularity=stubs["usage"].GRANULARITY_HOUR)
            request.to.FromSeconds(int(end) + 3600)
            getattr(request, "from").FromSeconds(int(start) - 3600)
            try:
                response = stub.GetUsage(request, timeout=RPC_TIMEOUT)
            except grpc.RpcError as e:
                refusals.append((index, e.code()))
                continue
        if owner is not None:
            return None, "shards %d and %d both answer for %s" % (owner, index, tenant)
        owner = index
        totals = {"input": sum(p.totals.input_tokens for p in response.points),
                  "output": sum(p.totals.output_tokens for p in response.points),
                  "requests": sum(p.totals.requests for p in response.points)}
    bad = [r for r in refusals if r[1] != grpc.StatusCode.FAILED_PRECONDITION]
    if owner is None or bad:
        return None, "owner %s, refusals %s" % (owner, refusals)
    return owner, totals
