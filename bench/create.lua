-- wrk script: create a team key per request (POST /v1/apiKeys), key generation and sealing of
-- the pending private key included.
wrk.method = "POST"
wrk.body = '{"data":{"type":"apiKeys","attributes":{"name":"load","roles":["DEVELOPER"]}}}'
wrk.headers["Content-Type"] = "application/json"
