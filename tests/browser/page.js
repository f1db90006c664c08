// The test page's glue: starts one client (the seed hook's port, the compiled example core, or
// socket.io-client's browser bundle), records what it sees in window.T and shows it on the page.
"use strict";

const T = (window.T = { received: [], invalidations: [], closes: [], errors: [], delays: [], connects: [], connected: false });

function show(listId, text, cls) {
  const item = document.createElement("li");
  item.textContent = text;
  if (cls) item.className = cls;
  document.getElementById(listId).appendChild(item);
}

function record(message) {
  T.received.push(message);
  const id = message.id ? ` #${message.id}` : "";
  show("received", `${message.type}${id} ${JSON.stringify(message.data ?? null)}`);
}

function setConnected(value) {
  T.connected = value;
  const status = document.getElementById("status");
  status.textContent = value ? "connected" : "disconnected";
  status.className = value ? "on" : "off";
}

function recordClose(code) {
  T.closes.push(code);
  show("closes", String(code));
}

// Stands for React Query's client: records each invalidated key ("*" for everything).
const queryClient = {
  invalidateQueries(filters) {
    const key = filters && filters.queryKey ? filters.queryKey : "*";
    T.invalidations.push(key);
    show("invalidations", JSON.stringify(key));
  },
};

window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("origin").textContent = location.origin;
});

function named(name) {
  document.getElementById("client").textContent = name;
}

// The seed hook, as the app mounts it: useRealtimeUpdates(true) for the signed-in user.
window.startSeed = (wsUrl, userId) => {
  named("seed useRealtimeUpdates");
  T.client = useRealtimeUpdates(true, {
    queryClient,
    user: { id: userId },
    wsUrl,
    onMessage: record,
    onConnectionChange: setConnected,
    onClose: recordClose,
    onReconnectScheduled: (delay) => T.delays.push(delay),
  });
};

// The example hooks' core (examples/src, bundled by esbuild), wired as useRealtimeUpdates wires it.
// `token`: none, one, or a list handed out one per getToken() call (the last one repeats).
window.startExample = (url, token) => {
  named("examples RealtimeConnection");
  const { RealtimeConnection, applyRealtimeMessage } = window.RealtimeExamples;
  const tokens = token ? [].concat(token) : [];
  T.tokensHandedOut = 0;
  const getToken = () => {
    T.tokensHandedOut++;
    return tokens.length > 1 ? tokens.shift() : tokens[0];
  };
  const connection = new RealtimeConnection({
    url,
    ...(tokens.length ? { getToken } : {}),
    onMessage: (message) => {
      applyRealtimeMessage(
        message,
        (queryKey) => queryClient.invalidateQueries({ queryKey }),
        () => queryClient.invalidateQueries(),
      );
      record(message);
    },
    onStatus: (status) => {
      T.status = status;
      setConnected(status === "open");
    },
    onClose: (code, _reason, willRetry) => {
      recordClose(code);
      T.willRetry = willRetry;
    },
  });
  connection.connect();
  T.client = { sendMessage: (message) => connection.sendMessage(message), connection };
};

// socket.io-client's browser bundle (global `io`).
window.startSocketIO = (url, options) => {
  named(`socket.io-client ${(options.transports || ["polling", "websocket"]).join("+")}`);
  const socket = io(url, options);
  socket.on("connect", () => {
    setConnected(true);
    T.connects.push({ recovered: socket.recovered, transport: socket.io.engine.transport.name });
  });
  socket.on("disconnect", (reason) => {
    setConnected(false);
    T.closes.push(reason);
    show("closes", reason);
  });
  socket.on("connect_error", (error) => {
    T.errors.push(error.message);
    show("closes", `connect_error: ${error.message}`);
  });
  socket.onAny((type, data, id) => record({ type, data, id }));
  T.client = { socket };
  T.socket = socket;
};

// Open a plain WebSocket and report how it ended (for the CORS checks).
window.probeWebSocket = (url) =>
  new Promise((resolve) => {
    const ws = new WebSocket(url);
    const frames = [];
    ws.onmessage = (event) => {
      frames.push(JSON.parse(event.data));
      if (frames.length === 1) ws.close(1000);
    };
    ws.onclose = (event) => resolve({ code: event.code, frames });
  });

// The socket.io variant's core (examples/src/realtime-socketio.ts, bundled with socket.io-client).
window.startExampleSocketIO = (url, { token, transports }) => {
  named("examples createRealtimeSocket");
  const { createRealtimeSocket, applyRealtimeMessage } = window.RealtimeExamples;
  T.statuses = [];
  const realtime = createRealtimeSocket({
    url,
    transports,
    getToken: () => token,
    onMessage: (message) => {
      applyRealtimeMessage(
        message,
        (queryKey) => queryClient.invalidateQueries({ queryKey }),
        () => queryClient.invalidateQueries(),
      );
      record(message);
    },
    onResync: (reason) => T.errors.push(`resync: ${reason}`),
    onStatus: (status) => {
      T.statuses.push(status);
      setConnected(status === "open");
    },
    onStopped: (reason) => {
      T.stopped = reason;
      show("closes", `stopped: ${reason}`);
    },
  });
  realtime.connect();
  T.client = realtime;
};
