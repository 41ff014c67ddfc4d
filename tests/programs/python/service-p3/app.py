"""`py-service-p3`: a WASI 0.3 HTTP service in Python, built by
componentize-py (`-w wasi:http/service@0.3.0`), one behaviour per last
path segment (under any route):

- `/` — a greeting, its body written by a spawned task;
- `POST /echo` — the request body streamed back as it arrives;
- `/sleep?ms=N` — answers after N ms on the host's clock.
"""

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import monotonic_clock
from wit_world.imports.wasi_http_types import Fields, Method_Post, Request, Response


def no_trailers():
    return wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
        lambda: Ok(None)
    )[1]


def done():
    return wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))[1]


def text(status: int, body: bytes) -> Response:
    tx, rx = wit_world.byte_stream()

    async def write():
        with tx:
            await tx.write_all(body)

    componentize_py_async_support.spawn(write())
    response = Response.new(
        Fields.from_list([("content-type", b"text/plain")]), rx, no_trailers()
    )[0]
    response.set_status_code(status)
    return response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        route, _, query = path.partition("?")
        last = route.rsplit("/", 1)[-1]
        if last == "echo" and isinstance(request.get_method(), Method_Post):
            body, trailers = Request.consume_body(request, done())
            return Response.new(Fields(), body, trailers)[0]
        if last == "sleep":
            params = dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv)
            ms = int(params.get("ms", "3600000"))
            await monotonic_clock.wait_for(ms * 1_000_000)
            return text(200, f"slept {ms} ms\n".encode())
        return text(200, b"Hello from Python on WASI 0.3\n")
