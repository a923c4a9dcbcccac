-- Average selling price per seller over their last 10 closed auctions.
-- As in the Nexmark text, "final" is the highest bid at each instant of
-- each auction (grouped by the bid's time, not a closed auction's
-- winning bid). The inner GROUP BY has the bid's event time among its
-- keys, so each group is emitted once the watermark passes that time and
-- the average over the last 11 rows reads an append-only stream. A
-- seller's auctions may have bids at the same instant: the auction's id
-- orders those (the standard text leaves them to arrival order, which
-- would make the result depend on it).
SELECT Q.seller, AVG(Q.final) OVER (PARTITION BY Q.seller ORDER BY Q.date_time, Q.id
                                     ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_final
FROM (
    SELECT MAX(B.price) AS final, A.id, A.seller, B.date_time
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.seller, B.date_time
) AS Q
