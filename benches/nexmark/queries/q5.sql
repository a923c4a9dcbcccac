-- Hot items: the auctions with the most bids in each 10-second window
-- sliding every 2 seconds. The two aggregates are streams of their own
-- (a join reads sources and streams); the maximum per window groups the
-- counts by a 2-second tumbling window of their window start, which holds
-- exactly one hop window.
CREATE STREAM q5_auction_bids AS
SELECT auction, COUNT(*) AS num, window_start AS starttime
FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;

CREATE STREAM q5_max_bids AS
SELECT MAX(num) AS maxn, tumble(starttime, INTERVAL '2' SECOND) AS starttime_c
FROM q5_auction_bids
GROUP BY tumble(starttime, INTERVAL '2' SECOND);

SELECT AuctionBids.auction, AuctionBids.num
FROM q5_auction_bids AS AuctionBids
JOIN q5_max_bids AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime_c AND AuctionBids.num >= MaxBids.maxn
