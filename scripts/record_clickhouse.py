#!/usr/bin/env python3
"""Records server responses of a real clickhouse-server (native protocol, revision 54412)
into protocol/tests/data/, for the decoder's tests. Usage: record_clickhouse.py PORT.
Packets are built here independently of the Rust encoder."""
import socket, sys, time, os

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

def hello():
    return varint(0) + s("recorder") + varint(18) + varint(16) + varint(REV) + s("default") + s("default") + s("")

def query(sql, compression):
    p = varint(1) + s("rec-1")
    p += bytes([1]) + s("") + s("rec-1") + s("[::ffff:127.0.0.1]:0") + bytes([1]) + s("") + s("") + s("recorder")
    p += varint(18) + varint(16) + varint(REV) + s("") + varint(1)
    p += s("")  # no settings
    p += varint(2) + varint(compression) + s(sql)
    return p

def empty_block():
    return varint(1) + bytes([0]) + varint(2) + (-1).to_bytes(4, "little", signed=True) + varint(0) + varint(0) + varint(0)

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

def main():
    port = int(sys.argv[1])
    out = os.path.join(os.path.dirname(__file__), "..", "protocol", "tests", "data")
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(hello())
    open(os.path.join(out, "hello_18_16.bin"), "wb").write(read_for(c, 1.0))
    c.sendall(query("INSERT INTO default.no_such_table VALUES", 0) + varint(2) + s("") + empty_block())
    open(os.path.join(out, "exception_unknown_table.bin"), "wb").write(read_for(c, 1.0))
    c.sendall(query("CREATE TABLE IF NOT EXISTS default.rec (a UInt32, b String) ENGINE = Memory", 0) + varint(2) + s("") + empty_block())
    open(os.path.join(out, "ddl_end_of_stream.bin"), "wb").write(read_for(c, 1.0))
    c.sendall(query("INSERT INTO default.rec (a, b) VALUES", 0) + varint(2) + s("") + empty_block())
    open(os.path.join(out, "insert_header.bin"), "wb").write(read_for(c, 1.0))
    c.close()

if __name__ == "__main__":
    main()
