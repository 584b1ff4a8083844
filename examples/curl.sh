#!/bin/sh
# Sends two signed events with curl; the signature computed with openssl (README, Ingest API):
# base64(HMAC-SHA256(secret, ts + "\n" + nonce + "\n" + hex(sha256(body)))).
URL=${CROUPIER_URL:-http://127.0.0.1:8080} GAME=${CROUPIER_GAME:-demo-game} SECRET=${CROUPIER_SECRET:-change-me}
ts=$(date +%s)
nonce=$(openssl rand -hex 16)
body='[{"ts":'$ts',"game_id":"'$GAME'","env":"prod","event":"register","user_id":"curl-user"},
{"ts":'$ts',"game_id":"'$GAME'","env":"prod","event":"login","user_id":"curl-user","platform":"web"}]'
digest=$(printf '%s' "$body" | openssl dgst -sha256 -hex | sed 's/^.*= //')
signature=$(printf '%s\n%s\n%s' "$ts" "$nonce" "$digest" | openssl dgst -sha256 -hmac "$SECRET" -binary | openssl base64 -A)
curl -sS -w ' %{http_code}\n' "$URL/api/ingest/events" -H 'Content-Type: application/json' \
  -H "X-Game-Id: $GAME" -H "X-Timestamp: $ts" -H "X-Nonce: $nonce" -H "X-Signature: $signature" \
  --data-binary "$body"
