"""{{name}}: an event handler for Berth, in Python (componentize-py)."""

from wit_world import exports
from wit_world.imports.types import Event


class Handler(exports.Handler):
    def handle(self, event: Event) -> None:
        # Returning acknowledges the event. Raising
        # componentize_py_types.Err(HandleError_Retry("why")) delivers it
        # again later; Err(HandleError_Reject("why")) dead-letters it now.
        data = bytes(event.data).decode(errors="replace") if event.data else ""
        # What a guest prints is a log line, tagged with the service and the
        # invocation (`berth logs {{name}}`).
        print(
            f"{{name}} handled {event.type} event {event.id} (attempt {event.attempt}): {data}"
        )
