-- Bounded side input join: every bid with a value from a side table keyed
-- by auction modulo 10,000 (a lookup join against a primary-keyed table).
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B JOIN side_input S ON B.auction % 10000 = S.key
