'use strict';
// A platform session endpoint (contract §8) for the storm workload: GET /session answers 200
// {"userId": "<USER>", "role": "customer"} for the cookie session=s-<USER>, 401 without one. It counts
// the requests and prints the count on SIGTERM (stderr). PORT=… node session-service.js
const http = require('http');

let requests = 0;
const server = http.createServer((req, res) => {
  requests++;
  const m = /(?:^|;\s*)session=s-([\w.:@-]+)/.exec(req.headers.cookie || '');
  const body = m ? JSON.stringify({ userId: m[1], role: 'customer' }) : '{"error":"no session"}';
  res.writeHead(m ? 200 : 401, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.env.PORT || 3999), '127.0.0.1', () => console.error(`session service on ${process.env.PORT}`));
const stop = () => { console.error(`session requests: ${requests}`); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
