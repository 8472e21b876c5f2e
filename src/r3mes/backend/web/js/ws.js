// Live channels (/ws/...): one socket per channel, reconnected with backoff, JSON messages.
// The server pings; we answer pong. Closing the returned handle stops reconnecting.

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/**
 * subscribe("/ws/blocks", onMessage, {onState}) -> {close()}.
 * onState("open" | "closed" | "retrying") lets the page show whether it is live.
 */
export function subscribe(path, onMessage, { onState = () => {} } = {}) {
  let socket = null;
  let stopped = false;
  let delay = 500;
  let timer = null;

  function connect() {
    if (stopped) return;
    socket = new WebSocket(wsUrl(path));
    socket.addEventListener("open", () => {
      delay = 500;
      onState("open");
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && message.type === "ping") {
        socket.send(JSON.stringify({ type: "pong", ts: message.ts ?? null }));
        return;
      }
      onMessage(message);
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      if (stopped) return;
      // 1008 policy, 4001 unauthorised, 4003 bad request, 4029 too many sockets from this
      // address: retrying will not help (until the user logs in or closes other tabs).
      if ([1008, 4001, 4003, 4029].includes(event.code)) {
        onState("closed");
        return;
      }
      onState("retrying");
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    });
  }

  connect();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000, "page left");
    },
  };
}
