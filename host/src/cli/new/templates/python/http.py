"""{{name}}: an HTTP service for Berth, in Python (componentize-py)."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def respond(path: str) -> bytes:
    return f"Hello from {{name}} at {path}!\n".encode()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = (request.path_with_query() or "/").split("?", 1)[0]
        # What a guest prints is a log line, tagged with the service and the
        # invocation (`berth logs {{name}}`).
        print(f"request for {path}")
        body = respond(path)
        headers = Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        out = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with out.write() as stream:
            # One call writes at most 4096 bytes.
            for start in range(0, len(body), 4096):
                stream.blocking_write_and_flush(body[start : start + 4096])
        OutgoingBody.finish(out, None)
