#!/usr/bin/env python3
"""Sends two signed events to croupier (Python's standard library only)."""
import base64, hashlib, hmac, json, os, time, urllib.error, urllib.request, uuid

URL = os.environ.get("CROUPIER_URL", "http://127.0.0.1:8080")
GAME, SECRET = os.environ.get("CROUPIER_GAME", "demo-game"), os.environ.get("CROUPIER_SECRET", "change-me")

def send(path, records):
    body = json.dumps(records).encode()
    ts, nonce = str(int(time.time())), uuid.uuid4().hex
    signed = f"{ts}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()
    sig = base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()).decode()
    headers = {"Content-Type": "application/json", "X-Game-Id": GAME, "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": sig}
    try:
        with urllib.request.urlopen(urllib.request.Request(URL + path, body, headers)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:  # 4xx/5xx: the JSON error says why
        return e.code, e.read().decode()

now = int(time.time() * 1000)
events = [{"ts": now, "game_id": GAME, "env": "prod", "event": e, "user_id": "py-user", "event_id": str(uuid.uuid4())} for e in ("register", "login")]
print(*send("/api/ingest/events", events))
