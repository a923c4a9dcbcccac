-- Log to file system: every bid with its date and hour, for a partitioned
-- file sink (LaminarDB has no sinks to the file system yet; this is the
-- projection the sink would write).
SELECT auction, bidder, price, date_time, extra,
       to_char(date_time, '%Y-%m-%d') AS date, to_char(date_time, '%H:%M') AS time
FROM bid
