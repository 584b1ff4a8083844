#!/usr/bin/python3
"""clickhouse-server's CPU per million rows for a variant of the `events` table: the same paced
inserts (default 150 of 80,000 rows, 0.6 s apart, like the worker's under load), counted from
the first insert until no merge has run for 8 s. Rows are generated once into `default.src`
with the traffic model's shapes.

usage: server.py PORT SERVER_PID VARIANT [PARTS ROWS_PER_PART INTERVAL_S]
(start a private server first: start-clickhouse.sh DIR PORT; its pid is in DIR/pid)"""
import subprocess, sys, time, os
port, pid, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parts = int(sys.argv[4]) if len(sys.argv) > 4 else 150
rows = int(sys.argv[5]) if len(sys.argv) > 5 else 80000
interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0.6
CLK = os.sysconf('SC_CLK_TCK')
def q(sql):
    return subprocess.run(["clickhouse-client", "--port", port, "--allow_experimental_low_cardinality_type=1", "-q", sql],
                          check=True, capture_output=True, text=True).stdout.strip()
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK
COLS = "event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, props_json, device_id"
BASE = """event_time DateTime, game_id LowCardinality(String), env LowCardinality(String), user_id String, session_id String,
 event LowCardinality(String), channel LowCardinality(String), platform LowCardinality(String), country FixedString(2),
 app_version String, event_id UUID, props_json String, device_id String DEFAULT '', ingested_at DateTime DEFAULT now()"""
KEY = "PARTITION BY toYYYYMM(event_time) ORDER BY (game_id, env, event_time, event, event_id)"
VARIANTS = {
    "replacing": f"({BASE}) ENGINE = ReplacingMergeTree() {KEY}",
    "collapsing": f"({BASE}, sign Int8 DEFAULT 1) ENGINE = CollapsingMergeTree(sign) {KEY}",
    "plain": f"({BASE}) ENGINE = MergeTree() {KEY}",
    "plain_novert": f"({BASE}) ENGINE = MergeTree() {KEY} SETTINGS enable_vertical_merge_algorithm = 0",
    "collapsing_novert": f"({BASE}, sign Int8 DEFAULT 1) ENGINE = CollapsingMergeTree(sign) {KEY} SETTINGS enable_vertical_merge_algorithm = 0",
    "nolowcard": f"({BASE.replace('LowCardinality(String)','String')}) ENGINE = ReplacingMergeTree() {KEY}",
    "nomerge": f"({BASE}) ENGINE = ReplacingMergeTree() {KEY} SETTINGS max_bytes_to_merge_at_max_space_in_pool = 1, max_bytes_to_merge_at_min_space_in_pool = 1, parts_to_throw_insert = 100000, parts_to_delay_insert = 100000",
}
total = parts * rows
if q("EXISTS TABLE default.src") != "1":
    q(f"CREATE TABLE default.src (n UInt64, {BASE}) ENGINE = MergeTree() ORDER BY n")
    ev = "['heartbeat','level_start','level_complete','level_fail','economy_earn','economy_spend','ad_impression','session_end','boss_killed','session_start']"
    for k in range(0, total, 1_000_000):
        q(f"""INSERT INTO default.src SELECT number AS n,
          toDateTime(1796000000 + intDiv(number, 130000)) AS event_time, 'perf-game', 'prod',
          concat('player-', toString(rand() % 100000)) AS user_id,
          concat('s-', toString(rand(1) % 10000000)) AS session_id,
          {ev}[1 + rand(2) % 10] AS event, 'store', ['android','ios','web'][1 + rand(3) % 3],
          ['US','BR','DE','JP','KR','IN','FR','MX'][1 + rand(4) % 8], '3.14.2', generateUUIDv4(),
          concat('{{"level":', toString(rand(5) % 60), ',"pad":"', '{'x' * 40}', '"}}'),
          concat('dev-', toString(rand(6) % 100000)), now()
          FROM numbers({k}, {min(1_000_000, total - k)})""")
q(f"DROP TABLE IF EXISTS default.t_{variant}")
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
nparts = q(f"SELECT count(), sum(rows) FROM system.parts WHERE table = 't_{variant}' AND active")
rowsz = q(f"SELECT formatReadableSize(sum(bytes_on_disk)) FROM system.parts WHERE table = 't_{variant}' AND active")
M = total / 1e6
print(f"{variant}: inserts {t1-t0:.1f}s cpu {c1-c0:.1f}s; settle {t2-t1:.1f}s cpu {c2-c1:.1f}s; total {(c2-c0)/M:.3f} s/M; parts,rows {nparts}; {rowsz}", flush=True)
q(f"DROP TABLE default.t_{variant}")
