#!/usr/bin/env python3
"""Runs croupier's ClickHouse migration statements, the first-schema probe and the aggregate
writes against a current ClickHouse engine in-process (chdb-core), twice (idempotent).

CI runs ClickHouse 18.16 (the integration tests); this covers a current engine:
    python3 -m venv /tmp/chdb && /tmp/chdb/bin/pip install chdb-core
    /tmp/chdb/bin/python scripts/check-schema-chdb.py
"""
import os, re, sys
from chdb import session
src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'dataplane', 'src', 'clickhouse', 'schema.rs')).read()
block = src[src.index('pub const STATEMENTS'):src.index('];', src.index('pub const STATEMENTS'))]
stmts = re.findall(r'"((?:[^"\\]|\\.)*)"', block, re.S)
s = session.Session()
def q(sql, fmt="TSV"):
    return s.query(sql, fmt)
print(q("SELECT version()"))
for st in stmts:
    q(st)
for st in stmts:  # idempotent
    q(st)
# first-schema detection query returns no rows on the new tables
for t, e in [("minute_online","ReplacingMergeTree(version)"),("daily_users","ReplacingMergeTree(version)"),("daily_revenue","ReplacingMergeTree(version)"),("daily_online_peak","AggregatingMergeTree")]:
    r = q(f"SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' AND name = '{t}' AND engine_full NOT LIKE '{e}%') WHERE x != 0")
    assert str(r).strip() == "", (t, str(r))
try:
    q("SELECT * FROM (SELECT throwIf(count() > 0) AS x FROM system.tables WHERE database = 'analytics' AND name = 'payments' AND engine_full NOT LIKE 'ReplacingMergeTree(version)%') WHERE x != 0")
    sys.exit("the first-schema probe did not throw for payments")
except Exception as ex:
    print("throws as expected:", str(ex)[:120])
q("INSERT INTO analytics.minute_online (m, game_id, env, online, version) VALUES (toDateTime(1796207820), 'g', 'e', 5, 1), (toDateTime(1796207820), 'g', 'e', 7, 2)")
q("INSERT INTO analytics.daily_users (d, game_id, env, dau, new_users, payers, version) VALUES ('2026-12-02', 'g', 'e', 10, 2, 1, 1), ('2026-12-02', 'g', 'e', 12, 3, 1, 2)")
q("INSERT INTO analytics.payments (time, game_id, env, user_id, order_id, amount_cents, currency, status, channel, platform, country, region, city, product_id, reason) VALUES (toDateTime(1796207820),'g','e','u1','o1',100,'USD','success','','','US','','','',''),(toDateTime(1796207820),'g','e','u1','o1',100,'USD','success','','','US','','','',''),(toDateTime(1796207820),'g','e','u2','o2',50,'USD','refunded','','','US','','','',''),(toDateTime(1796207820),'g','e','u3','o3',7,'USD','failed','','','US','','','','')")
sql = "INSERT INTO analytics.daily_revenue (d, game_id, env, revenue_cents, refunds_cents, failed, version) SELECT toDate('2026-12-02') AS d, game_id, env, sumIf(amount_cents, status = 'success'), sumIf(amount_cents, status = 'refunded'), countIf(status = 'failed'), count() FROM analytics.payments FINAL WHERE game_id = 'g' AND env = 'e' AND time >= toDateTime(1796169600) AND time < toDateTime(1796256000) GROUP BY game_id, env"
q(sql); q(sql)
print(q("SELECT * FROM analytics.minute_online FINAL"))
print(q("SELECT d, game_id, env, maxMerge(peak_online) FROM analytics.daily_online_peak GROUP BY d, game_id, env"))
print(q("SELECT d, dau, new_users, payers, version FROM analytics.daily_users FINAL"))
print(q("SELECT * FROM analytics.daily_revenue FINAL"))
