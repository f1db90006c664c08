'use strict';
// Reference: Node socket.io 4.8 server. All clients of namespace "/" join the room
// "global" (and store:X rooms they ask for via auth.stores / ?storeId=); a published
// event is io.emit(type, data, id) — encoded once, written to every socket.
// With REDIS_URL: the same server on Socket.IO's own Redis Streams adapter
// (@socket.io/redis-streams-adapter on ioredis), the Node counterpart of our Redis backplane:
// each emit is an XADD, every process tails the stream with XREAD BLOCK.
const { Server } = require('socket.io');
const { createHttpServer, storesOf, listen } = require('./ref-common');

let io;
const server = createHttpServer((room, type, data, id) => {
  if (room) io.to(room).emit(type, data, id);
  else io.emit(type, data, id);
});
let adapter;
if (process.env.REDIS_URL) {
  const { Redis } = require('ioredis');
  const { createAdapter } = require('@socket.io/redis-streams-adapter');
  adapter = createAdapter(new Redis(process.env.REDIS_URL));
}
io = new Server(server, {
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: { origin: '*' },
  ...(adapter ? { adapter } : {}),
});
io.on('connection', (socket) => {
  socket.join('global');
  for (const s of storesOf(socket.handshake.query, socket.handshake.auth)) socket.join(`store:${s}`);
});
listen(server, process.env.REDIS_URL ? 'ref-socketio (redis streams adapter)' : 'ref-socketio');
