#!/usr/bin/env python3
"""Lists every app through Microsoft's App Store Connect client `asconnect`, unchanged, against
BASE_URL instead of Apple. Env: KEY_ID, ISSUER_ID, KEY_FILE (.p8), BASE_URL.

Prints one JSON line per app and exits 0, or prints the error and exits 1. Run by
crates/cli/tests/asc_client.rs."""
import json
import os
import sys

import asconnect


def main() -> int:
    base = os.environ["BASE_URL"].rstrip("/")
    with open(os.environ["KEY_FILE"], encoding="utf-8") as f:
        key = f.read()
    client = asconnect.Client(
        key_id=os.environ["KEY_ID"], key_contents=key, issuer_id=os.environ["ISSUER_ID"]
    )
    # asconnect builds https://api.appstoreconnect.apple.com/v1/{endpoint} in
    # HttpClient.generate_url(); point this one instance at keygate. Nothing else changes: the
    # library signs its own tokens and follows links.next itself.
    client.http_client.generate_url = lambda endpoint: f"{base}/v1/{endpoint}"
    for app in client.app.get_all():
        print(json.dumps({"id": app.identifier, "bundleId": app.bundle_id, "name": app.name}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # AppStoreConnectError, DeserializeException, ConnectionError, ...
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
