'use strict';
// Reference: Node socket.io 4.8 server. All clients of namespace "/" join the room
// "global" (and store:X rooms they ask for via auth.stores / ?storeId=); a published
// event is io.emit(type, data, id) — encoded once, written to every socket.
const { Server } = require('socket.io');
const { createHttpServer, storesOf, listen } = require('./ref-common');

let io;
const server = createHttpServer((room, type, data, id) => {
  if (room) io.to(room).emit(type, data, id);
  else io.emit(type, data, id);
});
io = new Server(server, {
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  cors: { origin: '*' },
});
io.on('connection', (socket) => {
  socket.join('global');
  for (const s of storesOf(socket.handshake.query, socket.handshake.auth)) socket.join(`store:${s}`);
});
listen(server, 'ref-socketio');
