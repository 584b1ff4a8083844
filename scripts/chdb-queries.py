#!/usr/bin/env python3
"""Runs SQL on a current ClickHouse engine in-process (PyPI chdb-core, ClickHouse 26.x):
croupier's migration statements (twice: idempotent), then the tables' rows from
TabSeparated files, then each query, printing its TabSeparated result.

    python3 scripts/chdb-queries.py DIR

DIR holds <table>.tsv for each table of the analytics schema to load (the columns named
in <table>.cols), queries.sql (one query per line) and, optionally, after_load.sql
(statements run once the rows are loaded, one per line: what fills the tables no view
fills, such as user_days, which the worker writes). Results go to DIR/results.txt,
each query's rows followed by a line `--end--`. Used by the integration test
analytics_queries_agree_on_a_current_engine and grafana_business_board_sql_is_exact_on_clickhouse,
which compare them with ClickHouse 18.16's.
"""
import os
import re
import sys

from chdb import session

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
src = open(os.path.join(root, 'dataplane', 'src', 'clickhouse', 'schema.rs')).read()
start = src.index('pub const STATEMENTS')
block = src[start:src.index('];', start)]
stmts = [s.replace('\\"', '"') for s in re.findall(r'"((?:[^"\\]|\\.)*)"', block, re.S)]

d = sys.argv[1]
s = session.Session()
s.query("SELECT 1")
for st in stmts + stmts:
    s.query(st)
tables = sorted(f[:-len('.cols')] for f in os.listdir(d) if f.endswith('.cols'))
for table in tables:
    cols = open(os.path.join(d, table + '.cols')).read().strip()
    types = {}
    for line in str(s.query(f"SELECT name, type FROM system.columns WHERE database = 'analytics' AND table = '{table}'", 'TSV')).splitlines():
        n, t = line.split('\t')
        types[n] = t
    structure = ', '.join(f"{c.strip()} {types[c.strip()]}" for c in cols.split(','))
    path = os.path.join(d, table + '.tsv')
    if os.path.getsize(path) > 0:
        s.query(f"INSERT INTO analytics.{table} ({cols}) SELECT * FROM file('{path}', 'TabSeparated', '{structure}')")
after = os.path.join(d, 'after_load.sql')
if os.path.exists(after):
    for st in open(after).read().splitlines():
        if st.strip():
            s.query(st)
out = []
for q in open(os.path.join(d, 'queries.sql')).read().splitlines():
    if q.strip():
        out.append(str(s.query(q + " FORMAT TabSeparated", 'TabSeparated')).rstrip('\n'))
        out.append('--end--')
open(os.path.join(d, 'results.txt'), 'w').write('\n'.join(out) + '\n')
print(s.query("SELECT version()", 'TSV'))
