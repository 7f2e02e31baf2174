#!/usr/bin/env python3
"""Prints the summary table of tests/bench/run.sh from its "RESULT <key> <value>" lines.

Usage: summary.py RESULTS_FILE [--everysec]
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


def main():
    values = load(sys.argv[1])
    everysec = "--everysec" in sys.argv[2:]
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


if __name__ == "__main__":
    main()
