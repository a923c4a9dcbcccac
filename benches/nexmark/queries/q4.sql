-- Average closing price per category: each auction's winning bid (bids
-- between the auction's start and its expiry), averaged per category.
-- The per-auction maximum has no window, so it runs as a changelog (as
-- in Flink, where it is a retracting aggregate), and so does the average.
SELECT Q.category, AVG(Q.final) AS avg_final
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category
EMIT CHANGES
