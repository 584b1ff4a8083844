-- 12,000,000 events of those players over the 61 days (logins, sessions, levels with
-- props, shop, 300 custom names, heartbeats; 1 % without a user).
INSERT INTO analytics.events (event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, props_json, device_id)
SELECT
  toDateTime('2026-10-08 00:00:00') + dd*86400 + if(dd = 60, h3 % 3000, h3 % 86400) AS event_time,
  concat('g', toString(1 + ug % 10)) AS game_id,
  if(intDiv(ug,10) % 10 = 0, 'dev', 'prod') AS env,
  if(intHash32(n*11) % 100 = 0, '', concat('u', toString(ug))) AS user_id,
  concat('s', toString(ug), '_', toString(dd), '_', toString(h3 % 3)) AS session_id,
  multiIf(e < 30, 'login', e < 45, 'session_start', e < 55, 'level_start', e < 63, 'level_clear', e < 68, 'level_fail', e < 73, 'shop_open', e < 76, 'purchase_click', e < 86, concat('ev_', toString(h3 % 300)), e < 96, 'heartbeat', 'tutorial_step') AS event,
  concat('ch', toString(intHash32(ug*13) % 1500)) AS channel,
  arrayElement(['ios','android','web'], 1 + ug % 3) AS platform,
  arrayElement(['US','DE','CN','JP','BR','GB','FR','RU','IN','KR'], 1 + intDiv(ug,7) % 10) AS country,
  '1.0.0' AS app_version,
  toUUID(concat(substring(h,1,8),'-',substring(h,9,4),'-',substring(h,13,4),'-',substring(h,17,4),'-',substring(h,21,12))) AS event_id,
  if(e >= 45 AND e < 68, concat('{"level":', toString(if(h3 % 100 = 0, 1 + h3 % 3000, 1 + h3 % 40)), ',"duration_sec":', toString(h3 % 600), ',"retries":', toString(h3 % 5), ',"episode":"e', toString(h3 % 4), '","map":"m', toString(h3 % 7), '"}'), '{"k":"v"}') AS props_json,
  '' AS device_id
FROM (
  SELECT number AS n, intHash32(number) % 2000000 AS ug, intHash32(number*3) % 100 AS e, intHash32(number*5) AS h3,
    least(60, (intDiv(intHash32(number) % 2000000, 100) % 60) + multiIf(intHash32(number*7) % 100 < 35, 0, intHash32(number*7) % 100 < 55, 1 + intHash32(number*17) % 6, intHash32(number*7) % 100 < 75, 7 + intHash32(number*17) % 23, intHash32(number*17) % 60)) AS dd,
    hex(MD5(toString(number + 100000000))) AS h
  FROM numbers(12000000)
);
