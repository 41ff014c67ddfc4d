# workerd serving bench/js/hello.js (the same file ComponentizeJS builds)
# as a Service Worker script; bench/load_languages.py fills in the port.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .hello) ],
  sockets = [ (name = "http", address = "127.0.0.1:PORT", http = (), service = "main") ],
);

const hello :Workerd.Worker = (
  serviceWorkerScript = embed "hello.js",
  compatibilityDate = "2024-09-23",
);
