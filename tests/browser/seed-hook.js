// A plain-JavaScript port of the front-end's hooks, unchanged in behaviour (seed note
// ../shared/seed/000_03ab727ce4ad0d1e.txt): hooks/use-websocket.ts and hooks/use-realtime-updates.ts.
// React's state and effects become a closure; React Query's client is passed in. Nothing else moves:
// native WebSocket, JSON.parse, routing by `type`, reconnect after 3 s × 2^n (capped at 30 s) for
// 5 attempts on any close, sendMessage. No token, no lastEventId: the hook in production has neither.
"use strict";

// useWebSocket(url, {enabled, onMessage, onError, reconnectInterval, maxReconnectAttempts})
function useWebSocket(url, options) {
  const {
    enabled = true,
    onMessage,
    onError,
    onConnectionChange, // stands for React's setIsConnected: the page shows it
    onClose,            // the page records close codes (the hook ignores them)
    reconnectInterval = 3000,
    maxReconnectAttempts = 5,
  } = options;
  let ws = null;
  let reconnectAttempts = 0;
  let reconnectTimeout = null;
  let shouldReconnect = true;
  let isConnected = false;
  const setIsConnected = (value) => {
    isConnected = value;
    if (onConnectionChange) onConnectionChange(value);
  };

  function connect() {
    if (!enabled) return;
    try {
      ws = new WebSocket(url);
      ws.onopen = () => {
        setIsConnected(true);
        reconnectAttempts = 0;
      };
      ws.onmessage = (event) => {
        try {
          const message = JSON.parse(event.data);
          if (onMessage) onMessage(message);
        } catch (error) {
          console.error("Failed to parse WebSocket message:", error);
        }
      };
      ws.onerror = (error) => {
        if (onError) onError(error);
      };
      ws.onclose = (event) => {
        setIsConnected(false);
        ws = null;
        if (onClose) onClose(event.code);
        if (shouldReconnect && reconnectAttempts < maxReconnectAttempts) {
          // Exponential backoff: 3 s, 6 s, 12 s, ... capped at 30 s.
          const delay = Math.min(reconnectInterval * Math.pow(2, reconnectAttempts), 30000);
          reconnectAttempts++;
          if (options.onReconnectScheduled) options.onReconnectScheduled(delay);
          reconnectTimeout = setTimeout(connect, delay);
        }
      };
    } catch (error) {
      console.error("Failed to create WebSocket:", error);
    }
  }

  function sendMessage(message) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(message));
    }
  }

  function disconnect() {
    shouldReconnect = false;
    if (reconnectTimeout) clearTimeout(reconnectTimeout);
    if (ws) ws.close();
  }

  function reconnect() {
    disconnect();
    shouldReconnect = true;
    reconnectAttempts = 0;
    connect();
  }

  connect(); // the hook's useEffect on mount
  return { isConnected: () => isConnected, sendMessage, disconnect, reconnect };
}

// useRealtimeUpdates(enabled): the URL from NEXT_PUBLIC_WS_URL and the signed-in user; cache
// invalidation by message type.
function useRealtimeUpdates(enabled, { queryClient, user, wsUrl = "ws://localhost:3000", ...hooks }) {
  const url = `${wsUrl}/api/ws?userId=${user?.id}&role=customer`;
  const handleMessage = (message) => {
    switch (message.type) {
      case "order_updated":
        queryClient.invalidateQueries({ queryKey: ["orders"] });
        queryClient.invalidateQueries({ queryKey: ["order", message.data.orderId] });
        break;
      case "store_updated":
        queryClient.invalidateQueries({ queryKey: ["stores"] });
        queryClient.invalidateQueries({ queryKey: ["store", message.data.storeId] });
        break;
      case "product_updated":
        queryClient.invalidateQueries({ queryKey: ["products"] });
        queryClient.invalidateQueries({ queryKey: ["products", message.data.storeId] });
        break;
      case "store_availability_changed":
        queryClient.invalidateQueries({ queryKey: ["stores"] });
        queryClient.invalidateQueries({ queryKey: ["products", message.data.storeId] });
        break;
      case "product_availability_changed":
        queryClient.invalidateQueries({ queryKey: ["products", message.data.storeId] });
        break;
      default:
        break;
    }
    if (hooks.onMessage) hooks.onMessage(message);
  };
  return useWebSocket(url, {
    ...hooks,
    enabled: enabled && !!user,
    onMessage: handleMessage,
    onError: (error) => console.error("WebSocket error:", error),
    reconnectInterval: 3000,
    maxReconnectAttempts: 5,
  });
}
