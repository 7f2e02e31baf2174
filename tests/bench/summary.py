#!/usr/bin/env python3
"""Prints the summary table of tests/bench/run.sh from its "RESULT <key> <value>" lines.

Usage: summary.py RESULTS_FILE [--everysec] [--sidecar-rate R] [--sidecar-fraction F]
"""
import math
import sys


def load(path):
    values = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "RESULT":
                try:
                    values[parts[1]] = float(parts[2])
                except ValueError:
                    pass
    return values


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "unfinished"
    if math.isnan(v):
        return "n/a"
    return f"{v:,.{digits}f}"


def flag_value(name, default):
    args = sys.argv[2:]
    return float(args[args.index(name) + 1]) if name in args[:-1] else default


def main():
    values = load(sys.argv[1])
    everysec = "--everysec" in sys.argv[2:]
    sidecar_rate = flag_value("--sidecar-rate", 1000)
    sidecar_fraction = flag_value("--sidecar-fraction", 0.1)
    get = values.get

    def per_million(bytes_key, events_key):
        b, e = get(bytes_key), get(events_key)
        return None if b is None or not e else b / (e / 1e6)

    def mib(kb_key):
        v = get(kb_key)
        return None if v is None else v / 1024

    def met(v, ok):
        if v is None or math.isnan(v):
            return "n/a"
        return "met" if ok(v) else "MISSED"

    rows = []  # (metric, tokenmeter, redis always, target, redis everysec)

    def row(metric, tm_key, redis_suffix, digits=0, target="", tm_value=None, redis_fn=None):
        tm = tm_value if tm_value is not None else (get(tm_key) if tm_key else None)
        if redis_fn:
            ra, re = redis_fn("redis_always"), redis_fn("redis_everysec")
        else:
            ra = get("redis_always." + redis_suffix) if redis_suffix else None
            re = get("redis_everysec." + redis_suffix) if redis_suffix else None
        rows.append((metric, fmt(tm, digits), fmt(ra, digits), target, fmt(re, digits)))

    tm_ingest = get("tm.ingest.events_per_s")
    row("ingest events/s, durable ack (4 streams x 8 batches x 1000)", "tm.ingest.events_per_s",
        "ingest.events_per_s",
        target=f"≥ 1,000,000 ({met(tm_ingest, lambda v: v >= 1e6)})")
    row("ingest events counted", "tm.ingest.events", "ingest.events")
    row("ingest batch ack latency p50 (ms)", "tm.ingest.batch_p50_ms", "ingest.batch_p50_ms", 2)
    row("ingest batch ack latency p99 (ms)", "tm.ingest.batch_p99_ms", "ingest.batch_p99_ms", 2)
    sat = get("tm.quota.saturation_pairs_per_s")
    row("Reserve+Commit pairs/s at saturation (64 in flight)", "tm.quota.saturation_pairs_per_s",
        "quota.saturation_pairs_per_s",
        target=f"≥ 50,000 ({met(sat, lambda v: v >= 5e4)})")
    row("pair latency p50 at saturation (ms)", "tm.quota.saturation_p50_ms",
        "quota.saturation_p50_ms", 2)
    row("pair latency p99 at saturation (ms)", "tm.quota.saturation_p99_ms",
        "quota.saturation_p99_ms", 2)
    row("pair latency p50 at 10,000 pairs/s offered (ms)", "tm.quota.paced_p50_ms",
        "quota.paced_p50_ms", 3)
    p99 = get("tm.quota.paced_p99_ms")
    row("pair latency p99 at 10,000 pairs/s offered (ms)", "tm.quota.paced_p99_ms",
        "quota.paced_p99_ms", 3, target=f"≤ 1 ms ({met(p99, lambda v: v <= 1.0)})")
    def done_unfinished(system):
        prefix = system + ".quota.paced_"
        return f"{fmt(get(prefix + 'pairs'))} / {fmt(get(prefix + 'unfinished'))}"

    rows.append(("pairs completed / unfinished at 10,000/s offered", done_unfinished("tm"),
                 done_unfinished("redis_always"), "", done_unfinished("redis_everysec")))
    row("half-load phase: offered pairs/s (half of own saturation)", "tm.quota.half_rate",
        "quota.half_rate")
    row("pair latency p50 at half load (ms)", "tm.quota.half_p50_ms", "quota.half_p50_ms", 3)
    row("pair latency p99 at half load (ms)", "tm.quota.half_p99_ms", "quota.half_p99_ms", 3)
    row("peak RSS during ingest, VmHWM (MiB)", None, None, 1, tm_value=mib("tm.ingest.rss_kb"),
        redis_fn=lambda r: mib(r + ".ingest.rss_kb"))
    row("Redis used_memory_peak after ingest (MiB)", None, None, 1,
        redis_fn=lambda r: (get(r + ".ingest.used_memory_peak") or math.nan) / 2**20)
    row("peak RSS during quota, VmHWM (MiB)", None, None, 1, tm_value=mib("tm.quota.rss_kb"),
        redis_fn=lambda r: mib(r + ".quota.rss_kb"))
    row("disk bytes / 1M events, as-is while running "
        "(Redis: AOF dir after stop, after any auto-rewrite)", None, None,
        tm_value=per_million("tm.ingest.disk_running", "tm.ingest.events"),
        redis_fn=lambda r: per_million(r + ".ingest.aof_bytes", r + ".ingest.events"))
    row("disk bytes / 1M events, after clean stop", None, None,
        tm_value=per_million("tm.ingest.disk_stopped", "tm.ingest.events"))
    row("disk bytes / 1M events, after flush + full compaction", None, None,
        tm_value=per_million("tm.ingest.disk_compacted", "tm.ingest.events"))

    two_hop_rows(rows, row, get, mib, met, sidecar_rate, sidecar_fraction)

    header = ["metric", "tokenmeter", "redis (appendfsync always)", "target"]
    if everysec:
        header.append("redis (appendfsync everysec)")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        cells = list(r[:4]) + ([r[4]] if everysec else [])
        print("| " + " | ".join(cells) + " |")
    print()
    print("tokenmeter: aggregator flags as printed above (default --durability sync: ack after "
          "the WAL fsync, group-committed). Redis: --save \"\" --appendonly yes, appendfsync as "
          "per column. Drivers, servers and any other load share the machine's cores.")
    print("Rows marked [2 hops]: tokenmeter = client -> tokenmeter-sidecar (Report answered after "
          "the fsync of its local queue) -> shard (ack after its WAL fsync); Redis = RPUSH to a "
          "local Redis, relayed (LRANGE, the ingest commands, LTRIM) to a central Redis, both with "
          "the column's appendfsync. Rows marked [via sidecar]: tokenmeter through the sidecar; "
          "Redis direct (a Redis deployment has no proxy hop), same phases and rates.")


def two_hop_rows(rows, row, get, mib, met, rate, fraction):
    """The rows of the two-hop benchmarks (client -> sidecar -> shard, and their Redis peers)."""
    def pair_text(prefix):
        return f"{fmt(get(prefix + '_p50_ms'), 3)} / {fmt(get(prefix + '_p99_ms'), 3)}"

    e2e = get("tm.sidecar_ingest.e2e_events_per_s")
    row("[2 hops] accepted events/s at the first hop (durable ack)",
        "tm.sidecar_ingest.accepted_events_per_s", "sidecar_ingest.accepted_events_per_s")
    row("[2 hops] end-to-end events/s (until the shard / central Redis counted all)",
        "tm.sidecar_ingest.e2e_events_per_s", "sidecar_ingest.e2e_events_per_s",
        target=f"≥ 500,000 ({met(e2e, lambda v: v >= 5e5)})")

    def accepted_counted(system):
        prefix = system + ".sidecar_ingest."
        drained = "" if get(prefix + "drained", 1) else " (NOT all counted)"
        return f"{fmt(get(prefix + 'accepted'))} / {fmt(get(prefix + 'counted'))}{drained}"

    rows.append(("[2 hops] events accepted / counted", accepted_counted("tm"),
                 accepted_counted("redis_always"), "", accepted_counted("redis_everysec")))
    row("[2 hops] Report (RPUSH) call latency p50 (ms)", "tm.sidecar_ingest.call_p50_ms",
        "sidecar_ingest.call_p50_ms", 2)
    row("[2 hops] Report (RPUSH) call latency p99 (ms)", "tm.sidecar_ingest.call_p99_ms",
        "sidecar_ingest.call_p99_ms", 2)
    row("[via sidecar] Reserve+Commit pairs/s at saturation (64 in flight)",
        "tm.sidecar_quota.saturation_pairs_per_s", "sidecar_quota.saturation_pairs_per_s")
    r = f"{rate:,.0f}"
    row(f"[via sidecar] Reserve latency p50 at {r} pairs/s offered (ms)",
        "tm.sidecar_quota.paced_reserve_p50_ms", "sidecar_quota.paced_reserve_p50_ms", 3)
    p99 = get("tm.sidecar_quota.paced_reserve_p99_ms")
    row(f"[via sidecar] Reserve latency p99 at {r} pairs/s offered (ms)",
        "tm.sidecar_quota.paced_reserve_p99_ms", "sidecar_quota.paced_reserve_p99_ms", 3,
        target=f"≤ 2 ms ({met(p99, lambda v: v <= 2.0)})")
    row(f"[via sidecar] Reserve+Commit pair latency p99 at {r} pairs/s offered (ms)",
        "tm.sidecar_quota.paced_p99_ms", "sidecar_quota.paced_p99_ms", 3)
    rows.append((f"[shard direct, no sidecar] Reserve latency p50 / p99 at {r} pairs/s offered "
                 "(ms)", pair_text("tm.shard_quota.paced_reserve"), "", "", ""))
    pct = f"pct{round(fraction * 100)}"
    row(f"[via sidecar] offered pairs/s at {fraction:.0%} of own saturation",
        f"tm.sidecar_quota.{pct}_rate", f"sidecar_quota.{pct}_rate")
    row(f"[via sidecar] Reserve latency p50 at {fraction:.0%} of saturation (ms)",
        f"tm.sidecar_quota.{pct}_reserve_p50_ms", f"sidecar_quota.{pct}_reserve_p50_ms", 3)
    p99 = get(f"tm.sidecar_quota.{pct}_reserve_p99_ms")
    row(f"[via sidecar] Reserve latency p99 at {fraction:.0%} of saturation (ms)",
        f"tm.sidecar_quota.{pct}_reserve_p99_ms", f"sidecar_quota.{pct}_reserve_p99_ms", 3,
        target=f"≤ 2 ms ({met(p99, lambda v: v <= 2.0)})")
    rows.append((f"[shard direct, no sidecar] Reserve latency p50 / p99 at {fraction:.0%} of own "
                 "saturation (ms)", pair_text(f"tm.shard_quota.{pct}_reserve"), "", "", ""))
    rows.append(("[shard direct, no sidecar] pairs/s at saturation / unfinished at "
                 f"{r}/s / at {fraction:.0%}",
                 " / ".join(fmt(get("tm.shard_quota." + k)) for k in
                            ("saturation_pairs_per_s", "paced_unfinished", pct + "_unfinished")),
                 "", "", ""))

    def unfinished(system):
        prefix = system + ".sidecar_quota."
        return " / ".join(fmt(get(prefix + phase + "_unfinished")) for phase in ("paced", pct))

    rows.append((f"[via sidecar] unfinished pairs at {r}/s / at {fraction:.0%} "
                 "(incl. sidecar fallback answers)", unfinished("tm"), unfinished("redis_always"),
                 "", unfinished("redis_everysec")))
    hwm = [mib("tm.sidecar_ingest.rss_kb"), mib("tm.sidecar_quota.rss_kb")]
    row("[2 hops] sidecar peak RSS during ingest, VmHWM (MiB; Redis: the local Redis)", None, None,
        1, tm_value=hwm[0], target=f"≤ 50 ({met(hwm[0], lambda v: v <= 50)})",
        redis_fn=lambda s: mib(s + ".sidecar_ingest.rss_kb"))
    row("[via sidecar] sidecar peak RSS over the Reserve+Commit run, VmHWM (MiB)", None, None, 1,
        tm_value=hwm[1], target=f"≤ 50 ({met(hwm[1], lambda v: v <= 50)})")
    idle = [v for v in (mib("tm.sidecar_ingest.idle_rss_kb"), mib("tm.sidecar_quota.idle_rss_kb"))
            if v is not None]
    idle_max = max(idle) if idle else None
    row("sidecar idle RSS, VmRSS 2 s after start (MiB; larger of two starts; Redis: local Redis)",
        None, None, 1, tm_value=idle_max, target=f"≤ 15 ({met(idle_max, lambda v: v <= 15)})",
        redis_fn=lambda s: mib(s + ".sidecar_ingest.idle_rss_kb"))
    anon = [v for v in (mib("tm.sidecar_ingest.idle_anon_kb"), mib("tm.sidecar_quota.idle_anon_kb"))
            if v is not None]
    row("  of which anonymous, RssAnon (MiB; the rest is mapped code of the binary and libraries)",
        None, None, 1, tm_value=max(anon) if anon else None,
        redis_fn=lambda s: mib(s + ".sidecar_ingest.idle_anon_kb"))


if __name__ == "__main__":
    main()
