// useWebSocket: the seed hook's API on RealtimeConnection (resume, token refresh, stop codes, jitter).
"use client";

import { useCallback, useEffect, useRef, useState } from "react";

import {
  type ConnectionStatus,
  type IdStore,
  RealtimeConnection,
  type RealtimeMessage,
} from "./realtime-connection";

export interface UseWebSocketOptions {
  enabled?: boolean;
  onMessage?: (message: RealtimeMessage) => void;
  onError?: (error: Event) => void;
  /** First reconnect delay bound, ms (seed: 3000); doubled each attempt up to 30 s, jittered. */
  reconnectInterval?: number;
  maxReconnectAttempts?: number;
  /** Called on `resync`: the server could not replay what was missed. */
  onResync?: (reason: string) => void;
  /** Called on every close; `willRetry` is false after 4400/4401/4403 and the like. */
  onClose?: (code: number, reason: string, willRetry: boolean) => void;
  /** A token for each connect and each in-band refresh; omit it when the session cookie identifies the user. */
  getToken?: () => Promise<string | null> | string | null;
  /** e.g. `sessionStorage`, to resume after a page reload too. */
  storage?: IdStore;
}

export interface UseWebSocketResult {
  isConnected: boolean;
  status: ConnectionStatus;
  sendMessage: (message: RealtimeMessage) => boolean;
  disconnect: () => void;
  reconnect: () => void;
}

export function useWebSocket(url: string, options: UseWebSocketOptions = {}): UseWebSocketResult {
  const { enabled = true, reconnectInterval = 3000, maxReconnectAttempts = 5, storage } = options;
  const [status, setStatus] = useState<ConnectionStatus>("idle");
  // The latest callbacks, read when called: a new closure each render does not reconnect.
  const latest = useRef(options);
  latest.current = options;
  const connection = useRef<RealtimeConnection | null>(null);

  useEffect(() => {
    if (!enabled) return undefined;
    const current = new RealtimeConnection({
      url,
      reconnect: { interval: reconnectInterval, maxAttempts: maxReconnectAttempts },
      ...(storage ? { storage } : {}),
      onStatus: setStatus,
      onMessage: (message) => latest.current.onMessage?.(message),
      onError: (error) => latest.current.onError?.(error),
      onResync: (reason) => latest.current.onResync?.(reason),
      onClose: (code, reason, willRetry) => latest.current.onClose?.(code, reason, willRetry),
      getToken: () => latest.current.getToken?.() ?? null,
    });
    connection.current = current;
    current.connect();
    return () => {
      current.disconnect();
      connection.current = null;
    };
  }, [url, enabled, reconnectInterval, maxReconnectAttempts, storage]);

  const sendMessage = useCallback((message: RealtimeMessage) => connection.current?.sendMessage(message) ?? false, []);
  const disconnect = useCallback(() => connection.current?.disconnect(), []);
  const reconnect = useCallback(() => connection.current?.connect(), []);
  return { isConnected: status === "open", status, sendMessage, disconnect, reconnect };
}
