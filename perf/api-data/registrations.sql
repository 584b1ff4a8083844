-- 2,000,000 players of 10 games (g1 … g10; env prod, a tenth dev) registering over 60 days
-- from 2026-10-08, two thirds with an install and half with a first_active event.
-- registrations (+ install for 2/3 users, first_active for 1/2)
INSERT INTO analytics.events (event_time, game_id, env, user_id, session_id, event, channel, platform, country, app_version, event_id, props_json, device_id)
SELECT
  toDateTime('2026-10-08 00:00:00') + (intDiv(ug,100) % 60)*86400 + (intHash32(ug) % 80000) + k AS event_time,
  concat('g', toString(1 + ug % 10)) AS game_id,
  if(intDiv(ug,10) % 10 = 0, 'dev', 'prod') AS env,
  concat('u', toString(ug)) AS user_id,
  concat('s', toString(ug), '_r') AS session_id,
  arrayElement(['install','first_active','register'], k+1) AS event,
  concat('ch', toString(intHash32(ug*13) % 1500)) AS channel,
  arrayElement(['ios','android','web'], 1 + ug % 3) AS platform,
  arrayElement(['US','DE','CN','JP','BR','GB','FR','RU','IN','KR'], 1 + intDiv(ug,7) % 10) AS country,
  '1.0.0' AS app_version,
  toUUID(concat(substring(h,1,8),'-',substring(h,9,4),'-',substring(h,13,4),'-',substring(h,17,4),'-',substring(h,21,12))) AS event_id,
  '{}' AS props_json, '' AS device_id
FROM (SELECT number AS ug, k, hex(MD5(toString(number*3+k))) AS h FROM numbers(2000000) ARRAY JOIN [0,1,2] AS k)
WHERE k = 2 OR (k = 0 AND ug % 3 != 0) OR (k = 1 AND ug % 2 = 0);
