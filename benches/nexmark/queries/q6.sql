-- Average selling price per seller over their last 10 closed auctions.
-- Refused (LDB-1004): the average over the last 11 rows is supported, but
-- its input, a maximum without a window, is a changelog, and window
-- functions in streams read append-only inputs (a row's value, once out,
-- could not be corrected by a later retraction). Flink does not run q6
-- either.
SELECT Q.seller, AVG(Q.final) OVER (PARTITION BY Q.seller ORDER BY Q.date_time
                                     ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_final
FROM (
    SELECT MAX(B.price) AS final, A.seller, B.date_time
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.seller, B.date_time
) AS Q
