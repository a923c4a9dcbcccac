-- Bids per bidder per 10-second window. Nexmark counts in processing-time
-- windows; LaminarDB windows are in event time.
SELECT bidder, COUNT(*) AS bid_count, window_start, window_end
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end
