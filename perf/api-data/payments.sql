-- 3,000,000 payments (85 % success, 8 % failed, 7 % refunded) of 400,000 payers, then
-- analytics.user_days from the events (the worker writes it from the stream; rows
-- inserted here by hand need it written once).
INSERT INTO analytics.payments (time, game_id, env, user_id, order_id, amount_cents, currency, status, channel, platform, country, region, city, product_id, reason)
SELECT
  toDateTime('2026-10-08 00:00:00') + dd*86400 + if(dd = 60, h3 % 3000, h3 % 86400) AS time,
  concat('g', toString(1 + ug % 10)), if(intDiv(ug,10) % 10 = 0, 'dev', 'prod'),
  concat('u', toString(ug)), concat('o', toString(n)),
  arrayElement([99,199,499,999,1999,4999,9999], 1 + h3 % 7),
  'USD',
  multiIf(s < 85, 'success', s < 93, 'failed', 'refunded'),
  concat('ch', toString(intHash32(ug*13) % 1500)),
  arrayElement(['ios','android','web'], 1 + ug % 3),
  arrayElement(['US','DE','CN','JP','BR','GB','FR','RU','IN','KR'], 1 + intDiv(ug,7) % 10),
  concat('r', toString(n % 50)), concat('c', toString(n % 3000)), concat('p', toString(h3 % 40)),
  if(s >= 85 AND s < 93, 'card_declined', '')
FROM (
  SELECT number AS n, intHash32(number+555) % 400000 * 5 AS ug, intHash32(number*3+1) % 100 AS s, intHash32(number*5+1) AS h3,
   least(60, (intDiv(intHash32(number+555) % 400000 * 5, 100) % 60) + intHash32(number*7+1) % 20) AS dd
  FROM numbers(3000000)
);
INSERT INTO analytics.user_days (d, game_id, env, user_id, events, active, registered, first_active)
SELECT toDate(event_time, 'UTC') AS d, game_id, env, user_id, count() AS events,
 countIf(lower(event) IN ('login','session_start','user.login','session.start')) AS active,
 countIf(lower(event) IN ('register','user.register')) AS registered,
 countIf(lower(event) IN ('first_active')) AS first_active
FROM analytics.events WHERE user_id != '' GROUP BY d, game_id, env, user_id;
