-- q5 in batch SQL: each bid in the five 10-second windows sliding every 2
-- seconds that hold it (starts at its 2-second bucket and the four before).
WITH hopped AS (
    SELECT auction, date_bin(INTERVAL '2' SECOND, date_time) - k.back AS starttime
    FROM bid CROSS JOIN (VALUES (INTERVAL '0' SECOND), (INTERVAL '2' SECOND), (INTERVAL '4' SECOND),
                                (INTERVAL '6' SECOND), (INTERVAL '8' SECOND)) AS k(back)
), auction_bids AS (
    SELECT auction, COUNT(*) AS num, starttime FROM hopped GROUP BY auction, starttime
), max_bids AS (
    SELECT MAX(num) AS maxn, starttime AS starttime_c FROM auction_bids GROUP BY starttime
)
SELECT a.auction, a.num
FROM auction_bids a JOIN max_bids m ON a.starttime = m.starttime_c AND a.num >= m.maxn
