#!/usr/bin/env python3
"""Runs SQL statements in order on a current ClickHouse engine in-process (PyPI
chdb-core, ClickHouse 26.x) and writes each one's TabSeparated result.

    python3 scripts/chdb-run.py IN OUT

IN holds the statements, each ended by a line `;;`, or by a line `;; may fail` when the
statement threw on the server it was taken from (croupier's probes throw on purpose), so
an error here is expected too and written as `--error--`. OUT gets each result followed by
a line `--end--`. Used by the integration test
analytics_events_relayout_keeps_the_views_filling_on_a_current_engine, which replays there
the statements a migration sent to ClickHouse 18.16.
"""
import sys

from chdb import session

s = session.Session()
out = []
lines = []
for line in open(sys.argv[1]).read().split('\n'):
    if line not in (';;', ';; may fail'):
        lines.append(line)
        continue
    sql = '\n'.join(lines).strip()
    lines = []
    try:
        out.append(str(s.query(sql, 'TabSeparated')).rstrip('\n'))
    except Exception as e:  # noqa: BLE001 - the engine's own error, reported below
        if line == ';;':
            sys.exit(f"{sql[:400]}\n-> {e}")
        out.append('--error--')
    out.append('--end--')
open(sys.argv[2], 'w').write('\n'.join(out) + '\n')
