// Which React Query caches each server event invalidates: the seed's table, with no React in it
// (the browser test runs it as it is, bundled by esbuild).

import type { RealtimeMessage } from "./realtime-connection";

export type QueryKey = readonly unknown[];

/** The five event types of the contract (§6) and the frames of the protocol itself. */
export const EVENT_TYPES = [
  "order_updated",
  "store_updated",
  "product_updated",
  "store_availability_changed",
  "product_availability_changed",
] as const;

export type EventType = (typeof EVENT_TYPES)[number];

const str = (value: unknown): string | undefined => (typeof value === "string" ? value : undefined);

/**
 * The query keys an event invalidates (the seed note's "Message Types"), or null when the frame
 * is not an event (connected, subscribed, pong, ...). `resync` is handled apart: everything.
 */
export function invalidationsFor(message: RealtimeMessage): QueryKey[] | null {
  const data = (typeof message.data === "object" && message.data !== null ? message.data : {}) as Record<
    string,
    unknown
  >;
  const storeId = str(data.storeId);
  switch (message.type) {
    case "order_updated": {
      const orderId = str(data.orderId);
      return orderId ? [["orders"], ["order", orderId]] : [["orders"]];
    }
    case "store_updated":
      return storeId ? [["stores"], ["store", storeId]] : [["stores"]];
    case "product_updated":
      return storeId ? [["products"], ["products", storeId]] : [["products"]];
    case "store_availability_changed":
      return storeId ? [["stores"], ["products", storeId]] : [["stores"]];
    case "product_availability_changed":
      return storeId ? [["products", storeId]] : [["products"]];
    default:
      return null;
  }
}

/** What the hook does with a frame: invalidate its keys, or everything on `resync`. */
export function applyRealtimeMessage(
  message: RealtimeMessage,
  invalidate: (key: QueryKey) => void,
  invalidateAll: () => void,
): void {
  if (message.type === "resync") {
    invalidateAll();
    return;
  }
  for (const key of invalidationsFor(message) ?? []) invalidate(key);
}
