// Sends two signed events to croupier (Node.js 18+, no packages).
const crypto = require("node:crypto");
const URL = process.env.CROUPIER_URL || "http://127.0.0.1:8080";
const GAME = process.env.CROUPIER_GAME || "demo-game", SECRET = process.env.CROUPIER_SECRET || "change-me";

async function send(path, records) {
  const body = JSON.stringify(records);
  const ts = String(Math.floor(Date.now() / 1000)), nonce = crypto.randomUUID();
  const digest = crypto.createHash("sha256").update(body).digest("hex");
  const signature = crypto.createHmac("sha256", SECRET).update(`${ts}\n${nonce}\n${digest}`).digest("base64");
  const res = await fetch(URL + path, {
    method: "POST", body,
    headers: { "Content-Type": "application/json", "X-Game-Id": GAME, "X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": signature },
  });
  return `${res.status} ${await res.text()}`; // 202 {"accepted":2}, or the JSON error
}

const now = Date.now();
const events = ["register", "login"].map((event) => ({ ts: now, game_id: GAME, env: "prod", event, user_id: "js-user", event_id: crypto.randomUUID() }));
send("/api/ingest/events", events).then(console.log, (e) => { console.error(e); process.exitCode = 1; });
