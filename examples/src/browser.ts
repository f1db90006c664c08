// The entry point the browser test bundles (npm run build:browser → dist/realtime-examples.js,
// global `RealtimeExamples`): the hooks' framework-free core, exactly as the hooks use it.
export { RealtimeConnection, reconnectDelay, RETRY_CLOSE_CODES, SEED_RECONNECT, tokenExpiry } from "./realtime-connection";
export { applyRealtimeMessage, invalidationsFor } from "./realtime-updates";
export { createRealtimeSocket } from "./realtime-socketio";
