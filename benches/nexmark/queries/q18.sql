-- Last bid of each bidder on each auction (deduplication). Bids in the same
-- millisecond tie on date_time; price and url break the tie, so that the
-- answer is one (Nexmark orders by date_time alone).
SELECT auction, bidder, price, channel, url, date_time
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, price DESC, url DESC) AS rank_number
    FROM bid
)
WHERE rank_number <= 1
