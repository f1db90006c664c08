'use strict';
// Shared bits of the two Node reference servers: the publish endpoint
// (POST /api/v1/events, same JSON body as our server) and /healthz.
const http = require('http');

const API_KEY = process.env.ADMIN_API_KEYS ? process.env.ADMIN_API_KEYS.split(',')[0] : 'benchkey';
// Types whose default audience is a store room (as in the contract); everything else goes to all.
const STORE_TYPES = new Set(['product_updated', 'product_availability_changed']);

function json(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// broadcast(room | null, type, data, id): room null = every connection.
function createHttpServer(broadcast) {
  let counter = 0;
  return http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/healthz') return json(res, 200, { ok: true });
    if (req.method !== 'POST' || req.url !== '/api/v1/events') return json(res, 404, { error: 'not_found' });
    if (req.headers.authorization !== `Bearer ${API_KEY}`) return json(res, 401, { error: 'unauthorized' });
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try { body = JSON.parse(Buffer.concat(chunks)); } catch { return json(res, 400, { error: 'bad_json' }); }
      const events = Array.isArray(body && body.events) ? body.events : [body];
      const ids = [];
      for (const ev of events) {
        const id = String(++counter);
        const data = ev.data;
        const room = STORE_TYPES.has(ev.type) && data && data.storeId ? `store:${data.storeId}` : null;
        broadcast(room, ev.type, data, id);
        ids.push(id);
      }
      json(res, 202, { accepted: ids.length, ids });
    });
  });
}

// Stores a connection asked to view: ?storeId=a / ?stores=a,b / auth.stores.
function storesOf(query, auth) {
  const out = [];
  if (query.storeId) out.push(String(query.storeId));
  if (query.stores) out.push(...String(query.stores).split(',').filter(Boolean));
  if (auth && Array.isArray(auth.stores)) out.push(...auth.stores.map(String));
  return out;
}

function listen(server, name) {
  const port = Number(process.env.PORT || 3000);
  // BACKLOG: the accept queue (Node's default 511); bench/run gives it ours (4096), like for like.
  const backlog = Number(process.env.BACKLOG || 511);
  server.listen(port, '127.0.0.1', backlog, () => console.error(`${name} listening on 127.0.0.1:${port} (backlog ${backlog})`));
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

module.exports = { createHttpServer, storesOf, listen };
