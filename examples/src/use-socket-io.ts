// useSocketIO: the same React Query invalidation as useRealtimeUpdates, over socket.io-client.
"use client";

import { useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";

import { applyRealtimeMessage } from "./realtime-updates";
import { createRealtimeSocket, type RealtimeSocket, type RealtimeSocketOptions, type SocketStatus } from "./realtime-socketio";

export type UseSocketIOOptions = Omit<RealtimeSocketOptions, "onStatus">;

export function useSocketIO(enabled: boolean, options: UseSocketIOOptions) {
  const queryClient = useQueryClient();
  const [status, setStatus] = useState<SocketStatus>("connecting");
  const latest = useRef(options);
  latest.current = options;
  const current = useRef<RealtimeSocket | null>(null);
  const storesKey = (options.stores ?? []).join(",");

  useEffect(() => {
    if (!enabled) return undefined;
    const invalidateAll = () => void queryClient.invalidateQueries();
    const realtime = createRealtimeSocket({
      ...latest.current,
      stores: storesKey ? storesKey.split(",") : [],
      getToken: () => latest.current.getToken?.() ?? null,
      onStatus: setStatus,
      onMessage: (message) => {
        applyRealtimeMessage(message, (queryKey) => void queryClient.invalidateQueries({ queryKey }), invalidateAll);
        latest.current.onMessage?.(message);
      },
      onResync: (reason) => {
        invalidateAll();
        latest.current.onResync?.(reason);
      },
      onStopped: (reason) => latest.current.onStopped?.(reason),
    });
    current.current = realtime;
    realtime.connect();
    return () => {
      realtime.close();
      current.current = null;
    };
  }, [enabled, options.url, storesKey, queryClient]);

  return {
    isConnected: status === "open",
    status,
    subscribe: (storeId: string) => current.current?.subscribe(storeId) ?? Promise.resolve(null),
    unsubscribe: (storeId: string) => current.current?.unsubscribe(storeId) ?? Promise.resolve(null),
  };
}
