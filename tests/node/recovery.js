// The official socket.io-client's connection-state recovery against our server.
// Usage: node recovery.js BASE_URL ADMIN_KEY   (the server runs with AUTH_INSECURE=1)
// Prints one JSON line with what it saw; exits non-zero if anything is off.
"use strict";
const { io } = require("socket.io-client");

const [base, adminKey] = process.argv.slice(2);
const fail = (message, extra = {}) => {
  console.log(JSON.stringify({ ok: false, message, ...extra }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 15000).unref();

async function publish(seq) {
  const response = await fetch(`${base}/api/v1/events`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${adminKey}` },
    body: JSON.stringify({ type: "store_updated", data: { storeId: "s1", store: {}, seq } }),
  });
  if (response.status !== 202) fail(`publish answered ${response.status}`);
}

const waitFor = (predicate) =>
  new Promise((resolve) => {
    const timer = setInterval(() => {
      if (predicate()) {
        clearInterval(timer);
        resolve();
      }
    }, 10);
  });

(async () => {
  const socket = io(base, {
    transports: ["websocket"],
    auth: { userId: "node-user", role: "customer" },
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  const received = [];
  const connects = [];
  socket.on("store_updated", (data, id) => received.push({ seq: data.seq, id }));
  socket.on("connect", () => connects.push({ recovered: socket.recovered }));
  socket.on("connect_error", (err) => fail(`connect_error: ${err.message}`));

  await waitFor(() => connects.length === 1);
  for (const seq of [1, 2, 3]) await publish(seq);
  await waitFor(() => received.length === 3);

  // Drop the transport as a network change would; the client reconnects by itself.
  socket.io.engine.close();
  await waitFor(() => !socket.connected);
  for (const seq of [4, 5, 6]) await publish(seq);
  await waitFor(() => connects.length === 2);
  await publish(7);
  await waitFor(() => received.length >= 7);
  await new Promise((resolve) => setTimeout(resolve, 200));
  socket.close();

  const seqs = received.map((r) => r.seq);
  const result = { ok: true, recovered: connects[1].recovered, firstRecovered: connects[0].recovered, seqs };
  if (connects[1].recovered !== true) fail("socket.recovered is not true after reconnecting", result);
  if (JSON.stringify(seqs) !== JSON.stringify([1, 2, 3, 4, 5, 6, 7])) fail("missed or repeated events", result);
  console.log(JSON.stringify(result));
  process.exit(0);
})().catch((err) => fail(String(err)));
