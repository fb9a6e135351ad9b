-- Usage tracking: requests the data plane admitted per key, flushed in batches
-- (last_used_at exists since 0001).
ALTER TABLE api_keys ADD COLUMN request_count INTEGER NOT NULL DEFAULT 0 CHECK (request_count >= 0);
