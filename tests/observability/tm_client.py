#!/usr/bin/python3
"""A small tokenmeter gRPC client for the observability tests (Debian python3-grpcio).

Generates the Python stubs of proto/tokenmeter/v1 with protoc + grpc_python_plugin into a
directory given by --stubs, then runs one command:

  traffic       a steady, deterministic mix through a sidecar: Report (usage events), Check,
                Reserve + Commit / Release / abandoned reservations (expire), one invalid Report
                per second; plus, once at start, a batch with a malformed event sent straight to
                every shard (so tokenmeter_ingest_events_rejected_total has a series). Runs until
                --duration seconds pass or --stop-file exists.
  report-users  reports one event for each of --users distinct users through a sidecar.

Every loop is bounded by a deadline; every RPC has a deadline.
"""
import argparse
import glob
import os
import random
import shutil
import subprocess
import sys
import time

import grpc

RPC_TIMEOUT = 5.0

# The fleet: (tenant, team, users, models). acme/agents is the "tokenmaxxing" team: the most
# calls and the biggest estimates.
FLEET = [
    ("acme", "agents", ["coder-bot-%d" % i for i in range(1, 9)],
     [("anthropic", "claude-sonnet-4-20250514"), ("anthropic", "claude-opus-4-20250514")]),
    ("acme", "research", ["alice", "bob"],
     [("openai", "gpt-4o"), ("gcp.gemini", "gemini-2.5-pro")]),
    ("acme", "support", ["dana", "eve"], [("openai", "gpt-4o-mini")]),
    ("globex", "data", ["ivan", "jun"], [("openai", "gpt-4.1")]),
    ("initech", "platform", ["peter", "milton"], [("anthropic", "claude-3-5-haiku-20241022")]),
    ("umbrella", "labs", ["wesker"], [("openai", "o4-mini")]),
]


def load_stubs(proto_root, out_dir):
    """Generates (once) and imports the tokenmeter.v1 stubs; returns the module namespace."""
    marker = os.path.join(out_dir, "tokenmeter", "v1", "sidecar_pb2_grpc.py")
    if not os.path.exists(marker):
        os.makedirs(out_dir, exist_ok=True)
        plugin = shutil.which("grpc_python_plugin")
        if plugin is None:
            sys.exit("tm_client: grpc_python_plugin not found (Debian protobuf-compiler-grpc)")
        protos = sorted(glob.glob(os.path.join(proto_root, "tokenmeter", "v1", "*.proto")))
        subprocess.run(["protoc", "-I" + proto_root, "--python_out=" + out_dir,
                        "--grpc_out=" + out_dir, "--plugin=protoc-gen-grpc=" + plugin] + protos,
                       check=True)
    sys.path.insert(0, out_dir)
    from tokenmeter.v1 import event_pb2, ingest_pb2, ingest_pb2_grpc  # noqa: E402
    from tokenmeter.v1 import quota_pb2, quota_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc  # noqa
    return argparse.Namespace(event=event_pb2, ingest=ingest_pb2, ingest_grpc=ingest_pb2_grpc,
                              quota=quota_pb2, quota_grpc=quota_pb2_grpc, sidecar=sidecar_pb2,
                              sidecar_grpc=sidecar_pb2_grpc)


def make_event(pb, event_id, tenant, team, user, provider, model, inp, out):
    e = pb.event.UsageEvent(event_id=event_id, tenant=tenant, team=team, user=user,
                            api_key="k-" + user, application="obs-test", provider=provider,
                            model=model)
    e.tokens.input = inp
    e.tokens.cached_input = inp // 4
    e.tokens.output = out
    e.tokens.reasoning = out // 8 if "o4" in model or "opus" in model else 0
    e.occurred_at.GetCurrentTime()
    return e


def make_scope(pb, tenant, team, user, provider, model):
    return pb.event.Scope(tenant=tenant, team=team, user=user, api_key="k-" + user,
                          provider=provider, model=model)


def send_malformed_to_shards(pb, shards, run_id):
    """One batch with a malformed event (invalid tenant) straight to every shard's Ingest."""
    for i, addr in enumerate(shards):
        with grpc.insecure_channel(addr) as channel:
            stub = pb.ingest_grpc.IngestServiceStub(channel)
            batch = pb.ingest.IngestBatch(producer_id="obs-direct-%s-%d" % (run_id, i), epoch=1,
                                          seq=1)
            bad = make_event(pb, "bad-%s-%d" % (run_id, i), "not a tenant!", "t", "u", "openai",
                             "gpt-4o", 10, 10)
            batch.events.append(bad)
            acks = stub.Ingest(iter([batch]), timeout=RPC_TIMEOUT)
            for ack in acks:
                print("tm_client: shard %d ack outcome=%d rejected=%d" %
                      (i, ack.outcome, ack.rejected_events), flush=True)
                break
            acks.cancel()


class Traffic:
    """One tick of traffic per call of tick(); counts outcomes."""

    def __init__(self, pb, channel, run_id, rng):
        self.pb = pb
        self.report = pb.sidecar_grpc.ReportServiceStub(channel)
        self.quota = pb.quota_grpc.QuotaServiceStub(channel)
        self.run_id = run_id
        self.rng = rng
        self.n = 0
        self.counts = {"events": 0, "allowed": 0, "denied": 0, "shadow_denied": 0, "errors": 0}

    def next_id(self, kind):
        self.n += 1
        return "%s-%s-%d" % (kind, self.run_id, self.n)

    def pick(self, team_index=None):
        tenant, team, users, models = FLEET[team_index if team_index is not None
                                            else self.rng.randrange(len(FLEET))]
        provider, model = self.rng.choice(models)
        return tenant, team, self.rng.choice(users), provider, model

    def report_events(self, count):
        events = []
        for _ in range(count):
            tenant, team, user, provider, model = self.pick()
            big = team == "agents"
            events.append(make_event(self.pb, self.next_id("ev"), tenant, team, user, provider,
                                     model, 3000 if big else 1500, 600 if big else 300))
        self.report.Report(self.pb.sidecar.ReportRequest(events=events), timeout=RPC_TIMEOUT)
        self.counts["events"] += count

    def report_invalid(self):
        bad = make_event(self.pb, self.next_id("bad"), "acme", "agents", "coder-bot-1",
                         "anthropic", "claude-sonnet-4-20250514", 10, 10)
        bad.tokens.cached_input = 99  # > input: refused by the sidecar (INVALID_ARGUMENT).
        try:
            self.report.Report(self.pb.sidecar.ReportRequest(events=[bad]), timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise

    def reserve(self, team_index, close):
        """Reserve for one call of FLEET[team_index]; close = commit | release | abandon."""
        tenant, team, user, provider, model = self.pick(team_index)
        estimate = self.pb.event.TokenCounts(input=5000, output=1000)
        rid = self.next_id("r")
        ttl_ms = 1500 if close == "abandon" else 30000
        d = self.quota.Reserve(self.pb.quota.ReserveRequest(
            reservation_id=rid, scope=make_scope(self.pb, tenant, team, user, provider, model),
            estimate=estimate, ttl_ms=ttl_ms), timeout=RPC_TIMEOUT)
        if d.result != self.pb.quota.QuotaDecision.ALLOWED:
            self.counts["denied"] += 1
            return
        self.counts["shadow_denied" if d.shadow_denied else "allowed"] += 1
        if close == "commit":
            actual = self.pb.event.TokenCounts(input=4000, cached_input=1000, output=800)
            self.quota.Commit(self.pb.quota.CommitRequest(reservation_id=rid, tenant=tenant,
                                                          actual=actual), timeout=RPC_TIMEOUT)
        elif close == "release":
            self.quota.Release(self.pb.quota.ReleaseRequest(reservation_id=rid, tenant=tenant),
                               timeout=RPC_TIMEOUT)

    def check(self):
        tenant, team, user, provider, model = self.pick()
        self.quota.Check(self.pb.quota.CheckRequest(
            scope=make_scope(self.pb, tenant, team, user, provider, model),
            usage=self.pb.event.TokenCounts(input=1000, output=100)), timeout=RPC_TIMEOUT)

    def tick(self, tick_no):
        self.report_events(10)
        self.check()
        # Half of the reservations are the agents team's (FLEET[0]): when its budget is lowered
        # the denial ratio passes any sane alert threshold.
        self.reserve(0, "commit")
        self.reserve(self.rng.randrange(1, len(FLEET)), "commit")
        if tick_no % 4 == 1:
            self.reserve(0, "release")
            self.reserve(self.rng.randrange(1, len(FLEET)), "release")
        if tick_no % 4 == 3:
            self.reserve(self.rng.randrange(1, len(FLEET)), "abandon")
            self.reserve(0, "commit")
        self.report_invalid()


def run_traffic(pb, args):
    run_id = "%d-%d" % (os.getpid(), int(time.time() * 1000))
    if args.shards:
        send_malformed_to_shards(pb, args.shards.split(","), run_id)
    deadline = time.monotonic() + args.duration
    with grpc.insecure_channel(args.sidecar) as channel:
        t = Traffic(pb, channel, run_id, random.Random(args.seed))
        tick_no = 0
        while time.monotonic() < deadline:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            started = time.monotonic()
            try:
                t.tick(tick_no)
            except grpc.RpcError as e:  # Keep going: the test judges through the metrics.
                t.counts["errors"] += 1
                print("tm_client: rpc error %s: %s" % (e.code(), e.details()), flush=True)
            tick_no += 1
            if tick_no % 10 == 0:
                print("tm_client: tick %d %s" % (tick_no, t.counts), flush=True)
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    print("tm_client: done %s" % t.counts, flush=True)


def run_report_users(pb, args):
    run_id = "%d-%d" % (os.getpid(), int(time.time() * 1000))
    deadline = time.monotonic() + args.duration
    sent = 0
    with grpc.insecure_channel(args.sidecar) as channel:
        report = pb.sidecar_grpc.ReportServiceStub(channel)
        while sent < args.users and time.monotonic() < deadline:
            n = min(args.batch, args.users - sent)
            events = [make_event(pb, "u-%s-%d" % (run_id, sent + i), args.tenant, "team-%d" % (
                (sent + i) % 7), "user-%05d" % (sent + i), "openai", "gpt-4o-mini", 100, 10)
                for i in range(n)]
            report.Report(pb.sidecar.ReportRequest(events=events), timeout=30)
            sent += n
    print("tm_client: reported %d events of %d distinct users" % (sent, sent), flush=True)
    if sent < args.users:
        sys.exit("tm_client: deadline passed after %d of %d users" % (sent, args.users))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--proto-root", required=True, help="the repository's proto/ directory")
    p.add_argument("--stubs", required=True, help="directory for the generated Python stubs")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("traffic")
    t.add_argument("--sidecar", required=True, help="sidecar gRPC address host:port")
    t.add_argument("--shards", default="", help="shard addresses, comma-separated (optional)")
    t.add_argument("--duration", type=float, default=120, help="seconds, at most")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    t.add_argument("--stop-file", default="", help="stop as soon as this file exists")
    t.add_argument("--seed", type=int, default=1)
    u = sub.add_parser("report-users")
    u.add_argument("--sidecar", required=True)
    u.add_argument("--users", type=int, default=10000)
    u.add_argument("--tenant", default="acme")
    u.add_argument("--batch", type=int, default=500)
    u.add_argument("--duration", type=float, default=120, help="seconds, at most")
    args = p.parse_args()
    pb = load_stubs(args.proto_root, args.stubs)
    if args.command == "traffic":
        run_traffic(pb, args)
    else:
        run_report_users(pb, args)


if __name__ == "__main__":
    main()
