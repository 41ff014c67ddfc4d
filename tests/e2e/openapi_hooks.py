"""schemathesis hooks for tests/e2e/openapi.rs.

`GET /v1/logs?follow=1` streams without end (a blank line every 10 s
keeps it open), which schemathesis would read forever: such requests
are not generated. Everything else is.
"""

import schemathesis


@schemathesis.hook
def filter_query(ctx, query):
    return not (query and str(query.get("follow", "")).lower() in ("1", "true", "yes"))
