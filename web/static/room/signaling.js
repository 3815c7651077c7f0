// The signaling socket (docs/signaling.md, version 1): join, answer the
// server's heartbeat, notice a dead socket, and reconnect with backoff so the
// peer rejoins within the grace window and keeps its peer id.

const SUBPROTOCOL = "huiyun.signaling.v1";
const PROTOCOL_VERSION = 1;
// after these close codes a new connection cannot help (protocol: close codes)
const FINAL_CLOSE_CODES = new Set([1000, 1008, 1009, 4401, 4403, 4409, 4410]);
const FINAL_BYES = new Set(["replaced", "admission_ended", "left"]);
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10000;
// a code of our own (4000-4999 are free for applications): heartbeat lost
const WATCHDOG_CLOSE_CODE = 4000;
const SILENT_INTERVALS = 2.5; // docs/signaling.md, heartbeat

export const SocketState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  JOINED: "joined",
  WAITING: "waiting", // a reconnect is scheduled
  CLOSED: "closed", // for good: left, refused, replaced
});

const MOVES = {
  idle: ["connecting", "closed"],
  connecting: ["joined", "waiting", "closed"],
  joined: ["waiting", "closed"],
  waiting: ["connecting", "closed"],
  closed: [],
};

export class SignalingStateError extends Error {}

export function backoffDelayMs(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  // jitter keeps a roomful of clients from reconnecting in step
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export class SignalingClient extends EventTarget {
  constructor({ url, room, keepConnections = () => false }) {
    super();
    this.url = url;
    this.room = room;
    this.keepConnections = keepConnections;
    this.state = SocketState.IDLE;
    this.peerId = null;
    this.welcome = null;
    this.ws = null;
    this.attempt = 0;
    this.lastError = null;
    this.lastBye = null;
    this.lastHeardAt = 0;
    this.heartbeatMs = 10000;
    this.retryTimer = null;
    this.watchdog = null;
    this.joins = 0;
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  get joined() {
    return this.state === SocketState.JOINED;
  }

  send(message) {
    const ws = this.ws;
    if (!this.joined || !ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  leave() {
    this.send({ type: "leave" });
    this.finish({ code: 1000, reason: "left" });
  }

  // the network came back: skip the rest of the backoff
  reconnectNow() {
    if (this.state !== SocketState.WAITING) return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.connect();
  }

  move(next, detail = {}) {
    const current = this.state;
    if (!MOVES[current].includes(next)) {
      throw new SignalingStateError(
        `signaling cannot go from ${current} to ${next}`,
      );
    }
    this.state = next;
    console.debug(`signaling ${current} -> ${next}`);
    this.dispatchEvent(new CustomEvent("state", { detail: { state: next, ...detail } }));
  }

  connect() {
    this.move(SocketState.CONNECTING, { attempt: this.attempt });
    this.lastError = null;
    this.lastBye = null;
    const ws = new WebSocket(this.url, [SUBPROTOCOL]);
    this.ws = ws;
    ws.onopen = () => this.sendJoin(ws);
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(ws, event.code);
  }

  sendJoin(ws) {
    const join = {
      type: "join",
      v: PROTOCOL_VERSION,
      room: this.room,
      keep_connections: this.joins > 0 && this.keepConnections(),
    };
    ws.send(JSON.stringify(join));
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn("signaling: ignored a frame that is not JSON");
      return;
    }
    this.lastHeardAt = performance.now();
    if (message.type === "ping") {
      this.ws.send(JSON.stringify({ type: "pong", t: message.t }));
      return;
    }
    if (message.type === "welcome") this.joinedRoom(message);
    if (message.type === "error") this.lastError = message;
    if (message.type === "bye") this.lastBye = message.reason;
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
  }

  joinedRoom(welcome) {
    const resumedWith = this.peerId;
    this.welcome = welcome;
    this.peerId = welcome.peer_id;
    this.heartbeatMs = welcome.heartbeat_seconds * 1000;
    this.attempt = 0;
    this.joins += 1;
    this.startWatchdog();
    this.move(SocketState.JOINED, {
      resumed: welcome.resumed,
      samePeerId: resumedWith === welcome.peer_id,
    });
  }

  // the server pings every interval; 2.5 intervals without a word means the
  // socket is dead even if the browser has not noticed (half-open TCP)
  startWatchdog() {
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      const silentMs = performance.now() - this.lastHeardAt;
      if (silentMs > SILENT_INTERVALS * this.heartbeatMs) this.drop();
    }, this.heartbeatMs / 2);
  }

  drop() {
    const ws = this.ws;
    if (!ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close(WATCHDOG_CLOSE_CODE, "heartbeat lost");
    } catch {
      // already closing: nothing more to do
    }
    this.closed(ws, WATCHDOG_CLOSE_CODE);
  }

  closed(ws, code) {
    if (ws !== this.ws || this.state === SocketState.CLOSED) return;
    clearInterval(this.watchdog);
    this.ws = null;
    const final = FINAL_CLOSE_CODES.has(code) || FINAL_BYES.has(this.lastBye);
    if (final) {
      this.finish({ code, reason: this.lastBye || this.lastError?.code || "closed" });
      return;
    }
    const delayMs = backoffDelayMs(this.attempt);
    this.attempt += 1;
    this.move(SocketState.WAITING, { code, delayMs, error: this.lastError });
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  finish(detail) {
    if (this.state === SocketState.CLOSED) return;
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    window.removeEventListener("online", this.onOnline);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.move(SocketState.CLOSED, { ...detail, error: this.lastError });
  }
}
