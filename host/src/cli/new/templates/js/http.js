// {{name}}: an HTTP service for Berth, in JavaScript (ComponentizeJS).
//
// Requests arrive as `fetch` events with a standard Request; answer with a
// standard Response.

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  // What a guest prints is a log line, tagged with the service and the
  // invocation (`berth logs {{name}}`).
  console.log(`${request.method} ${url.pathname}`);
  return new Response(`Hello from {{name}} at ${url.pathname}!\n`, {
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}
