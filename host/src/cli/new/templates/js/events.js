// {{name}}: an event handler for Berth, in JavaScript (ComponentizeJS).

export const handler = {
  // Returning acknowledges the event; throwing delivers it again later
  // (then dead-letters it, as the subscription's retry policy says).
  handle(event) {
    const data = event.data ? new TextDecoder().decode(event.data) : "";
    // What a guest prints is a log line, tagged with the service and the
    // invocation (`berth logs {{name}}`).
    console.log(
      `{{name}} handled ${event.type} event ${event.id} (attempt ${event.attempt}): ${data}`,
    );
  },
};
