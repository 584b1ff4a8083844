#!/usr/bin/env python3
"""redis-server's CPU per ingest request, by the shape of the request's transaction.

Starts a redis-server of its own (no persistence) on a free port, then sends N requests
of one 30,000-byte archive each, `depth` requests in flight (pipelined on one connection),
for each variant in turn, `rounds` times, and prints redis-server's CPU (user + system
from /proc/<pid>/stat) per request: median and every round. Each XADD trims with
`MAXLEN ~ 2000` so that the stream's memory is reused, as it is under trimming. Every
request has a nonce of its own, so the script always takes its append path.

Variants:
  xadd     the XADD alone (no nonce: a floor, not a protocol)
  set      MULTI, XADD, SET nonce NX EX, EXEC (no script: what an append without the
           script's checks would cost)
  eval     MULTI, XADD, EVAL <the ingest script> , EXEC: croupier's transaction for a
           request alone
  evalsha  the same with EVALSHA (Redis does not hash the script's text: what that costs)
  groupN   croupier's transaction for N requests waiting at once (N a number, e.g.
           group4): MULTI, the N requests' XADDs, one EVAL judging the N, EXEC; the
           figure is per request
  lease    redis.ingest_protocol = "lease": MULTI, TYPE, SET nonce NX GET EX, SET lease NX
           PX, PTTL, EXEC, then MULTI, XADD, SET nonce EX, DEL lease, EXEC (two round
           trips, sent here back to back; no script)

Neither protocol keeps the mean entry sizes per request (each shard merges its appends
into them once per backlog reading), so no variant does. The ingest script is read from
protocol/src/resp.rs (INGEST_SCRIPT). With `depth` requests in flight, a groupN variant
sends depth/N transactions at a time (N at most `depth`).

usage: transaction.py [--requests N] [--depth D] [--rounds R] [variant,...]
"""
import argparse
import hashlib
import os
import re
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESP_RS = os.path.join(HERE, '..', '..', 'protocol', 'src', 'resp.rs')
KEY = 'analytics:events'
ARCHIVE = os.urandom(30_000)


def script():
    src = open(RESP_RS).read()
    m = re.search(r'pub const INGEST_SCRIPT: &str = "\\\n(.*?)";\n', src, re.S)
    return m.group(1).replace('\\\n', '').replace('\\"', '"').encode()


def command(*args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)


def request(variant, tag, i, body):
    """The bytes of request `i` and the number of replies it is owed (a groupN variant
    sends its transaction with the group's first request, nothing with the others)."""
    nonce = f'croupier:nonce:bench:{tag}:{i}'
    digest = hashlib.sha256(f'{tag}:{i}'.encode()).digest()
    xadd = append(tag, i)
    if variant == 'xadd':
        return xadd, 1
    if variant.startswith('lease'):
        lease = f'{nonce}:lease'
        first = (command('MULTI') + command('TYPE', KEY) + command('SET', nonce, b'P' + digest, 'NX', 'GET', 'EX', '602')
                 + command('SET', lease, '1', 'NX', 'PX', '12000') + command('PTTL', lease) + command('EXEC'))
        second = command('MULTI') + xadd + command('SET', nonce, digest, 'EX', '602') + command('DEL', lease) + command('EXEC')
        return first + second, 6 + 5
    if variant == 'set':
        return command('MULTI') + xadd + command('SET', nonce, digest, 'NX', 'EX', '602') + command('EXEC'), 4
    n = int(variant[5:]) if variant.startswith('group') else 1
    if i % n:
        return b'', 0
    keys, args = [], []
    for j in range(i, i + n):
        keys += [f'croupier:nonce:bench:{tag}:{j}', KEY]
        args += [hashlib.sha256(f'{tag}:{j}'.encode()).digest(), '1', mark(tag, j)]
    head = ('EVALSHA', hashlib.sha1(body).hexdigest()) if variant == 'evalsha' else ('EVAL', body)
    ev = command(*head, str(len(keys)), *keys, '602', *args)
    xadds = b''.join(append(tag, j) for j in range(i, i + n))
    return command('MULTI') + xadds + ev + command('EXEC'), 3 + n


def mark(tag, i):
    """Request `i`'s mark (32 hexadecimal digits, as an ingest shard writes them)."""
    return '%016x%016x' % (hash(tag) & (2**64 - 1), i)


def append(tag, i):
    """Request `i`'s XADD, with its entry's fields as an ingest shard writes them."""
    return command('XADD', KEY, 'MAXLEN', '~', '2000', '*', 'fmt', 'rkyv1', 'n', '100', 'm', mark(tag, i),
                   'batch', ARCHIVE)


def skip_reply(buf, pos):
    """The end of the reply starting at `pos`, or None when it is not all in `buf`."""
    nl = buf.find(b'\r\n', pos)
    if nl < 0:
        return None
    kind, line = buf[pos:pos + 1], buf[pos + 1:nl]
    if kind == b'-':
        raise SystemExit(f'error reply: {bytes(line)!r}')
    if kind == b'+' and line == b'DUPLICATE':
        raise SystemExit('the script took the duplicate path: a variant reused nonces')
    if kind in (b'+', b':'):
        return nl + 2
    if kind == b'$':
        n = int(line)
        end = nl + 2 + max(n, 0) + (2 if n >= 0 else 0)
        return end if end <= len(buf) else None
    if kind == b'*':
        p = nl + 2
        for _ in range(max(int(line), 0)):
            p = skip_reply(buf, p)
            if p is None:
                return None
        return p
    raise SystemExit(f'unexpected reply {bytes(buf[pos:pos + 40])!r}')


def cpu_seconds(pid):
    fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def run(variant, tag, n, depth, port, pid, body):
    s = socket.create_connection(('127.0.0.1', port))
    before = cpu_seconds(pid)
    done = 0
    while done < n:
        batch = [request(variant, tag, i, body) for i in range(done, min(n, done + depth))]
        s.sendall(b''.join(r for r, _ in batch))
        owed = sum(k for _, k in batch)
        buf, pos = bytearray(), 0
        while owed:
            buf += s.recv(1 << 20)
            while owed:
                end = skip_reply(buf, pos)
                if end is None:
                    break
                pos, owed = end, owed - 1
        done += len(batch)
    s.close()
    return (cpu_seconds(pid) - before) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('variants', nargs='?', default='xadd,set,eval,evalsha,group2,group4,group8,lease')
    ap.add_argument('--requests', type=int, default=30_000)
    ap.add_argument('--depth', type=int, default=8)
    ap.add_argument('--rounds', type=int, default=5)
    a = ap.parse_args()
    body = script()
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(['redis-server', '--port', str(port), '--save', '', '--appendonly', 'no',
                               '--dir', '/tmp'], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', port)).close()
                break
            except OSError:
                time.sleep(0.05)
        with socket.create_connection(('127.0.0.1', port)) as s:
            s.sendall(command('SCRIPT', 'LOAD', body))
            s.recv(1 << 16)
        variants = a.variants.split(',')
        runs = {v: [] for v in variants}
        for r in range(a.rounds):
            for v in variants:
                runs[v].append(run(v, f'{r}:{v}', a.requests, a.depth, port, server.pid, body))
        print(f'redis-server CPU µs per request ({a.requests} requests of a {len(ARCHIVE)}-byte archive, '
              f'{a.depth} in flight, {a.rounds} rounds)')
        for v in variants:
            xs = sorted(runs[v])
            print(f'{v:8s} median {xs[len(xs) // 2]:6.1f}   rounds {", ".join(f"{x:.1f}" for x in runs[v])}')
    finally:
        server.kill()
        server.wait()


if __name__ == '__main__':
    main()
