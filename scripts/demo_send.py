#!/usr/bin/env python3
"""Sends signed batches of game events and payments to a running `croupier ingest`.

Usage: demo_send.py URL GAME SECRET [BATCHES]
Only the Python standard library is used, so any client can be checked against it.
"""
import base64, hashlib, hmac, http.client, json, random, sys, time, urllib.parse, uuid

EVENTS = ["session_start", "level_start", "level_complete", "level_fail", "economy_earn",
          "economy_spend", "heartbeat", "ad_impression", "boss_killed", "guild_joined"]


def signed_post(conn, path, game, secret, records):
    body = json.dumps(records, separators=(",", ":")).encode()
    ts = str(int(time.time()))
    nonce = uuid.uuid4().hex
    msg = f"{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()
    sig = base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()
    conn.request("POST", path, body, {"Content-Type": "application/json", "X-Game-Id": game,
                                      "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": sig})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def main():
    url, game, secret = sys.argv[1], sys.argv[2], sys.argv[3]
    batches = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    rng = random.Random(42)
    sent = accepted = 0
    for b in range(batches):
        now = int(time.time() * 1000)
        events = [{"ts": now, "game_id": game, "env": "prod", "event": rng.choice(EVENTS),
                   "user_id": f"u{rng.randrange(500)}", "session_id": f"s{b}", "platform": "ios",
                   "country": rng.choice(["US", "DE", "BR", "JP"]), "event_id": str(uuid.uuid4()),
                   "props": {"level": rng.randrange(1, 60)}} for _ in range(100)]
        status, text = signed_post(conn, "/api/ingest/events", game, secret, events)
        sent += len(events)
        if status == 202:
            accepted += json.loads(text)["accepted"]
        else:
            print(f"batch {b}: {status} {text}")
    payments = [{"ts": int(time.time()), "game_id": game, "env": "prod", "user_id": f"u{i}",
                 "order_id": f"o-{uuid.uuid4().hex[:12]}", "amount_cents": 99 + i, "currency": "USD",
                 "status": "success", "product_id": "gems_100"} for i in range(10)]
    status, text = signed_post(conn, "/api/ingest/payments", game, secret, payments)
    print(f"payments: {status} {text}")
    # A refused request, to show the error contract: the body's game is not the signer's.
    status, text = signed_post(conn, "/api/ingest/events", game, secret,
                               [{"ts": int(time.time()), "game_id": "someone-else", "env": "prod", "event": "login"}])
    print(f"wrong game: {status} {text}")
    print(f"events: sent {sent}, accepted {accepted}")
    return 0 if accepted == sent else 1


if __name__ == "__main__":
    sys.exit(main())
