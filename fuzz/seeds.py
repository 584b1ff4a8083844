#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/ (docs/fuzzing.md).

HTTP requests, chunked bodies and JSON bodies are written from the shapes the tests use;
Redis replies and ClickHouse packets are recorded from a redis-server and a
clickhouse-server started here on loopback ports (skipped, with a message, when a server
is not installed). Batch archives are written by the Rust encoder: `cargo nextest run -p
croupier-it --run-ignored only -E 'test(write_batch_seeds)'`.

Usage: fuzz/seeds.py [target ...]   (default: every target but batch_entry)
"""
import gzip, os, shutil, socket, subprocess, sys, tempfile, time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- HTTP -------------------------------------------------------------------------------

SIGNED = ("X-Game-Id: g1\r\nX-Timestamp: 1795617749\r\nX-Nonce: 3f1e9c2a7b5d4e60\r\n"
          "X-Signature: 9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d\r\n")
EVENTS = (b'[{"ts":"2026-11-25T14:42:29Z","game_id":"g1","env":"prod","event":"login","user_id":"u1",'
          b'"country":"us","props":{"level":3}}]')


def chunked(body, sizes):
    out, i = b"", 0
    for n in sizes:
        out += b"%x\r\n" % n + body[i:i + n] + b"\r\n"
        i += n
    if i < len(body):
        out += b"%x\r\n" % (len(body) - i) + body[i:] + b"\r\n"
    return out + b"0\r\n\r\n"


def http():
    post = "POST /api/ingest/events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    gz = gzip.compress(EVENTS, mtime=0)
    seeds = {
        "post_events_length": (post + SIGNED + "Content-Length: %d\r\n\r\n" % len(EVENTS)).encode() + EVENTS,
        "post_events_chunked": (post + SIGNED + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(EVENTS, [7, 30]),
        "post_events_gzip": (post + SIGNED + "Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz)).encode() + gz,
        "post_events_gzip_chunked": (post + SIGNED + "Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        + chunked(gz, [10]),
        "post_payments": ("POST /api/ingest/payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + SIGNED
                          + "Content-Length: 2\r\n\r\n[]"),
        "post_expect_continue": post + SIGNED + "Expect: 100-continue\r\nContent-Length: 2\r\n\r\n[]",
        "post_connection_close": post + "Connection: close\r\nContent-Length: 0\r\n\r\n",
        "get_healthz": "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n",
        "get_readyz_http10": "GET /readyz HTTP/1.0\r\n\r\n",
        "get_metrics_keepalive_10": "GET /metrics?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "head_healthz": "HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        "options_star": "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "pipelined_two": "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\n",
        "get_with_body": "GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "smuggle_cl_te": "POST /api/ingest/events HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two_content_lengths": "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "same_content_lengths": "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "te_gzip_chunked": "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "bad_content_length": "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "partial_head": "POST /api/ingest/events HTTP/1.1\r\nHost: t\r\n",
        "non_utf8_header": b"POST / HTTP/1.1\r\nX-Game-Id: \xff\xfe\r\nContent-Length: 1\r\n\r\nx",
        "content_encoding_br": post + "Content-Encoding: br\r\nContent-Length: 2\r\n\r\n[]",
        "c1_chunk_size_near_u64_max": "POST /api/ingest/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      "5\r\nhello\r\nFFFFFFFFFFFFFFFE\r\n",
        "chunked_trailers": "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n0\r\nX-T: 1\r\n\r\n",
    }
    for name, data in seeds.items():
        write("http_request", name, data)
    # http_chunks: [limit pick][bytes per read] + chunked body. Limit picks: 1 = 64 KiB,
    # 2 = unlimited, 3 = none, 0/4/8.. = that many bytes.
    chunks = {
        "wikipedia": (1, 5, b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n"),
        "wikipedia_next_request": (2, 3, b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        "trailers": (1, 7, b"3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"),
        "upper_hex": (1, 2, b"A\r\n0123456789\r\n0\r\n\r\n"),
        "over_limit": (8, 4, b"a\r\n0123456789\r\n0\r\n\r\n"),
        "zero_limit": (3, 1, b"1\r\nx\r\n0\r\n\r\n"),
        "bad_size": (1, 1, b"zz\r\n"),
        "missing_crlf": (1, 1, b"1\r\nab\r\n"),
        "incomplete": (1, 3, b"10\r\n0123456"),
        "empty_body": (1, 1, b"0\r\n\r\n"),
        "events_json": (1, 16, chunked(EVENTS, [1, 2, 40])),
        "gzip_body": (1, 9, chunked(gzip.compress(EVENTS, mtime=0), [5, 5])),
        "leading_zeros": (1, 4, b"0004\r\nWiki\r\n000\r\n\r\n"),
        "whitespace_ext": (1, 4, b"4 ; a=b\r\nWiki\r\n0\r\n\r\n"),
        "c1_size_near_u64_max": (1, 6, b"5\r\nhello\r\nFFFFFFFFFFFFFFFE\r\n"),
        "c1_size_near_u64_max_unlimited": (2, 6, b"5\r\nhello\r\nFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n"),
        "long_extension": (1, 200, b"1;" + b"e" * 4100 + b"\r\nx\r\n0\r\n\r\n"),
        "long_trailers": (1, 100, b"0\r\n" + b"T: v\r\n" * 1400 + b"\r\n"),
    }
    for name, (limit, step, body) in chunks.items():
        write("http_chunks", name, bytes([limit, step]) + body)


# --- JSON -------------------------------------------------------------------------------

def json_seeds():
    ev = ('{"ts":"2026-11-25T14:42:29Z","game_id":"g1","env":"prod","event":"login","user_id":"u1",'
          '"session_id":"s1","device_id":"d1","channel":"appstore","platform":"ios","country":"us",'
          '"app_version":"1.2.3","event_id":"6f1c2b9e-0d3a-4c1e-9a57-2f4b8e6d1c03","props":{"a":[1,2],"b":"x"}}')
    pay = ('{"ts":1795617749,"game_id":"g1","env":"prod","user_id":"u1","order_id":"o-1","amount_cents":999,'
           '"currency":"USD","status":"success","country":"DE","region":"BY","city":"Munich","product_id":"gems",'
           '"channel":"appstore","platform":"ios"}')
    events = {
        "full_event": "[" + ev + "]",
        "events_object": '{"events":[' + ev + ',{"ts":1795617749000,"game_id":"g1","env":"dev","event":"boss_killed"}]}',
        "custom_and_standard": '[{"ts":1795617749,"game_id":"g1","env":"prod","event":"boss_killed"},'
                               '{"ts":"1795617749000","game_id":"g1","env":"prod","event":"session.start"}]',
        "ts_float": '[{"ts":1795617749.25,"game_id":"g1","env":"p","event":"e"}]',
        "ts_space_format": '[{"ts":"2026-11-25 14:42:29","game_id":"g1","env":"p","event":"e"}]',
        "ts_offset": '[{"ts":"2026-11-25T14:42:29.123+05:30","game_id":"g1","env":"p","event":"e"}]',
        "ts_out_of_range": '[{"ts":"1999-12-31T23:59:59Z","game_id":"g1","env":"p","event":"e"}]',
        "wrong_game": '[{"ts":1795617749,"game_id":"g2","env":"p","event":"e"}]',
        "missing_env": '[{"ts":1795617749,"game_id":"g1","event":"e"}]',
        "null_fields": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","user_id":null,"props":null}]',
        "props_not_object": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","props":[1]}]',
        "props_escapes": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","props":{"s":"\\u00e9\\n\\"\\\\","u":"\\ud83d\\ude00"}}]',
        "props_lone_surrogate": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","props":{"s":"\\ud800"}}]',
        "props_deep": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","props":{"a":{"b":{"c":{"d":[[[1]]]}}}}}]',
        "too_deep": "[" * 20 + "]" * 20,
        "bad_uuid": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","event_id":"nope"}]',
        "bad_country": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"e","country":"zz"}]',
        "duplicate_keys": '[{"ts":1795617749,"game_id":"g1","game_id":"g2","env":"p","event":"e"}]',
        "empty_array": "[]",
        "not_a_batch": '"events"',
        "malformed": '[{"ts":1795617749,',
        "invalid_utf8": b'[{"ts":1795617749,"game_id":"g1","env":"\xff","event":"e"}]',
        "long_event_name": '[{"ts":1795617749,"game_id":"g1","env":"p","event":"' + "e" * 129 + '"}]',
        "numbers": '[{"ts":-1,"game_id":"g1","env":"p","event":"e","props":{"n":1e308,"m":-0.0,"i":18446744073709551615}}]',
    }
    for name, body in events.items():
        body = body if isinstance(body, bytes) else body.encode()
        write("json_envelope", "events_" + name, b"\x00" + body)
    payments = {
        "one": "[" + pay + "]",
        "refunded_object": '{"events":[' + pay.replace("success", "refunded") + "]}",
        "zero_amount": "[" + pay.replace("999", "0") + "]",
        "negative_amount": "[" + pay.replace("999", "-5") + "]",
        "float_amount": "[" + pay.replace("999", "9.5") + "]",
        "huge_amount": "[" + pay.replace("999", "18446744073709551615") + "]",
        "lower_currency": "[" + pay.replace("USD", "usd") + "]",
        "bad_status": "[" + pay.replace("success", "ok") + "]",
    }
    for name, body in payments.items():
        write("json_envelope", "payments_" + name, b"\x01" + body.encode())
    write("json_envelope", "event_object", b"\x02" + ev.replace('"g1"', '"other-game"').encode())
    write("json_envelope", "event_object_without_id", b"\x02" + b'{"ts":1795617749,"game_id":"g9","env":"p","event":"e"}')
    write("json_envelope", "event_object_array", b"\x02" + ("[" + ev + "]").encode())
    write("json_envelope", "payment_object", b"\x03" + pay.encode())
    write("json_envelope", "payment_object_failed", b"\x03" + pay.replace("success", "failed").encode())


# --- servers ----------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def read_for(sock, seconds):
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


# --- Redis ------------------------------------------------------------------------------

def resp_command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def redis_seeds():
    if not shutil.which("redis-server"):
        print("seeds: redis-server not installed; Redis replies not recorded")
        return
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="croupier-seeds-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--daemonize", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        c = socket.create_connection(("127.0.0.1", port))

        def rec(name, *cmds):
            c.sendall(b"".join(resp_command(*cmd) for cmd in cmds))
            write("resp_replies", name, read_for(c, 0.3))

        s = "analytics:events"
        rec("ping", ["PING"])
        rec("set_ok", ["SET", "k", "v"])
        rec("get_bulk", ["GET", "k"])
        rec("get_nil", ["GET", "missing"])
        rec("incr_integer", ["INCR", "n"])
        rec("unknown_command_error", ["NOSUCH"])
        rec("wrong_type_error", ["LPUSH", "k", "x"])
        rec("big_bulk", ["SET", "big", "x" * 3000], ["GET", "big"])
        rec("empty_array", ["XRANGE", "nostream", "-", "+"])
        rec("xgroup_create", ["XGROUP", "CREATE", s, "analytics-workers", "0", "MKSTREAM"])
        rec("xgroup_busygroup", ["XGROUP", "CREATE", s, "analytics-workers", "0", "MKSTREAM"])
        for i in range(3):
            c.sendall(resp_command("XADD", s, "*", "fmt", "rkyv1", "n", "2", "batch", bytes(range(40)) + b"\r\n\x00"))
            read_for(c, 0.1)
        c.sendall(resp_command("XADD", s, "*", "data", '{"ts":1795617749,"game_id":"g","env":"p","event":"e"}'))
        read_for(c, 0.1)
        rec("xadd_id", ["XADD", s, "MAXLEN", "~", "1000", "*", "fmt", "rkyv1", "n", "1", "batch", "abc"])
        rec("xrange", ["XRANGE", s, "-", "+"])
        rec("xreadgroup", ["XREADGROUP", "GROUP", "analytics-workers", "w1", "COUNT", "3", "STREAMS", s, ">"])
        rec("xreadgroup_nothing_new", ["XREADGROUP", "GROUP", "analytics-workers", "w1", "COUNT", "3", "STREAMS", s, ">"])
        rec("xpending", ["XPENDING", s, "analytics-workers", "-", "+", "10"])
        rec("xautoclaim", ["XAUTOCLAIM", s, "analytics-workers", "w2", "0", "0-0", "COUNT", "10"])
        rec("xinfo_groups", ["XINFO", "GROUPS", s])
        rec("xinfo_groups_no_key", ["XINFO", "GROUPS", "nostream"])
        rec("xack", ["XACK", s, "analytics-workers", "0-1"])
        rec("xlen", ["XLEN", s])
        rec("hset_hgetall", ["HSET", "croupier:entry-events", s, "12.5"], ["HGETALL", "croupier:entry-events"])
        script = ("if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then "
                  "return redis.error_reply('REPLAY nonce already used') end "
                  "return {redis.call('XADD', KEYS[2], '*', 'n', '1'), redis.call('XADD', KEYS[2], '*', 'n', '2')}")
        rec("eval_ids", ["EVAL", script, "2", "nonce:1", "s2", "600"])
        rec("eval_replay", ["EVAL", script, "2", "nonce:1", "s2", "600"])
        rec("eval_nested", ["EVAL", "return {1, {2, {3, {'a', {}}}}, 'b', false}", "0"])
        rec("eval_error", ["EVAL", "return redis.call('NOSUCH')", "0"])
        rec("multi_exec", ["MULTI"], ["INCR", "n"], ["GET", "k"], ["EXEC"])
        rec("pipelined_mixed", ["PING"], ["GET", "missing"], ["INCR", "n"], ["NOSUCH"], ["XLEN", s])

        def get_bulk(key):
            c.sendall(resp_command("GET", key))
            raw = read_for(c, 0.3)
            head, _, rest = raw.partition(b"\r\n")
            return rest[:int(head[1:])]

        # HyperLogLog strings as Redis writes them: sparse, sparse with long runs and
        # values, dense (PFDEBUG TODENSE), merged, and with the cached count current.
        for name, n in [("sparse_3", 3), ("sparse_200", 200), ("pfadd_2000_dense", 2000)]:
            c.sendall(resp_command("PFADD", "h:" + name, *["e%d" % i for i in range(n)]))
            read_for(c, 0.2)
            write("hll_redis_string", name, get_bulk("h:" + name))
        c.sendall(resp_command("PFADD", "h:dense", *["d%d" % i for i in range(5000)]))
        read_for(c, 0.2)
        c.sendall(resp_command("PFCOUNT", "h:dense"))
        read_for(c, 0.1)
        write("hll_redis_string", "dense_5000_counted", get_bulk("h:dense"))
        c.sendall(resp_command("PFADD", "h:small", "a", "b"))
        c.sendall(resp_command("PFDEBUG", "TODENSE", "h:small"))
        read_for(c, 0.2)
        write("hll_redis_string", "dense_2_stale", get_bulk("h:small"))
        c.sendall(resp_command("PFMERGE", "h:merged", "h:sparse_200", "h:sparse_3"))
        read_for(c, 0.2)
        write("hll_redis_string", "merged_sparse", get_bulk("h:merged"))
        c.sendall(resp_command("PFADD", "h:empty"))
        read_for(c, 0.2)
        write("hll_redis_string", "empty", get_bulk("h:empty"))
        c.close()
    except Exception as e:
        print("seeds: Redis replies not recorded: %s" % e)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    # Shapes a server rarely sends but may.
    hand = {
        "negative_lengths": b"$-1\r\n*-1\r\n",
        "deep_nesting_64": b"*1\r\n" * 64 + b":1\r\n",
        "empty_bulk": b"$0\r\n\r\n",
        "bulk_with_crlf": b"$4\r\na\r\nb\r\n",
        "integer_min": b":-9223372036854775808\r\n",
    }
    for name, data in hand.items():
        write("resp_replies", name, data)
    head = b"HYLL\x01\x00\x00\x00" + b"\x00" * 7 + b"\x80"
    hll = {
        "bad_magic": b"HYLX" + head[4:] + b"\x7f\xff",
        "unknown_encoding": b"HYLL\x02" + head[5:],
        "dense_short": b"HYLL\x00" + head[5:] + b"\x00" * 100,
        "sparse_too_few": head + b"\x7f\xff" * 0 + b"\x40\x10",
        "sparse_too_many": head + b"\x7f\xff\x7f\xff",
        "sparse_values": head + b"\x80\xff\x83\x7f\xf7",
        "header_only": head,
    }
    for name, data in hll.items():
        write("hll_redis_string", name, data)


# --- ClickHouse -------------------------------------------------------------------------

def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s(x):
    x = x.encode() if isinstance(x, str) else x
    return varint(len(x)) + x


REV = 54412
CLIENT_REVISION_PICK = 7  # index of 54412 in fuzzing::REVISIONS


def ch_hello():
    return varint(0) + s("seeds") + varint(18) + varint(16) + varint(REV) + s("default") + s("default") + s("")


def ch_query(sql, compression, settings=b""):
    p = varint(1) + s("seed-1")
    p += bytes([1]) + s("") + s("seed-1") + s("[::ffff:127.0.0.1]:0") + bytes([1]) + s("") + s("") + s("seeds")
    p += varint(18) + varint(16) + varint(REV) + s("") + varint(1)
    p += settings + s("")
    p += varint(2) + varint(compression) + s(sql)
    return p


def ch_empty_block(compression):
    block = varint(1) + bytes([0]) + varint(2) + (-1).to_bytes(4, "little", signed=True) + varint(0) + varint(0) + varint(0)
    if not compression:
        return varint(2) + s("") + block
    # Method "none" frames need no LZ4 here; the server checks the CityHash, which this
    # script cannot compute, so compressed queries send no block.
    return None


def through_proxy(server_port, command, stdin):
    """Runs `command` (clickhouse-client) through a loopback proxy; returns what the server sent."""
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    got = []

    def relay(src, dst, keep):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if keep:
                    got.append(b)
                dst.sendall(b)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve():
        conn, _ = lsock.accept()
        up = socket.create_connection(("127.0.0.1", server_port))
        t = threading.Thread(target=relay, args=(conn, up, False))
        t.start()
        relay(up, conn, True)
        t.join()
        conn.close()
        up.close()

    th = threading.Thread(target=serve)
    th.start()
    cmd = command + ["--port", str(port)]
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    th.join(10)
    lsock.close()
    return b"".join(got)


def clickhouse_seeds():
    if not shutil.which("clickhouse-server"):
        print("seeds: clickhouse-server not installed; ClickHouse packets not recorded")
        return
    tcp, http_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="croupier-seeds-ch-")
    config = f"""<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{tmp}/server.log</log><errorlog>{tmp}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host><tcp_port>{tcp}</tcp_port><http_port>{http_port}</http_port>
  <path>{tmp}/data/</path><tmp_path>{tmp}/tmp/</tmp_path><user_files_path>{tmp}/user_files/</user_files_path>
  <format_schema_path>{tmp}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config><default_profile>default</default_profile>
  <default_database>default</default_database><timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>"""
    users = """<?xml version="1.0"?>
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>"""
    open(os.path.join(tmp, "config.xml"), "w").write(config)
    open(os.path.join(tmp, "users.xml"), "w").write(users)
    proc = subprocess.Popen(["clickhouse-server", "--config-file=" + os.path.join(tmp, "config.xml")], cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(tcp, proc)
        time.sleep(0.5)
        recorded = {}

        def session(name_prefix, compression, queries):
            c = socket.create_connection(("127.0.0.1", tcp))
            c.sendall(ch_hello())
            recorded[name_prefix + "hello"] = (compression, read_for(c, 1.0))
            for name, sql, extra in queries:
                block = ch_empty_block(compression)
                msg = ch_query(sql, compression, extra) + (block if block is not None else b"")
                c.sendall(msg)
                recorded[name_prefix + name] = (compression, read_for(c, 1.5))
            c.sendall(varint(4))
            recorded[name_prefix + "pong"] = (compression, read_for(c, 0.5))
            c.close()

        logs = s("send_logs_level") + s("trace")
        plain = [
            ("ddl_end_of_stream", "CREATE TABLE IF NOT EXISTS default.rec (a UInt32, b String) ENGINE = Memory", b""),
            ("unknown_table_exception", "INSERT INTO default.no_such_table VALUES", b""),
            ("syntax_exception", "SELEC 1", b""),
            ("select_empty_result", "SELECT a, b FROM default.rec WHERE 0", b""),
            ("select_rows", "SELECT number FROM system.numbers LIMIT 3", b""),
            ("select_with_logs", "SELECT a FROM default.rec WHERE 0", logs),
            ("select_totals", "SELECT count() FROM default.rec WHERE 0 GROUP BY a WITH TOTALS", b""),
            # Last: the server then waits for the rows.
            ("insert_header", "INSERT INTO default.rec (a, b) VALUES", b""),
        ]
        session("plain_", 0, plain)
        client = shutil.which("clickhouse-client")
        if client:
            compressed = [
                ("select_empty_result", ["--query", "SELECT a, b FROM default.rec WHERE 0"], b""),
                ("select_rows", ["--query", "SELECT toString(number) AS s FROM system.numbers LIMIT 100"], b""),
                ("unknown_table_exception", ["--query", "SELECT * FROM default.no_such_table"], b""),
                ("insert_values", ["--query", "INSERT INTO default.rec FORMAT Values"], b"(1,'x'),(2,'y')"),
                ("select_with_logs", ["--send_logs_level", "trace", "--query", "SELECT count() FROM default.rec"], b""),
            ]
            for name, args, stdin in compressed:
                data = through_proxy(tcp, [client, "--host", "127.0.0.1", "--compression", "1"] + args, stdin)
                recorded["compressed_" + name] = (1, data)
        else:
            print("seeds: clickhouse-client not installed; compressed packets not recorded")
        for name, (compression, data) in recorded.items():
            if not data:
                continue
            pick = CLIENT_REVISION_PICK | (8 if compression else 0)
            write("clickhouse_packets", name, bytes([pick]) + data)
            # The compressed frame of a Data packet, resealed by the target (bit 4).
            at = data.find(b"\x04\x01\x00") + 1  # the Data packet after hello and pong
            if compression and at > 0 and len(data) > at + 27:
                size = int.from_bytes(data[at + 19:at + 23], "little")
                write("clickhouse_packets", name + "_frame", bytes([pick | 16]) + data[at + 18:at + 18 + size])
        c = socket.create_connection(("127.0.0.1", tcp))
        c.sendall(varint(0) + s("seeds") + varint(1) + varint(1) + varint(54001) + s("default") + s("default") + s(""))
        write("clickhouse_packets", "hello_old_client_revision", bytes([3]) + read_for(c, 1.0))
        c.close()
    except Exception as e:
        print("seeds: ClickHouse packets not recorded: %s" % e)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    # Shapes the server may send that a short session does not show.
    nested = varint(2) + (60).to_bytes(4, "little") + s("DB::Exception") + s("outer") + s("") + b"\x01" \
        + (1000).to_bytes(4, "little") + s("Poco::Exception") + s("inner") + s("trace") + b"\x00"
    write("clickhouse_packets", "nested_exception", bytes([CLIENT_REVISION_PICK]) + nested)
    progress = varint(3) + varint(10) + varint(1000) + varint(10) + varint(0) + varint(0)
    write("clickhouse_packets", "progress_old_revision", bytes([1]) + progress)
    profile = varint(6) + varint(3) + varint(1) + varint(24) + b"\x00" + varint(0) + b"\x00"
    write("clickhouse_packets", "profile_info", bytes([CLIENT_REVISION_PICK]) + profile + varint(5))
    table_columns = varint(11) + s("") + s("columns format version: 1\n2 columns:\n`a` UInt32\n`b` String\n")
    write("clickhouse_packets", "table_columns", bytes([CLIENT_REVISION_PICK]) + table_columns)
    # A sealed frame with method "none" around an empty block with two columns.
    block = varint(1) + b"\x00" + varint(2) + (-1).to_bytes(4, "little", signed=True) + varint(0) + varint(2) + varint(0) \
        + s("a") + s("UInt32") + s("b") + s("String")
    frame = b"\x02" + (9 + len(block)).to_bytes(4, "little") + len(block).to_bytes(4, "little") + block
    write("clickhouse_packets", "frame_method_none", bytes([CLIENT_REVISION_PICK | 8 | 16]) + frame)


# --- OTLP -------------------------------------------------------------------------------

def pb_varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80])
        n >>= 7
    return out + bytes([n])


def pb_len(field, data):
    return pb_varint(field << 3 | 2) + pb_varint(len(data)) + data


def pb_fixed64(field, n):
    return pb_varint(field << 3 | 1) + n.to_bytes(8, "little")


def pb_kv(key, any_value):
    return pb_len(1, key.encode()) + pb_len(2, any_value)


def pb_str(v):
    return pb_len(1, v.encode())


def pb_int(v):
    return pb_varint(3 << 3) + pb_varint(v & (2**64 - 1))


def pb_request(resource, records):
    rl = pb_len(1, b"".join(pb_len(1, pb_kv(k, v)) for k, v in resource))
    rl += pb_len(2, b"".join(pb_len(2, r) for r in records))
    return pb_len(1, rl)


def otlp_seeds():
    t = 1795617749123456789
    res = [("game.id", pb_str("g1")), ("deployment.environment.name", pb_str("prod")), ("service.version", pb_str("1.0"))]
    attrs = [("game.user_id", pb_str("u1")), ("game.session_id", pb_str("s1")), ("game.platform", pb_str("ios")),
             ("game.country", pb_str("de")), ("level", pb_int(3)),
             ("nested", pb_len(6, pb_len(1, pb_kv("a", pb_len(5, pb_len(1, pb_int(1)) + pb_len(1, pb_str("x")))))))]
    log = lambda name, extra=(): pb_fixed64(1, t) + pb_len(5, pb_str("body")) + b"".join(
        pb_len(6, pb_kv(k, v)) for k, v in list(attrs) + list(extra)) + pb_len(9, bytes(range(16))) \
        + pb_len(10, bytes(range(8))) + pb_fixed64(11, t) + pb_len(12, name.encode())
    span = lambda name, extra=(): pb_len(1, bytes(range(16))) + pb_len(2, bytes(range(8))) + pb_len(5, name.encode()) \
        + pb_fixed64(7, t) + pb_fixed64(8, t + 1000) + b"".join(pb_len(9, pb_kv(k, v)) for k, v in list(attrs) + list(extra))
    write("otlp_request", "pb_logs", b"\x00" + pb_request(res, [log("user.login"), log("boss_killed"), log("")]))
    write("otlp_request", "pb_logs_rejected", b"\x00" + pb_request(res, [log("user.login"), pb_fixed64(1, 5) + pb_len(12, b"x")]))
    write("otlp_request", "pb_logs_no_env", b"\x00" + pb_request(res[:1], [log("session.start")]))
    write("otlp_request", "pb_logs_other_game", b"\x00" + pb_request([("game.id", pb_str("g2"))] + res[1:], [log("session.start")]))
    write("otlp_request", "pb_spans", b"\x01" + pb_request(res, [span("session.start"), span("GET /"), span("boss.kill")]))
    pay = [("monetization.order_id", pb_str("o1")), ("monetization.price_usd", pb_fixed64(4, 0x4013f5c28f5c28f6))]
    write("otlp_request", "pb_spans_payment", b"\x01" + pb_request(res, [span("monetization.purchase_success", pay),
                                                                         span("monetization.purchase_fail", pay[:1])]))
    write("otlp_request", "pb_truncated", b"\x00" + pb_request(res, [log("user.login")])[:-3])
    write("otlp_request", "pb_empty", b"\x00")
    json_logs = ('{"resourceLogs":[{"resource":{"attributes":[{"key":"deployment.environment.name","value":{"stringValue":"prod"}}]},'
                 '"scopeLogs":[{"logRecords":[{"timeUnixNano":"%d","eventName":"user.login","traceId":"000102030405060708090a0b0c0d0e0f",'
                 '"spanId":"0001020304050607","body":{"stringValue":"b"},"attributes":[{"key":"game.user_id","value":{"stringValue":"u1"}},'
                 '{"key":"n","value":{"kvlistValue":{"values":[{"key":"a","value":{"arrayValue":{"values":[{"intValue":"1"},'
                 '{"doubleValue":2.5},{"boolValue":true},{"bytesValue":"AAE="}]}}}]}}}]}]}]}]}' % t)
    write("otlp_request", "json_logs", b"\x02" + json_logs.encode())
    json_spans = ('{"resourceSpans":[{"resource":{"attributes":[{"key":"deployment.environment","value":{"stringValue":"dev"}}]},'
                  '"scopeSpans":[{"spans":[{"traceId":"000102030405060708090a0b0c0d0e0f","spanId":"0001020304050607",'
                  '"name":"monetization.purchase_success","startTimeUnixNano":%d,"attributes":[{"key":"game.user_id",'
                  '"value":{"intValue":42}},{"key":"monetization.order_id","value":{"stringValue":"o9"}},'
                  '{"key":"amount_cents","value":{"intValue":"199"}},{"key":"currency","value":{"stringValue":"EUR"}}]}]}]}]}' % t)
    write("otlp_request", "json_spans", b"\x03" + json_spans.encode())
    write("otlp_request", "json_empty", b"\x02{}")


TARGETS = {"http_request": http, "http_chunks": http, "json_envelope": json_seeds, "otlp_request": otlp_seeds,
           "resp_replies": redis_seeds, "hll_redis_string": redis_seeds, "clickhouse_packets": clickhouse_seeds}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(TARGETS)
    done = set()
    for t in wanted:
        f = TARGETS.get(t)
        if f is None:
            sys.exit("seeds: unknown target %s (batch_entry seeds come from the Rust encoder)" % t)
        if f not in done:
            f()
            done.add(f)
