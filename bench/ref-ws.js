'use strict';
// Reference: plain `ws` server at /api/ws. Each event is serialised ONCE to
// {"type","data","id"} JSON, turned into one Buffer, and that same Buffer is sent
// (as a text frame) to every client in the audience.
const { WebSocketServer, WebSocket } = require('ws');
const { createHttpServer, storesOf, listen } = require('./ref-common');

const all = new Set();
const rooms = new Map(); // "store:X" -> Set<ws>

const server = createHttpServer((room, type, data, id) => {
  const targets = room ? rooms.get(room) : all;
  if (!targets) return;
  const frame = Buffer.from(JSON.stringify({ type, data, id }));
  for (const ws of targets) if (ws.readyState === WebSocket.OPEN) ws.send(frame, { binary: false });
});

const wss = new WebSocketServer({ server, path: '/api/ws', perMessageDeflate: false });
wss.on('connection', (ws, req) => {
  const q = Object.fromEntries(new URL(req.url, 'http://x').searchParams);
  const userId = q.userId || 'anonymous';
  const role = q.role || 'customer';
  const joined = storesOf(q).map((s) => `store:${s}`);
  for (const r of joined) {
    if (!rooms.has(r)) rooms.set(r, new Set());
    rooms.get(r).add(ws);
  }
  all.add(ws);
  ws.on('close', () => {
    all.delete(ws);
    for (const r of joined) rooms.get(r).delete(ws);
  });
  ws.on('message', (msg) => {
    // Minimal client protocol: ping -> pong; everything else ignored.
    if (String(msg).includes('"ping"')) ws.send('{"type":"pong"}');
  });
  const rs = [`user:${userId}`, `role:${role}`, 'global', ...joined];
  ws.send(JSON.stringify({ type: 'connected', data: { userId, role, rooms: rs, lastEventId: null } }));
});
listen(server, 'ref-ws');
