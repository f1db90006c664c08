'use strict';
// Load generator: N WebSocket readers (plain WS or raw Engine.IO v4 / Socket.IO v5 over
// websocket, no socket.io-client) plus an HTTP publisher. Prints ONE JSON object on stdout.
//
//   node loadgen.js --proto ws|sio --ports 3001[,3002] --pub-port 3001 --pids PID[,PID]
//                   --workloads throughput,ingest | memory | storm   [options, see DEFAULTS]
//
// (The latency workload is latency.py: it times frames by the kernel's receive timestamps.)
//
// Hot path is kept light: an event frame is not JSON-parsed; "seq" and "ts" are located in
// the raw Buffer (the publisher puts them first in `data`). One frame in SAMPLE_EVERY is
// fully parsed to check the frame format (type, data.seq, id string).
const http = require('http');
const net = require('net');
const crypto = require('crypto');
const fs = require('fs');
const { performance } = require('perf_hooks');

const DEFAULTS = {
  proto: 'ws', ports: '3000', 'pub-port': '', pids: '', 'redis-pid': '', 'clk-tck': '100',
  workloads: 'throughput,ingest', key: 'benchkey',
  clients: '1000', 'connect-parallel': '200', 'connect-timeout': '20',
  'mem-clients': '1000,10000', 'mem-settle': '2',
  duration: '10', warmup: '1', batch: '25', window: '100', 'drain-timeout': '10',
  'ingest-duration': '5', 'ingest-concurrency': '4', 'ingest-batch': '100', watchers: '10',
  'frame-bytes': '300',
  // storm: every client at once (connect-parallel caps it), each with its own credential
  'storm-clients': '10000', 'storm-auth': 'jwt', 'jwt-secret': '', 'storm-replay': '0',
  'storm-parallel': '0', 'storm-timeout': '60',
  // the replayed events were posted by an earlier process (storm-prepost): their first id and seq
  'storm-after': '', 'storm-seq-base': '0',
};
const opt = { ...DEFAULTS };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--help' || a === '-h') {
    console.log('node loadgen.js [--option value]...  options and defaults:');
    for (const [k, v] of Object.entries(DEFAULTS)) console.log(`  --${k} ${v === '' ? '(none)' : v}`);
    process.exit(0);
  }
  if (!a.startsWith('--') || !(a.slice(2) in DEFAULTS)) throw new Error(`unknown option ${a}`);
  opt[a.slice(2)] = process.argv[++i];
}
const num = (k) => Number(opt[k]);
const list = (k) => String(opt[k]).split(',').filter(Boolean);
const PROTO = opt.proto;
const PORTS = list('ports').map(Number);
const PUB_PORT = Number(opt['pub-port'] || PORTS[0]);
const PIDS = list('pids').map(Number);
const REDIS_PID = Number(opt['redis-pid']) || 0;
const CLK_TCK = num('clk-tck');
const SAMPLE_EVERY = 257;

const now = () => performance.timeOrigin + performance.now(); // ms epoch, float
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('[loadgen]', ...a);

// ---------------------------------------------------------------- /proc readers
function cpuMicros(pid) { // utime+stime of a process (all threads), in µs
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
  } catch { return NaN; }
}
function statusKb(pid, field) { // VmRSS / VmHWM in kB
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+)`, 'm'));
    return m ? Number(m[1]) : NaN;
  } catch { return NaN; }
}
const sum = (xs) => xs.reduce((a, b) => a + b, 0);
function systemCpu() { // all CPUs, µs: busy (incl. steal) and steal, from /proc/stat
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = f;
    const k = 1e6 / CLK_TCK;
    return { busy: (user + nice + system + irq + softirq + steal) * k, steal: steal * k };
  } catch { return { busy: NaN, steal: NaN }; }
}
function snapshot() {
  const self = process.cpuUsage();
  return {
    t: now(),
    system: systemCpu(),
    server: sum(PIDS.map(cpuMicros)),
    redis: REDIS_PID ? cpuMicros(REDIS_PID) : NaN,
    self: self.user + self.system,
    deliveries: stats.deliveries,
  };
}
const serverRssKb = () => sum(PIDS.map((p) => statusKb(p, 'VmRSS')));
const serverHwmKb = () => sum(PIDS.map((p) => statusKb(p, 'VmHWM')));

// ---------------------------------------------------------------- latency histogram (1% buckets)
class Hist {
  constructor() { this.b = new Uint32Array(2400); this.n = 0; this.max = 0; this.sum = 0; }
  add(ms) {
    const us = ms * 1000 > 1 ? ms * 1000 : 1;
    const i = Math.min(2399, Math.ceil(Math.log(us) / 0.00995033)); // log(1.01)
    this.b[i]++; this.n++; this.sum += ms; if (ms > this.max) this.max = ms;
  }
  q(p) {
    if (!this.n) return null;
    let want = Math.ceil(this.n * p), acc = 0;
    for (let i = 0; i < this.b.length; i++) { acc += this.b[i]; if (acc >= want) return Math.exp(i * 0.00995033) / 1000; }
    return this.max;
  }
  summary() {
    const r = (x) => (x == null ? null : Math.round(x * 1000) / 1000);
    return { samples: this.n, p50_ms: r(this.q(0.5)), p99_ms: r(this.q(0.99)), max_ms: r(this.max), mean_ms: r(this.n ? this.sum / this.n : null) };
  }
}

// ---------------------------------------------------------------- per-client sequence tracking
const stats = { deliveries: 0, strays: 0, formatErrors: 0, sampled: 0, drops: 0, closeCodes: {} };
let track = { base: 0, hist: new Hist() }; // seq >= base belongs to the current workload
const SEQ = Buffer.from('"seq":');
const RESYNC = Buffer.from('"resync"'); // told to refetch: what it missed is not replayed (contract §7)
const TS = Buffer.from('"ts":');

function readNumber(buf, pos) { // non-negative decimal (int or fraction) straight from bytes
  let v = 0, c = buf[pos];
  while (c >= 48 && c <= 57) { v = v * 10 + (c - 48); c = buf[++pos]; }
  if (c === 46) {
    let scale = 1;
    c = buf[++pos];
    while (c >= 48 && c <= 57) { scale /= 10; v += (c - 48) * scale; c = buf[++pos]; }
  }
  return (c === 101 || c === 69) ? NaN : v; // exponent: not produced for our ms timestamps
}

// ---------------------------------------------------------------- light WebSocket client
// A client-side RFC 6455 reader on a bare net.Socket, instead of the `ws` package: with one
// frame it costs about two thirds of what `ws` does (measured in the throughput workload, with
// frames one per read and in batches), so the load generator limits a throughput run less.
// It handles what these servers send: unmasked frames, split across reads or several per read,
// fragments, ping (answered), close (code kept, answered). No extensions (no deflate).
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
class LightSocket {
  // Callbacks: onopen(), onmessage(Buffer), onclose(code), onerror(Error).
  constructor(port, path, extraHeaders = '') {
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.open = false; this.closeCode = 1006; this.pending = null; this.fragments = null;
    const key = crypto.randomBytes(16).toString('base64');
    this.accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
    const sock = net.connect({ host: '127.0.0.1', port });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('connect', () => sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n`
      + `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`));
    sock.on('data', (chunk) => this.received(chunk));
    sock.on('error', (e) => { if (!this.open && this.onerror) this.onerror(e); });
    sock.on('close', () => { const was = this.open; this.open = false; if (this.onclose) this.onclose(was ? this.closeCode : 1006); });
  }

  received(chunk) {
    if (this.pending) { chunk = Buffer.concat([this.pending, chunk]); this.pending = null; }
    let pos = 0;
    if (!this.open) {
      const end = chunk.indexOf('\r\n\r\n');
      if (end < 0) { this.pending = chunk; return; }
      const head = chunk.toString('latin1', 0, end);
      if (!/^HTTP\/1\.1 101 /.test(head) || !head.includes(this.accept)) {
        return this.fail(new Error(`handshake refused: ${head.split('\r\n')[0]}`));
      }
      this.open = true;
      if (this.onopen) this.onopen();
      pos = end + 4;
    }
    const n = chunk.length;
    while (pos + 2 <= n) {
      const b0 = chunk[pos], b1 = chunk[pos + 1];
      if (b1 & 0x80) return this.fail(new Error('masked frame from server'));
      let len = b1 & 0x7f, start = pos + 2;
      if (len === 126) { if (start + 2 > n) break; len = chunk.readUInt16BE(pos + 2); start += 2; }
      else if (len === 127) { if (start + 8 > n) break; len = Number(chunk.readBigUInt64BE(pos + 2)); start += 8; }
      if (start + len > n) break;
      this.frame(b0, chunk.subarray(start, start + len));
      pos = start + len;
    }
    if (pos < n) this.pending = chunk.subarray(pos);
  }

  frame(b0, payload) {
    const opcode = b0 & 0x0f, fin = b0 & 0x80;
    if (opcode === 8) {
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this.write(0x8, payload.subarray(0, 2));
      this.sock.end();
    } else if (opcode === 9) this.write(0xa, payload);
    else if (opcode === 10) { /* pong */ }
    else if (opcode === 0 || !fin) {
      (this.fragments ||= []).push(Buffer.from(payload));
      if (fin) { const whole = Buffer.concat(this.fragments); this.fragments = null; this.onmessage(whole); }
    } else this.onmessage(payload);
  }

  write(opcode, payload) { // client frames are masked (RFC 6455 5.3)
    const len = payload.length;
    const head = len < 126 ? 2 : 4;
    const out = Buffer.allocUnsafe(head + 4 + len);
    out[0] = 0x80 | opcode;
    if (len < 126) out[1] = 0x80 | len; else { out[1] = 0x80 | 126; out.writeUInt16BE(len, 2); }
    const mask = crypto.randomBytes(4);
    mask.copy(out, head);
    for (let i = 0; i < len; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3];
    this.sock.write(out);
  }

  send(text) { if (this.open) this.write(0x1, Buffer.from(text)); }
  fail(e) { const was = this.open; this.open = false; if (!was && this.onerror) this.onerror(e); this.terminate(); }
  terminate() { if (this.sock) { this.sock.destroy(); } }
}

class Client {
  constructor(index, port, stores, cred = {}) {
    this.index = index; this.port = port; this.stores = stores;
    this.token = cred.token || null; this.cookie = cred.cookie || null; this.lastEventId = cred.lastEventId || null;
    this.user = cred.user || `u${index}`;
    this.ready = false; this.ws = null; this.connectMs = null; this.reset();
  }
  reset() { this.seen = new Uint8Array(256); this.maxRel = -1; this.distinct = 0; this.dup = 0; this.reorder = 0; this.resyncs = 0; }

  connect(timeoutMs) {
    const uid = this.user;
    let path;
    if (PROTO === 'ws') {
      const st = this.stores.length ? `&stores=${this.stores.join(',')}` : '';
      const tok = this.token ? `&token=${this.token}` : '';
      const last = this.lastEventId ? `&lastEventId=${this.lastEventId}` : '';
      path = `/api/ws?userId=${uid}&role=customer${st}${tok}${last}`;
    } else {
      path = `/socket.io/?EIO=4&transport=websocket`;
    }
    const t0 = now();
    return new Promise((resolve, reject) => {
      const ws = new LightSocket(this.port, path, this.cookie ? `Cookie: session=${this.cookie}\r\n` : '');
      this.ws = ws;
      const timer = setTimeout(() => { ws.terminate(); reject(new Error('connect timeout')); }, timeoutMs);
      const fail = (e) => { clearTimeout(timer); if (!this.ready) reject(e); };
      ws.onerror = fail;
      ws.onclose = (code) => {
        if (this.ready) { stats.drops++; stats.closeCodes[code] = (stats.closeCodes[code] || 0) + 1; this.ready = false; }
        fail(new Error(`closed ${code}`));
      };
      ws.onmessage = (buf) => {
        if (this.ready) return this.onFrame(buf);
        const s = buf.toString();
        if (PROTO === 'ws') {
          let type = null;
          try { type = JSON.parse(s).type; } catch { /* not JSON */ }
          if (type === 'connected') this.ready = true;
        } else if (s[0] === '0') {
          const auth = this.token ? { token: this.token } : this.cookie ? {} : { userId: uid, role: 'customer' };
          if (this.stores.length) auth.stores = this.stores;
          if (this.lastEventId) auth.lastEventId = this.lastEventId;
          ws.send(`40${JSON.stringify(auth)}`);
        } else if (s.startsWith('40')) this.ready = true;
        else if (s.startsWith('44')) return fail(new Error(`connect_error ${s}`));
        else if (s === '2') ws.send('3');
        if (this.ready) { this.readyAt = now(); this.connectMs = this.readyAt - t0; clearTimeout(timer); resolve(this); }
      };
    });
  }

  onFrame(buf) {
    if (PROTO === 'sio') {
      if (buf[0] === 50 && buf.length === 1) { this.ws.send('3'); return; } // engine.io ping
      if (buf[0] !== 52 || buf[1] !== 50) return; // not 42[...] (event)
    }
    const i = buf.indexOf(SEQ);
    if (i < 0) { // connected / pong / other control frames
      if (buf.includes(RESYNC)) this.resyncs++;
      return;
    }
    const seq = readNumber(buf, i + SEQ.length);
    const j = buf.indexOf(TS, i);
    const t = now();
    stats.deliveries++;
    if (j > 0) track.hist.add(t - readNumber(buf, j + TS.length));
    if (stats.deliveries % SAMPLE_EVERY === 0) this.checkFormat(buf, seq);
    const rel = seq - track.base;
    if (rel < 0) { stats.strays++; return; }
    if (rel >= this.seen.length) {
      const n = new Uint8Array(Math.max(rel + 1, this.seen.length * 2));
      n.set(this.seen); this.seen = n;
    }
    if (this.seen[rel]) { this.dup++; return; }
    this.seen[rel] = 1; this.distinct++;
    if (rel < this.maxRel) this.reorder++; else this.maxRel = rel;
  }

  checkFormat(buf, seq) {
    stats.sampled++;
    try {
      const s = buf.toString();
      let type, data, id;
      if (PROTO === 'sio') [type, data, id] = JSON.parse(s.slice(2));
      else ({ type, data, id } = JSON.parse(s));
      if (typeof type !== 'string' || !data || data.seq !== seq || typeof id !== 'string' || !id) throw new Error('shape');
    } catch { stats.formatErrors++; }
  }
}

async function connectMany(clients, parallel, timeoutMs) {
  const t0 = now();
  let next = 0, failed = 0;
  const errors = {};
  const worker = async () => {
    while (next < clients.length) {
      const c = clients[next++];
      try { await c.connect(timeoutMs); } catch (e) { failed++; errors[e.message] = (errors[e.message] || 0) + 1; }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, clients.length) }, worker));
  return { ok: clients.length - failed, failed, seconds: Math.round((now() - t0) / 10) / 100, errors };
}

// ---------------------------------------------------------------- publisher
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
function post(obj) {
  const body = Buffer.from(JSON.stringify(obj));
  const t0 = now();
  return new Promise((resolve) => {
    const req = http.request({
      host: '127.0.0.1', port: PUB_PORT, method: 'POST', path: '/api/v1/events', agent, timeout: 10000,
      headers: { Authorization: `Bearer ${opt.key}`, 'Content-Type': 'application/json', 'Content-Length': body.length },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, ms: now() - t0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, ms: now() - t0, body: e.message }));
    req.end(body);
  });
}

let seqCounter = 0;
let padding = '';
function storeEvent() { // ~frame-bytes on the wire, seq/ts first in data
  return { type: 'store_updated', data: { seq: ++seqCounter, ts: now(), storeId: 's1', store: { id: 's1', name: 'Bench store', padding } } };
}
function calibratePadding() {
  const probe = { type: 'store_updated', data: { seq: 100000, ts: now(), storeId: 's1', store: { id: 's1', name: 'Bench store', padding: '' } }, id: '1234567' };
  padding = 'x'.repeat(Math.max(0, num('frame-bytes') - JSON.stringify(probe).length));
}
function ingestEvent() {
  return { type: 'product_updated', data: { seq: ++seqCounter, ts: now(), storeId: 'ingest', product: { id: 'p1', price: 100 } } };
}

// ---------------------------------------------------------------- accounting helpers
function startTracking(clients) {
  track = { base: seqCounter + 1, hist: new Hist() };
  for (const c of clients) c.reset();
}
function seqReport(clients, posted) {
  let distinct = 0, dup = 0, reorder = 0, resynced = 0;
  for (const c of clients) { distinct += c.distinct; dup += c.dup; reorder += c.reorder; if (c.resyncs) resynced++; }
  return { expected: posted * clients.length, received_distinct: distinct, lost: posted * clients.length - distinct, duplicated: dup, reordered: reorder, resynced_clients: resynced };
}
async function drain(clients, posted) {
  const want = posted * clients.length;
  const deadline = now() + num('drain-timeout') * 1000;
  let have = 0;
  while (now() < deadline) {
    have = 0; for (const c of clients) have += c.distinct;
    if (have >= want) break;
    await sleep(20);
  }
  return have >= want;
}
function windowFigures(a, b) {
  const d = b.deliveries - a.deliveries, secs = (b.t - a.t) / 1000;
  const r = (x, k = 100) => (Number.isFinite(x) ? Math.round(x * k) / k : null);
  return {
    seconds: r(secs), deliveries: d, deliveries_per_s: r(d / secs, 1),
    server_cpu_us_per_delivery: d ? r((b.server - a.server) / d, 1000) : null,
    server_cpu_pct: r(((b.server - a.server) / 1e4) / secs, 10),
    redis_cpu_us_per_delivery: d && REDIS_PID ? r((b.redis - a.redis) / d, 1000) : null,
    redis_cpu_pct: REDIS_PID ? r(((b.redis - a.redis) / 1e4) / secs, 10) : null,
    loadgen_cpu_us_per_delivery: d ? r((b.self - a.self) / d, 1000) : null,
    loadgen_cpu_pct: r(((b.self - a.self) / 1e4) / secs, 10),
    // CPU used by everything else on the machine (other tests, daemons, VM steal): noise indicator
    other_cpu_pct: r(((b.system.busy - a.system.busy) - (b.server - a.server) - (b.self - a.self)
      - (REDIS_PID ? b.redis - a.redis : 0)) / 1e4 / secs, 10),
    steal_pct: r(((b.system.steal - a.system.steal) / 1e4) / secs, 10),
  };
}
const live = (clients) => clients.filter((c) => c.ready);

// ---------------------------------------------------------------- workloads
async function wlThroughput(clients) {
  const batch = num('batch'), window = num('window');
  startTracking(clients);
  let posted = 0, errors = 0, posts = 0;
  const tStart = now(), tMeasure = tStart + num('warmup') * 1000, tEnd = tMeasure + num('duration') * 1000;
  let a = null, b = null;
  const n = clients.length;
  while (now() < tEnd) { // bounded by time
    if (!a && now() >= tMeasure) a = snapshot();
    const outstanding = posted - stats.deliveries / n + baseDeliveries / n;
    if (outstanding + batch <= window) {
      const events = Array.from({ length: batch }, storeEvent);
      const r = await post({ events });
      posts++;
      if (r.status === 202) posted += batch; else { errors++; if (errors > 50) break; await sleep(50); }
    } else await sleep(1);
  }
  if (!a) a = snapshot();
  b = snapshot();
  const hist = track.hist.summary(); // latency of deliveries during the run (queueing included)
  const drained = await drain(clients, posted);
  return { batch, window_events: window, posts, events_posted: posted, post_errors: errors, drained, ...hist, ...windowFigures(a, b), ...seqReport(clients, posted) };
}
let baseDeliveries = 0;

async function wlIngest(clients, watchers) {
  const dur = num('ingest-duration') * 1000, conc = num('ingest-concurrency'), bsize = num('ingest-batch');
  startTracking(watchers);
  const phase = async (mkBody, perReq) => {
    const hist = new Hist();
    let reqs = 0, events = 0, errors = 0;
    const a = snapshot();
    const tEnd = now() + dur;
    const worker = async () => {
      while (now() < tEnd) { // bounded by time
        const r = await post(mkBody());
        hist.add(r.ms);
        if (r.status === 202) { reqs++; events += perReq; } else { errors++; if (errors > 100) return; await sleep(10); }
      }
    };
    await Promise.all(Array.from({ length: conc }, worker));
    const b = snapshot();
    const secs = (b.t - a.t) / 1000;
    const h = hist.summary();
    return {
      requests: reqs, events, errors, seconds: Math.round(secs * 100) / 100,
      requests_per_s: Math.round(reqs / secs), events_per_s: Math.round(events / secs),
      req_p50_ms: h.p50_ms, req_p99_ms: h.p99_ms,
      server_cpu_us_per_event: events ? Math.round(((b.server - a.server) / events) * 100) / 100 : null,
      server_cpu_pct: Math.round((b.server - a.server) / 1e4 / secs * 10) / 10,
    };
  };
  const single = await phase(ingestEvent, 1);
  const batched = await phase(() => ({ events: Array.from({ length: bsize }, ingestEvent) }), bsize);
  const posted = single.events + batched.events;
  const drained = await drain(watchers, posted);
  const sr = seqReport(watchers, posted);
  return { concurrency: conc, batch: bsize, watchers: watchers.length, single, batched, drained, lost: sr.lost, duplicated: sr.duplicated };
}

async function wlMemory(targets) {
  const parallel = num('connect-parallel'), tmo = num('connect-timeout') * 1000;
  const settle = async () => { // wait settle seconds, then until RSS stops moving (bounded)
    await sleep(num('mem-settle') * 1000);
    let prev = serverRssKb();
    for (let k = 0; k < 10; k++) { await sleep(500); const cur = serverRssKb(); if (Math.abs(cur - prev) < prev * 0.005) return cur; prev = cur; }
    return prev;
  };
  const base = await settle();
  const out = { rss_idle_server_kb: base, steps: [] };
  const clients = [];
  for (const target of targets) {
    const fresh = [];
    for (let i = clients.length; i < target; i++) fresh.push(new Client(i, PORTS[i % PORTS.length], []));
    clients.push(...fresh);
    const conn = await connectMany(fresh, parallel, tmo);
    const rss = await settle();
    const n = live(clients).length;
    out.steps.push({ target, connected: n, connect: conn, rss_kb: rss, rss_per_conn_kb: n ? Math.round(((rss - base) / n) * 100) / 100 : null });
    log(`memory: ${n}/${target} connected, server RSS ${Math.round(rss / 1024)} MiB`);
  }
  out.hwm_kb = serverHwmKb();
  out.loadgen_rss_kb = Math.round(process.memoryUsage().rss / 1024);
  // Disconnect storm: drop every connection at once (TCP close, no goodbye), then wait (bounded)
  // until the server's CPU goes quiet; report the CPU it spent on the disconnects.
  const n = live(clients).length;
  const a = snapshot();
  for (const c of clients) c.ws && c.ws.terminate();
  let last = a.server, quietSince = null, t = now();
  const deadline = t + 60000;
  while (now() < deadline) {
    await sleep(250);
    const cur = sum(PIDS.map(cpuMicros)), tt = now();
    if ((cur - last) / ((tt - t) * 1000) < 0.05) { if (quietSince == null) quietSince = t; if (tt - quietSince >= 1000) break; } else quietSince = null;
    last = cur; t = tt;
  }
  const b = snapshot();
  out.disconnect = {
    connections: n, seconds_until_quiet: Math.round(((quietSince || b.t) - a.t) / 10) / 100,
    quiet: quietSince != null, server_cpu_ms: Math.round((b.server - a.server) / 1000),
    server_cpu_us_per_conn: n ? Math.round((b.server - a.server) / n) : null,
  };
  log(`memory: ${n} disconnects cost ${out.disconnect.server_cpu_ms} ms server CPU`);
  return out;
}

// ---------------------------------------------------------------- storm (reconnect storm)
const b64url = (b) => Buffer.from(b).toString('base64url');
function hs256(claims, secret) { // a real HS256 JWT, as a platform would issue it
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })) + '.' + b64url(JSON.stringify(claims));
  return head + '.' + crypto.createHmac('sha256', secret).update(head).digest('base64url');
}
function listenOverflows() { // TcpExt ListenOverflows: SYNs/ACKs dropped because an accept queue was full (whole host)
  try {
    const lines = fs.readFileSync('/proc/net/netstat', 'utf8').split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      if (!lines[i].startsWith('TcpExt:')) continue;
      const names = lines[i].split(/\s+/), values = lines[i + 1].split(/\s+/);
      return Number(values[names.indexOf('ListenOverflows')]);
    }
  } catch { /* not Linux */ }
  return NaN;
}

// Every client connects at once (at most storm-parallel in flight; 0 = all), each with its own
// credential: a JWT (storm-auth jwt), a session cookie for the server's session service
// (session), or none (insecure / the references). With storm-replay R, R events are posted
// first and every client connects with the id of the event before them: each must receive all R.
async function postReplayed(replay) { // the marker, then `replay` events: [marker id, first seq]
  const marker = await post(storeEvent());
  if (marker.status !== 202) throw new Error(`storm: marker POST ${marker.status} ${marker.body}`);
  const base = seqCounter + 1;
  for (let done = 0; done < replay; done += 100) {
    const events = Array.from({ length: Math.min(100, replay - done) }, storeEvent);
    const r = await post({ events });
    if (r.status !== 202) throw new Error(`storm: POST ${r.status} ${r.body}`);
  }
  return [JSON.parse(marker.body).ids[0], base];
}

async function wlStorm() {
  const n = num('storm-clients'), replay = num('storm-replay'), auth = opt['storm-auth'];
  let lastEventId = null;
  if (replay && opt['storm-after']) { // posted before this server started (a deploy)
    lastEventId = opt['storm-after'];
    track = { base: num('storm-seq-base'), hist: new Hist() };
  } else if (replay) {
    let base;
    [lastEventId, base] = await postReplayed(replay);
    track = { base, hist: new Hist() };
  }
  const exp = Math.floor(Date.now() / 1000) + 3600;
  // Users of their own: clients cut off here must not be resumed by the server (contract §7) into
  // a later workload's clients of the same name (Redis keeps resume points across processes).
  const tag = `st${process.pid}`;
  const clients = Array.from({ length: n }, (_, i) => new Client(i, PORTS[i % PORTS.length], [], {
    user: `${tag}-${i}`,
    token: auth === 'jwt' ? hs256({ sub: `${tag}-${i}`, role: 'customer', exp }, opt['jwt-secret'] || 'bench') : null,
    cookie: auth === 'session' ? `s-${tag}-${i}` : null,
    lastEventId,
  }));
  await sleep(300);
  const overflows0 = listenOverflows();
  const a = snapshot();
  const t0 = a.t;
  const parallel = num('storm-parallel') || n;
  const conn = await connectMany(clients, parallel, num('storm-timeout') * 1000);
  const b = snapshot();
  const ok = live(clients);
  let drained = true;
  if (replay) drained = await drain(ok, replay);
  await sleep(200); // let the server finish what it does after the last frame
  const c = snapshot();
  const overflows1 = listenOverflows();
  const hist = new Hist();
  let lastLive = t0;
  for (const cl of ok) { hist.add(cl.connectMs); if (cl.readyAt > lastLive) lastLive = cl.readyAt; }
  const secs = (lastLive - t0) / 1000;
  const r = (x, k = 100) => (Number.isFinite(x) ? Math.round(x * k) / k : null);
  const h = hist.summary();
  const out = {
    clients: n, auth, replay, parallel, connected: ok.length, failed: conn.failed, errors: conn.errors,
    seconds_to_last_live: r(secs), connects_per_s: r(ok.length / secs, 1),
    connect_p50_ms: h.p50_ms, connect_p99_ms: h.p99_ms, connect_max_ms: h.max_ms,
    server_cpu_us_per_connect: ok.length ? r((c.server - a.server) / ok.length, 10) : null,
    server_cpu_pct: r(((b.server - a.server) / 1e4) / ((b.t - a.t) / 1000), 10),
    loadgen_cpu_pct: r(((b.self - a.self) / 1e4) / ((b.t - a.t) / 1000), 10),
    redis_cpu_us_per_connect: REDIS_PID && ok.length ? r((c.redis - a.redis) / ok.length, 10) : null,
    other_cpu_pct: windowFigures(a, b).other_cpu_pct,
    listen_overflows: overflows1 - overflows0,
  };
  if (replay) Object.assign(out, { drained, ...seqReport(ok, replay) });
  for (const cl of clients) cl.ws && cl.ws.terminate();
  return out;
}

// ---------------------------------------------------------------- main
async function main() {
  calibratePadding();
  const workloads = list('workloads');
  const result = { proto: PROTO, ports: PORTS, pub_port: PUB_PORT, pids: PIDS, started: new Date().toISOString() };
  const hardStop = setTimeout(() => { log('hard time limit reached'); console.log(JSON.stringify({ ...result, error: 'time limit' })); process.exit(2); }, 15 * 60 * 1000);

  if (workloads.includes('memory')) {
    result.memory = await wlMemory(list('mem-clients').map(Number));
  }
  if (workloads.includes('storm-prepost')) {
    const [after, base] = await postReplayed(num('storm-replay'));
    result.storm_prepost = { after, seq_base: base };
  }
  if (workloads.includes('storm')) {
    result.storm = await wlStorm();
    log(`storm: ${JSON.stringify(result.storm)}`);
  }
  const loadWls = workloads.filter((w) => !['memory', 'storm', 'storm-prepost'].includes(w));
  if (loadWls.length) {
    const n = num('clients'), nw = Math.min(num('watchers'), n);
    const clients = Array.from({ length: n }, (_, i) => new Client(i, PORTS[i % PORTS.length], i < nw ? ['ingest'] : []));
    result.connect = await connectMany(clients, num('connect-parallel'), num('connect-timeout') * 1000);
    log(`connected ${result.connect.ok}/${n} in ${result.connect.seconds}s`);
    const ok = live(clients);
    if (!ok.length) throw new Error(`no client connected: ${JSON.stringify(result.connect.errors)}`);
    await sleep(500);
    for (const w of loadWls) {
      const cs = live(clients);
      baseDeliveries = stats.deliveries;
      log(`${w}: ${cs.length} clients`);
      if (w === 'throughput') result.throughput = await wlThroughput(cs);
      else if (w === 'ingest') result.ingest = await wlIngest(cs, live(clients.slice(0, nw)));
      else throw new Error(`unknown workload ${w}`);
      log(`${w}: ${JSON.stringify(result[w])}`);
      await sleep(300);
    }
    result.server_hwm_kb = serverHwmKb();
    result.server_rss_kb = serverRssKb();
    for (const c of clients) c.ws && c.ws.terminate();
  }
  result.frames = { ...stats };
  result.loadgen_rss_kb = Math.round(process.memoryUsage().rss / 1024);
  clearTimeout(hardStop);
  console.log(JSON.stringify(result));
  setTimeout(() => process.exit(0), 100);
}
main().catch((e) => { log(e.stack || e); console.log(JSON.stringify({ error: String(e.message || e) })); process.exit(1); });
