// Hello, world over WASI 0.2 HTTP, in JavaScript (ComponentizeJS): the
// fetch-event handler a Service Worker or Cloudflare Worker would write.
addEventListener("fetch", (event) => {
  event.respondWith(new Response("Hello, world!\n", { headers: { "content-type": "text/plain" } }));
});
