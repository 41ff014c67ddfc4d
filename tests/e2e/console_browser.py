"""Drives the operator console in a real browser: Debian's Chromium, by
Playwright (PyPI `playwright`, with the system browser: nothing downloaded).

Signs in (a wrong token first), opens every page, finds an invocation,
tries a cross-site replay (refused), replays a dead letter from its row,
waits for a page to refresh itself, signs out. Screenshots go to --out.
Prints what it saw as one JSON object; exits non-zero on the first thing
that is not as it should be.

    python3 console_browser.py --admin http://127.0.0.1:3001 --token T \
        --service hello --invocation ID --dead EVENT_ID --out DIR
"""

import argparse
import http.server
import json
import os
import re
import sys
import threading

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("BERTH_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
]


def check(cond, what):
    if not cond:
        print(f"console check failed: {what}", file=sys.stderr)
        sys.exit(1)


def other_site(admin):
    """A page on another origin (another port) with a form that posts a
    replay of every dead letter to the console, as an attacker's would."""
    page = f"""<!doctype html><title>elsewhere</title>
<form method="post" action="{admin}/console/events/replay">
<input type="hidden" name="all" value="1"><input type="hidden" name="csrf" value="guess">
<button id="go" type="submit">Win a prize</button></form>"""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--invocation", required=True)
    ap.add_argument("--dead", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    shots = []
    seen = {}

    def shot(page, name, full=True):
        path = os.path.join(a.out, f"{name}.png")
        page.screenshot(path=path, full_page=full)
        shots.append(path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()

        # Not signed in: the sign-in form, with 401.
        r = page.goto(f"{a.admin}/console")
        check(r.status == 401, f"/console without a session is {r.status}, not 401")
        check(page.locator("input[name=token]").count() == 1, "no token field")

        # A wrong token: refused, said so.
        page.fill("input[name=token]", "not-the-token")
        with page.expect_response(lambda r: r.url.endswith("/console/login")) as info:
            page.click("button[type=submit]")
        check(info.value.status == 401, f"a wrong token got {info.value.status}")
        check("not the admin token" in page.content(), "no word of the wrong token")
        shot(page, "login", full=False)

        # The right one: the services page.
        page.fill("input[name=token]", a.token)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/console$"))
        check(page.locator("h1").inner_text() == "Services", "not on the services page")
        row = page.locator("tr", has=page.locator(f"a[href='/console/services/{a.service}']"))
        check(row.count() == 1, f"no row for {a.service}")
        check("serving" in row.inner_text(), f"{a.service} is not serving: {row.inner_text()}")
        check(
            page.locator("meta[http-equiv=refresh]").count() == 1,
            "the services page does not refresh itself",
        )
        seen["services_row"] = row.inner_text()
        shot(page, "services")

        # It refreshes itself (a meta refresh: the page loads again).
        with page.expect_event("load", timeout=15000):
            pass
        check(page.url.endswith("/console"), "the refresh went elsewhere")

        # One service: its charts, configuration and log lines.
        page.click(f"a[href='/console/services/{a.service}']")
        page.wait_for_url(re.compile(f".*/console/services/{a.service}$"))
        check(page.locator("main svg").count() >= 2, "no traffic charts")
        check(page.locator("main svg polyline").count() >= 1, "the traffic charts have no line")
        check(page.locator("pre.logs").count() == 1, "no log lines")
        check("Req/s (1 min)" in page.locator("main").inner_text(), "no traffic figures")
        seen["service_logs"] = page.locator("pre.logs").inner_text()[-2000:]
        shot(page, "service")

        # Usage per service and day.
        page.click("header a[href='/console/usage']")
        page.wait_for_url(re.compile(r".*/console/usage$"))
        check(page.locator("main svg").count() == 3, "usage has not three charts")
        check(a.service in page.locator("table").inner_text(), "no usage of the service")
        shot(page, "usage")

        # Nodes.
        page.click("header a[href='/console/nodes']")
        page.wait_for_url(re.compile(r".*/console/nodes$"))
        check(page.locator("main tbody tr").count() >= 1, "no node listed")
        check("ready" in page.locator("main tbody").inner_text(), "the node is not ready")
        shot(page, "nodes")

        # One invocation, found by its id (a page that does not refresh).
        page.click("header a[href='/console/invocations']")
        page.wait_for_url(re.compile(r".*/console/invocations$"))
        check(page.locator("meta[http-equiv=refresh]").count() == 0, "the search page refreshes")
        page.fill("main input[name=id]", a.invocation)
        page.press("main input[name=id]", "Enter")
        page.wait_for_url(re.compile(f".*/console/invocations/{a.invocation}$"))
        body = page.locator("main").inner_text()
        check(
            "Outcome" in body and "Execution" in body and "Not in the usage ledger" not in body,
            f"no usage record on the invocation page: {body}",
        )
        check(a.invocation in page.locator("pre.logs").inner_text(), "no log lines of the invocation")
        seen["invocation"] = body[:2000]
        shot(page, "invocation")

        # Events: the dead letter is listed.
        page.click("header a[href='/console/events']")
        page.wait_for_url(re.compile(r".*/console/events$"))
        dead_heading = page.locator("h2", has_text="Dead letters").inner_text()
        dead_row = page.locator("tr", has=page.locator("code", has_text=a.dead))
        check(dead_row.count() == 1, f"dead letter {a.dead} not listed")
        shot(page, "events")

        # A cross-site form posting a replay: refused, nothing changed.
        server, evil = other_site(a.admin)
        try:
            page.goto(evil)
            with page.expect_response(lambda r: "/console/events/replay" in r.url) as info:
                page.click("#go")
            seen["cross_site_status"] = info.value.status
            check(info.value.status == 403, f"a cross-site replay got {info.value.status}")
        finally:
            server.shutdown()
        page.goto(f"{a.admin}/console/events")
        check(
            page.locator("h2", has_text="Dead letters").inner_text() == dead_heading,
            "the dead letters changed after a refused replay",
        )

        # Replay the dead letter from its row.
        row = page.locator("tr", has=page.locator("code", has_text=a.dead))
        row.locator("button", has_text="Replay").click()
        page.wait_for_url(re.compile(r".*/console/events\?done=replayed\+1$"))
        check("replayed 1" in page.locator("p.notice").inner_text(), "no word of the replay")
        seen["replayed"] = True

        # Sign out: the session is gone.
        page.locator("header button", has_text="Sign out").click()
        page.wait_for_url(re.compile(r".*/console/login$"))
        r = page.goto(f"{a.admin}/console")
        check(r.status == 401, f"/console after signing out is {r.status}")

        browser.close()
    seen["screenshots"] = shots
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
