"""Hello, world over WASI 0.3 HTTP (`wasi:http/service`), in Python
(componentize-py)."""

import componentize_py_async_support
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        tx, rx = wit_world.byte_stream()

        async def write():
            with tx:
                await tx.write_all(b"Hello, world!\n")

        componentize_py_async_support.spawn(write())
        trailers = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
            lambda: Ok(None)
        )[1]
        return Response.new(Fields.from_list([("content-type", b"text/plain")]), rx, trailers)[0]
