#!/usr/bin/python3
"""The same measurement as server.py in a current ClickHouse engine, in-process (PyPI
chdb-core): the process's CPU per million rows from the first insert until no merge has run
for 8 s, for each variant named, one after the other on one generated `default.src`.

usage: chdb.py VARIANT..."""
import sys, time, resource, shutil, os
from chdb import session
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
parts, rows, interval = 150, 80000, 0.6
COLS = "event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, props_json, device_id"
BASE = """event_time DateTime, game_id LowCardinality(String), env LowCardinality(String), user_id String, session_id String,
 event LowCardinality(String), channel LowCardinality(String), platform LowCardinality(String), country FixedString(2),
 app_version String, event_id UUID, props_json String, device_id String DEFAULT '', ingested_at DateTime DEFAULT now()"""
KEY = "PARTITION BY toYYYYMM(event_time) ORDER BY (game_id, env, event_time, event, event_id)"
VARIANTS = {
    "replacing": f"({BASE}) ENGINE = ReplacingMergeTree() {KEY}",
    "replacing_novert": f"({BASE}) ENGINE = ReplacingMergeTree() {KEY} SETTINGS enable_vertical_merge_algorithm = 0",
    "nolowcard": f"({BASE.replace('LowCardinality(String)','String')}) ENGINE = ReplacingMergeTree() {KEY}",
    "wide": f"({BASE}) ENGINE = ReplacingMergeTree() {KEY} SETTINGS min_bytes_for_wide_part = 0",
    "nomerge": f"({BASE}) ENGINE = ReplacingMergeTree() {KEY} SETTINGS max_bytes_to_merge_at_max_space_in_pool = 1, max_bytes_to_merge_at_min_space_in_pool = 1, parts_to_throw_insert = 100000, parts_to_delay_insert = 100000",
}
path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "croupier-merge-cost-chdb")
shutil.rmtree(path, ignore_errors=True)
s = session.Session(path)
q = lambda sql: s.query(sql, "TSV").bytes().decode().strip()
print("version", q("SELECT version()"), flush=True)
total = parts * rows
q(f"CREATE TABLE default.src (n UInt64, {BASE}) ENGINE = MergeTree() ORDER BY n")
ev = "['heartbeat','level_start','level_complete','level_fail','economy_earn','economy_spend','ad_impression','session_end','boss_killed','session_start']"
for k in range(0, total, 1_000_000):
    q(f"""INSERT INTO default.src SELECT number AS n,
      toDateTime(1796000000 + intDiv(number, 130000)), 'perf-game', 'prod',
      concat('player-', toString(rand() % 100000)), concat('s-', toString(rand(1) % 10000000)),
      {ev}[1 + rand(2) % 10], 'store', ['android','ios','web'][1 + rand(3) % 3],
      ['US','BR','DE','JP','KR','IN','FR','MX'][1 + rand(4) % 8], '3.14.2', generateUUIDv4(),
      concat('{{"level":', toString(rand(5) % 60), ',"pad":"', '{'x' * 40}', '"}}'),
      concat('dev-', toString(rand(6) % 100000)), now()
      FROM numbers({k}, {min(1_000_000, total - k)})""")
q("OPTIMIZE TABLE default.src FINAL")
time.sleep(3)
for variant in sys.argv[1:]:
    q(f"DROP TABLE IF EXISTS default.t_{variant} SYNC")
    q(f"CREATE TABLE default.t_{variant} {VARIANTS[variant]}")
    time.sleep(2)
    c0, t0 = cpu(), time.time()
    for k in range(parts):
        nxt = t0 + (k + 1) * interval
        q(f"INSERT INTO default.t_{variant} ({COLS}) SELECT {COLS} FROM default.src WHERE n >= {k*rows} AND n < {(k+1)*rows}")
        d = nxt - time.time()
        if d > 0: time.sleep(d)
    c1, t1 = cpu(), time.time()
    quiet = 0
    while quiet < 8 and time.time() - t1 < 240:
        m = int(q("SELECT count() FROM system.merges"))
        quiet = quiet + 1 if m == 0 else 0
        time.sleep(1)
    c2, t2 = cpu(), time.time()
    nparts = q(f"SELECT count(), sum(rows), formatReadableSize(sum(bytes_on_disk)) FROM system.parts WHERE table = 't_{variant}' AND active")
    M = total / 1e6
    print(f"{variant}: inserts {t1-t0:.1f}s cpu {c1-c0:.1f}s; settle {t2-t1:.1f}s cpu {c2-c1:.1f}s; total {(c2-c0)/M:.3f} s/M; parts {nparts}", flush=True)
    q(f"DROP TABLE default.t_{variant} SYNC")
