// useRealtimeUpdates: the seed hook's API (`useRealtimeUpdates(enabled)`), invalidating React
// Query caches by event type, and everything on `resync`.
"use client";

import { useQueryClient } from "@tanstack/react-query";
import { useCallback } from "react";

import type { IdStore, RealtimeMessage } from "./realtime-connection";
import { applyRealtimeMessage } from "./realtime-updates";
import { useWebSocket } from "./use-websocket";

export interface RealtimeUpdatesOptions {
  /** `ws://localhost:3000` in development, `wss://your-domain.com` in production (NEXT_PUBLIC_WS_URL). */
  baseUrl?: string;
  /** With a token or the platform's session cookie these can be omitted: the server knows the user. */
  userId?: string;
  role?: string;
  /** Store ids viewed from the start (`product_*` events go to `store:` rooms). */
  stores?: readonly string[];
  getToken?: () => Promise<string | null> | string | null;
  storage?: IdStore;
  onMessage?: (message: RealtimeMessage) => void;
}

/** `${baseUrl}/api/ws?userId=…&role=customer`: the seed's URL. */
export function realtimeUrl(options: RealtimeUpdatesOptions): string {
  const url = new URL("/api/ws", options.baseUrl ?? "ws://localhost:3000");
  if (options.userId) url.searchParams.set("userId", options.userId);
  url.searchParams.set("role", options.role ?? "customer");
  if (options.stores?.length) url.searchParams.set("stores", options.stores.join(","));
  return url.toString();
}

export function useRealtimeUpdates(enabled: boolean, options: RealtimeUpdatesOptions = {}) {
  const queryClient = useQueryClient();
  const { onMessage } = options;
  const handle = useCallback(
    (message: RealtimeMessage) => {
      applyRealtimeMessage(
        message,
        (queryKey) => void queryClient.invalidateQueries({ queryKey }),
        () => void queryClient.invalidateQueries(),
      );
      onMessage?.(message);
    },
    [queryClient, onMessage],
  );
  const { isConnected, sendMessage, status } = useWebSocket(realtimeUrl(options), {
    enabled,
    onMessage: handle,
    ...(options.getToken ? { getToken: options.getToken } : {}),
    ...(options.storage ? { storage: options.storage } : {}),
  });
  return { isConnected, sendMessage, status };
}
