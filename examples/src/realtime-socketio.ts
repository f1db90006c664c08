// The socket.io-client variant's core: no React in here (useSocketIO wraps it).
//
// socket.io-client already reconnects with jittered backoff and recovers missed events by itself
// (connection-state recovery: `socket.recovered`). What it needs from the app, per the contract:
// - a token for each connect (`auth` as a function) and a `refresh` emit before `exp` (§5, §8);
// - a refused connect (`unauthorized`, `forbidden`, `bad_request`) is final; `unavailable` is retried;
// - a reconnect that was not recovered, or a `resync` event: refetch everything.

import { io, type Socket } from "socket.io-client";

import { type RealtimeMessage, reconnectDelay, SEED_RECONNECT, tokenExpiry } from "./realtime-connection";

export type SocketStatus = "connecting" | "open" | "waiting" | "stopped";

export interface RealtimeSocketOptions {
  /** The server's base URL, e.g. `https://realtime.example.com` (Socket.IO is at /socket.io/). */
  url: string;
  getToken?: () => Promise<string | null> | string | null;
  /** Store ids viewed from the start. */
  stores?: readonly string[];
  onMessage?: (message: RealtimeMessage) => void;
  /** Missed events are unknown (a reconnect that was not recovered, or `resync`): invalidate everything. */
  onResync?: (reason: string) => void;
  onStatus?: (status: SocketStatus) => void;
  /** A refused connect or a final disconnect (kicked, token expired): sign in again, then `connect()`. */
  onStopped?: (reason: string) => void;
  refreshLeadSeconds?: number;
  /** Only with AUTH_INSECURE=1 on the server (development). */
  insecureIdentity?: { userId: string; role?: string };
  transports?: ("polling" | "websocket")[];
}

const FINAL_REFUSALS = new Set(["unauthorized", "forbidden", "bad_request"]);

export interface RealtimeSocket {
  socket: Socket;
  connect(): void;
  close(): void;
  subscribe(storeId: string): Promise<unknown>;
  unsubscribe(storeId: string): Promise<unknown>;
}

export function createRealtimeSocket(options: RealtimeSocketOptions): RealtimeSocket {
  let refreshTimer: ReturnType<typeof setTimeout> | null = null;
  let retryTimer: ReturnType<typeof setTimeout> | null = null;
  let unavailableAttempts = 0;
  let connectedBefore = false;
  const status = (value: SocketStatus) => options.onStatus?.(value);

  const socket = io(options.url, {
    autoConnect: false,
    transports: options.transports ?? ["polling", "websocket"],
    // The seed's schedule (3 s doubling to 30 s), ±50 % at random so that tabs spread out.
    reconnectionDelay: SEED_RECONNECT.interval,
    reconnectionDelayMax: SEED_RECONNECT.maxInterval,
    randomizationFactor: 0.5,
    auth: (send: (data: object) => void) => {
      Promise.resolve(options.getToken?.() ?? null)
        .catch(() => null)
        .then((token) => send({ ...(token ? { token } : {}), ...options.insecureIdentity, stores: options.stores ?? [] }));
    },
  });

  const clearRefresh = () => {
    if (refreshTimer !== null) clearTimeout(refreshTimer);
    refreshTimer = null;
  };
  const scheduleRefresh = (exp: number) => {
    clearRefresh();
    const remaining = exp - Date.now() / 1000;
    const lead = Math.min(options.refreshLeadSeconds ?? 60, remaining / 2);
    refreshTimer = setTimeout(() => void refresh(), Math.max(0, (remaining - lead) * 1000));
  };
  const refresh = async () => {
    const token = await Promise.resolve(options.getToken?.() ?? null).catch(() => null);
    if (!token || !socket.connected) return;
    try {
      const ack = (await socket.timeout(10000).emitWithAck("refresh", { token })) as { ok?: boolean; exp?: number };
      if (ack.ok && typeof ack.exp === "number") scheduleRefresh(ack.exp);
    } catch {
      // No ack in time: the next connect sends a fresh token anyway.
    }
  };

  socket.on("connect", () => {
    unavailableAttempts = 0;
    status("open");
    if (connectedBefore && !socket.recovered) options.onResync?.("not_recovered");
    connectedBefore = true;
    Promise.resolve(options.getToken?.() ?? null)
      .catch(() => null)
      .then((token) => {
        const exp = token ? tokenExpiry(token) : null;
        if (exp !== null) scheduleRefresh(exp);
      });
  });
  socket.on("disconnect", (reason) => {
    clearRefresh();
    if (reason === "io server disconnect") {
      status("stopped"); // kicked, or the token expired: socket.io-client does not reconnect
      options.onStopped?.(reason);
    } else if (reason !== "io client disconnect") {
      status("waiting");
    }
  });
  socket.on("connect_error", (error: Error & { data?: unknown }) => {
    if (FINAL_REFUSALS.has(error.message)) {
      status("stopped");
      options.onStopped?.(error.message);
      socket.disconnect();
    } else if (error.message === "unavailable" && !socket.active) {
      // The session service did not answer: the server asks us to try again later.
      status("waiting");
      const delay = reconnectDelay(unavailableAttempts++, SEED_RECONNECT);
      retryTimer = setTimeout(() => socket.connect(), delay);
    }
    // Otherwise a network error: the Manager retries by itself.
  });
  socket.on("resync", (data: { reason?: string } | undefined) => options.onResync?.(data?.reason ?? "unknown"));
  socket.onAny((type: string, data: unknown, id: unknown) => {
    if (type === "resync") return; // onResync, above
    options.onMessage?.({ type, data, ...(typeof id === "string" ? { id } : {}) });
  });

  return {
    socket,
    connect() {
      status("connecting");
      socket.connect();
    },
    close() {
      clearRefresh();
      if (retryTimer !== null) clearTimeout(retryTimer);
      socket.disconnect();
    },
    subscribe: (storeId) => socket.timeout(10000).emitWithAck("subscribe", { storeId }),
    unsubscribe: (storeId) => socket.timeout(10000).emitWithAck("unsubscribe", { storeId }),
  };
}
