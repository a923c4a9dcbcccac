-- q11 in batch SQL: sessions numbered per bidder with LAG (a new session
-- where the gap to the previous bid is 10 seconds or more).
WITH marked AS (
    SELECT bidder, date_time,
           CASE WHEN LAG(date_time) OVER (PARTITION BY bidder ORDER BY date_time) IS NULL
                  OR date_time - LAG(date_time) OVER (PARTITION BY bidder ORDER BY date_time) >= INTERVAL '10' SECOND
                THEN 1 ELSE 0 END AS new_session
    FROM bid
), numbered AS (
    SELECT bidder, date_time,
           SUM(new_session) OVER (PARTITION BY bidder ORDER BY date_time
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
    FROM marked
)
SELECT bidder, COUNT(*) AS bid_count, MIN(date_time) AS starttime,
       MAX(date_time) + INTERVAL '10' SECOND AS endtime
FROM numbered
GROUP BY bidder, session
