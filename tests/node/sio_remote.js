// socket.io-client, driven by a test over stdin/stdout (tests/node_remote.py).
// Usage: node sio_remote.js URL OPTIONS_JSON     (OPTIONS_JSON: io()'s options: auth, transports, ...)
//
// It prints one JSON line per thing the client sees:
//   {"on":"open","transport"} (Engine.IO)  {"on":"connect","recovered","transport","id"}  {"on":"connect_error","message","data"}
//   {"on":"disconnect","reason"}  {"on":"upgrade","transport"}  {"on":"event","name","args"}
//   {"on":"ack","seq","args"}  {"on":"reconnect_attempt","attempt"}  {"on":"closed"}
// and reads one JSON command per line:
//   {"cmd":"emit","seq":N,"event":E,"data":D}  emit with an acknowledgement (answered by "ack")
//   {"cmd":"drop"}   close the Engine.IO transport, as a network change would (the client reconnects)
//   {"cmd":"close"}  socket.close(), then exit 0
"use strict";
const readline = require("node:readline");
const { io } = require("socket.io-client");

const [url, optionsJson] = process.argv.slice(2);
const say = (message) => process.stdout.write(JSON.stringify(message) + "\n");

const socket = io(url, JSON.parse(optionsJson || "{}"));
const engine = () => socket.io.engine;

socket.io.on("open", () => {
  say({ on: "open", transport: engine().transport.name });
  engine().on("upgrade", (transport) => say({ on: "upgrade", transport: transport.name }));
});
socket.io.on("reconnect_attempt", (attempt) => say({ on: "reconnect_attempt", attempt }));
socket.on("connect", () =>
  say({ on: "connect", recovered: socket.recovered, transport: engine().transport.name, id: socket.id }),
);
socket.on("connect_error", (err) => say({ on: "connect_error", message: err.message, data: err.data ?? null }));
socket.on("disconnect", (reason) => say({ on: "disconnect", reason }));
socket.onAny((name, ...args) => say({ on: "event", name, args }));

const commands = {
  emit({ seq, event, data }) {
    socket.timeout(5000).emit(event, data, (err, ...args) =>
      say(err ? { on: "ack", seq, error: String(err.message || err) } : { on: "ack", seq, args }),
    );
  },
  drop() {
    engine().close();
  },
  close() {
    socket.close();
    say({ on: "closed" });
    process.exit(0);
  },
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  const run = commands[command.cmd];
  if (!run) throw new Error(`unknown command ${line}`);
  run(command);
});
// The test ends this process by closing stdin (or by "close"): never outlive it.
process.stdin.on("end", () => process.exit(0));
