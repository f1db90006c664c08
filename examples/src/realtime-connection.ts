// The plain-WebSocket connection behind useWebSocket: no React in here, so that it can be tested
// in a browser as it is (tests/test_browser.py bundles this file with esbuild) and reused elsewhere.
//
// What it adds to the seed hook, each against the server's contract (../shared/CONTRACT.md):
// - the last event id is kept and sent as `lastEventId` on reconnect: missed events come first (§7);
// - a token from `getToken` is sent in the URL and refreshed in band before it expires (§4, §8);
// - `resync` is passed to `onResync`: what was missed is unknown, refetch everything (§7);
// - close codes that mean "stop" (4400, 4401, 4403, ...) are never retried; only 1006 (network),
//   1012 (restart), 1013 (try again later) and 1008 (slow consumer) are (§4);
// - reconnect delays are jittered, so that 10,000 tabs closed by one restart spread their reconnects.

/** A frame from the server: `{type, data, id?}` (§4). */
export interface RealtimeMessage<T = unknown> {
  type: string;
  data?: T;
  id?: string;
}

const OPEN = 1; // WebSocket.OPEN, without needing a global WebSocket (WebSocketImpl)

export type ConnectionStatus = "idle" | "connecting" | "open" | "waiting" | "stopped";

/** Close codes after which reconnecting is useless or harmful (a refused token, a kick, ...). */
export const RETRY_CLOSE_CODES: ReadonlySet<number> = new Set([1006, 1008, 1012, 1013]);

export interface ReconnectPolicy {
  /** First delay, in ms (the seed hook's `reconnectInterval`: 3000). */
  interval: number;
  /** Cap on the delay, in ms (30,000). */
  maxInterval: number;
  /** Attempts after one loss of connection before giving up (the seed's 5). */
  maxAttempts: number;
}

export const SEED_RECONNECT: ReconnectPolicy = { interval: 3000, maxInterval: 30000, maxAttempts: 5 };

/**
 * The delay before reconnect attempt `attempt` (0-based): the seed's 3 s × 2^attempt capped at
 * 30 s, as an upper bound, with "full jitter" (uniform between 0 and that bound). After a restart
 * every tab loses its connection in the same instant; the jitter spreads 10,000 reconnects over
 * the first 3 s instead of one burst, and the next rounds over 6, 12, 24 s.
 */
export function reconnectDelay(attempt: number, policy: ReconnectPolicy, random: () => number = Math.random): number {
  const bound = Math.min(policy.interval * 2 ** attempt, policy.maxInterval);
  return Math.floor(random() * bound);
}

/** The `exp` claim of a JWT, in seconds since the epoch, or null. Not a verification: the server does that. */
export function tokenExpiry(token: string): number | null {
  const payload = token.split(".")[1];
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "=");
    const claims: unknown = JSON.parse(atob(base64));
    const exp = typeof claims === "object" && claims !== null ? (claims as { exp?: unknown }).exp : undefined;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** Where the last event id is kept: memory by default; `sessionStorage` keeps it across reloads. */
export interface IdStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface RealtimeConnectionOptions {
  /** e.g. `ws://localhost:3000/api/ws?userId=u1&role=customer` (the seed's URL), or `wss://…/api/ws`. */
  url: string;
  onMessage?: (message: RealtimeMessage) => void;
  /** The server could not replay what was missed: invalidate every cached query. */
  onResync?: (reason: string) => void;
  onStatus?: (status: ConnectionStatus) => void;
  /** Every close, with whether a reconnect is scheduled. */
  onClose?: (code: number, reason: string, willRetry: boolean) => void;
  onError?: (error: Event) => void;
  /**
   * A fresh token for each connect and before each expiry (omit it when the platform session
   * cookie identifies the user, contract §8). Null: connect without one.
   */
  getToken?: () => Promise<string | null> | string | null;
  /** Refresh this many seconds before `exp` (at most half the token's remaining life). */
  refreshLeadSeconds?: number;
  reconnect?: Partial<ReconnectPolicy>;
  /** Keep the last event id here (e.g. `sessionStorage`), under `storageKey`. */
  storage?: IdStore;
  storageKey?: string;
  /** For tests and other runtimes. */
  WebSocketImpl?: typeof WebSocket;
  random?: () => number;
}

/**
 * One logical connection that survives reconnects. `connect()` starts it; `disconnect()` ends it
 * for good (close 1000) until `connect()` is called again.
 */
export class RealtimeConnection {
  private readonly options: RealtimeConnectionOptions;
  private readonly policy: ReconnectPolicy;
  private socket: WebSocket | null = null;
  private attempts = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private memoryId: string | null = null;
  private wanted = false; // connect() called and not disconnect()ed
  private generation = 0; // ignores events of sockets replaced since
  private currentStatus: ConnectionStatus = "idle";

  constructor(options: RealtimeConnectionOptions) {
    this.options = options;
    this.policy = { ...SEED_RECONNECT, ...options.reconnect };
  }

  get status(): ConnectionStatus {
    return this.currentStatus;
  }

  get isConnected(): boolean {
    return this.currentStatus === "open";
  }

  /** The id of the last event received (or the server's position at connect): sent on reconnect. */
  get lastEventId(): string | null {
    const { storage, storageKey = "realtime:lastEventId" } = this.options;
    return storage ? storage.getItem(storageKey) : this.memoryId;
  }

  private set lastEventId(id: string) {
    const { storage, storageKey = "realtime:lastEventId" } = this.options;
    if (storage) storage.setItem(storageKey, id);
    else this.memoryId = id;
  }

  connect(): void {
    this.wanted = true;
    this.attempts = 0;
    this.clearTimers();
    void this.open();
  }

  /** Close for good (1000): no reconnect. */
  disconnect(): void {
    this.wanted = false;
    this.clearTimers();
    this.generation++;
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= OPEN) socket.close(1000, "client disconnect");
    this.setStatus("idle");
  }

  /** Send a frame (`{type, data}`); false when not connected, as the seed's sendMessage. */
  sendMessage(message: RealtimeMessage): boolean {
    if (!this.socket || this.socket.readyState !== OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  subscribe(storeId: string): boolean {
    return this.sendMessage({ type: "subscribe", data: { storeId } });
  }

  unsubscribe(storeId: string): boolean {
    return this.sendMessage({ type: "unsubscribe", data: { storeId } });
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.setStatus("connecting");
    let token: string | null = null;
    if (this.options.getToken) {
      try {
        token = await this.options.getToken();
      } catch {
        this.scheduleReconnect(1006, "getToken failed"); // as a network failure: retried with backoff
        return;
      }
    }
    if (generation !== this.generation || !this.wanted) return;
    const url = new URL(this.options.url);
    if (token) url.searchParams.set("token", token);
    const lastEventId = this.lastEventId;
    if (lastEventId) url.searchParams.set("lastEventId", lastEventId);

    const Impl = this.options.WebSocketImpl ?? WebSocket;
    const socket = new Impl(url.toString());
    this.socket = socket;
    socket.onopen = () => {
      if (generation !== this.generation) return;
      this.attempts = 0;
      this.setStatus("open");
      if (token) this.scheduleRefresh(token);
    };
    socket.onmessage = (event: MessageEvent) => {
      if (generation === this.generation) this.receive(event.data);
    };
    socket.onerror = (event: Event) => {
      if (generation === this.generation) this.options.onError?.(event);
    };
    socket.onclose = (event: CloseEvent) => {
      if (generation !== this.generation) return;
      this.socket = null;
      this.clearRefresh();
      this.scheduleReconnect(event.code, event.reason);
    };
  }

  private receive(raw: unknown): void {
    if (typeof raw !== "string") return; // the server sends text frames only
    let message: RealtimeMessage;
    try {
      message = JSON.parse(raw) as RealtimeMessage;
    } catch {
      return;
    }
    if (typeof message.id === "string") this.lastEventId = message.id;
    const data = (message.data ?? {}) as Record<string, unknown>;
    if (message.type === "connected" && typeof data.lastEventId === "string" && !this.lastEventId) {
      this.lastEventId = data.lastEventId; // start position: a reconnect resumes from here
    } else if (message.type === "resync") {
      this.options.onResync?.(typeof data.reason === "string" ? data.reason : "unknown");
    } else if (message.type === "refreshed" && typeof data.exp === "number") {
      this.scheduleRefreshAt(data.exp);
    }
    this.options.onMessage?.(message);
  }

  private scheduleReconnect(code: number, reason: string): void {
    const retry = this.wanted && RETRY_CLOSE_CODES.has(code) && this.attempts < this.policy.maxAttempts;
    this.options.onClose?.(code, reason, retry);
    if (!retry) {
      this.wanted = false;
      this.setStatus("stopped");
      return;
    }
    const delay = reconnectDelay(this.attempts, this.policy, this.options.random);
    this.attempts++;
    this.setStatus("waiting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  private scheduleRefresh(token: string): void {
    const exp = tokenExpiry(token);
    if (exp !== null) this.scheduleRefreshAt(exp);
  }

  private scheduleRefreshAt(exp: number): void {
    this.clearRefresh();
    const remaining = exp - Date.now() / 1000;
    const lead = Math.min(this.options.refreshLeadSeconds ?? 60, remaining / 2);
    const delay = Math.max(0, (remaining - lead) * 1000);
    this.refreshTimer = setTimeout(() => void this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    this.refreshTimer = null;
    const token = await Promise.resolve(this.options.getToken?.()).catch(() => null);
    // If this fails, the server closes with 4401 at exp; the app signs in again and calls connect().
    if (token) this.sendMessage({ type: "refresh", data: { token } });
  }

  private clearRefresh(): void {
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  private clearTimers(): void {
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.clearRefresh();
  }

  private setStatus(status: ConnectionStatus): void {
    if (status === this.currentStatus) return;
    this.currentStatus = status;
    this.options.onStatus?.(status);
  }
}
