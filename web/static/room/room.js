// The video room: joins over signaling, keeps one PeerLink per other peer
// (a mesh, designed for up to four people plus a recorder), and keeps the
// page in step with who is there, their media state and connection quality.

import { LocalMedia, Problem } from "./media.js";
import { PeerLink } from "./peer.js";
import { SignalingClient, SocketState } from "./signaling.js";
import { RoomView } from "./view.js";

const STATS_INTERVAL_MS = 2000;
const STALLED_SAMPLES = 2;
const ROLE_RECORDER = "recorder";
const DIRECTED = new Set(["offer", "answer", "candidate", "restart"]);

// why the socket closed for good -> what the page says
const ENDINGS = {
  left: "ended_left",
  replaced: "ended_replaced",
  admission_ended: "ended_admission",
  forbidden: "ended_forbidden",
  too_early: "ended_too_early",
  too_late: "ended_too_late",
  unauthenticated: "ended_unauthenticated",
  token_invalid: "ended_unauthenticated",
  token_expired: "ended_unauthenticated",
};
const WAITING_REASONS = {
  room_full: "waiting_room_full",
  too_many_rooms: "waiting_too_many_rooms",
};

function socketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

class Room {
  constructor(root) {
    this.name = root.dataset.room;
    this.selfName = root.dataset.selfName;
    this.view = new RoomView(root);
    this.media = new LocalMedia();
    // set by automated tests before the page loads; empty in real use
    this.debug = window.huiyunDebug || {};
    this.roster = new Map();
    this.links = new Map();
    this.selfId = null;
    this.iceServers = [];
    this.recording = false;
    this.signaling = new SignalingClient({
      url: socketUrl(root.dataset.signalingPath),
      room: this.name,
      keepConnections: () => this.links.size > 0,
    });
  }

  async start() {
    this.view.bind({
      toggleMic: () => this.media.setAudioMuted(!this.media.audioMuted),
      toggleCamera: () => this.toggleCamera(),
      toggleShare: () => this.toggleShare(),
      chooseDevice: (kind, id) => this.chooseDevice(kind, id),
      sendChat: (text) => this.sendChat(text),
      leave: () => this.signaling.leave(),
    });
    this.signaling.addEventListener("state", (event) => this.socketChanged(event.detail));
    this.signaling.addEventListener("message", (event) => this.onMessage(event.detail));
    this.media.addEventListener("change", () => this.localChanged());
    this.watchNetwork();
    // join at once; the camera may still be waiting for the user's permission
    // and its tracks are swapped in when they arrive
    this.signaling.start();
    const problems = await this.media.start();
    this.view.problems(problems);
    this.refreshDevices();
    navigator.mediaDevices?.addEventListener?.("devicechange", () => this.refreshDevices());
    this.statsTimer = setInterval(() => this.measure(), STATS_INTERVAL_MS);
  }

  // -- signaling ----------------------------------------------------------

  socketChanged({ state, delayMs, reason, error, attempt }) {
    if (state === SocketState.CONNECTING) {
      this.view.status(attempt ? "status_reconnecting_now" : "status_connecting", {}, state);
    } else if (state === SocketState.JOINED) {
      this.view.status("status_connected", {}, state);
    } else if (state === SocketState.WAITING) {
      const key = WAITING_REASONS[error?.code] || "status_reconnecting";
      this.view.status(key, { seconds: Math.ceil(delayMs / 1000) }, state);
    } else if (state === SocketState.CLOSED) {
      this.end(ENDINGS[reason] || "ended_closed");
    }
    this.view.showControls(this.media, this.signaling.joined);
  }

  onMessage(message) {
    if (DIRECTED.has(message.type)) {
      this.linkFor(message.from).receive(message);
      return;
    }
    switch (message.type) {
      case "welcome":
        this.onWelcome(message);
        break;
      case "peer-joined":
        this.onPeerJoined(message);
        break;
      case "peer-away":
        this.setAway(message.peer_id, true);
        break;
      case "peer-left":
        this.onPeerLeft(message.peer_id);
        break;
      case "chat":
        this.onChat(message);
        break;
      case "mute":
        this.onMute(message);
        break;
      case "error":
        console.warn(`signaling error ${message.code}: ${message.message}`);
        break;
    }
  }

  onWelcome(welcome) {
    const samePeer = welcome.resumed && welcome.peer_id === this.selfId;
    this.selfId = welcome.peer_id;
    this.iceServers = welcome.ice_servers;
    // a new peer id means the others forgot us: start every link afresh
    if (!samePeer) this.dropAllLinks();
    this.roster = new Map(welcome.peers.map((peer) => [peer.id, { ...peer, away: false }]));
    for (const id of [...this.links.keys()]) {
      if (!this.roster.has(id)) this.dropLink(id);
    }
    for (const peer of welcome.peers) {
      const link = this.links.get(peer.id);
      if (!link) {
        this.addLink(peer, true);
        continue;
      }
      // fresh TURN credentials for the ICE restarts to come
      link.useIceServers(welcome.ice_servers);
      link.resume();
    }
    this.recording = welcome.recording;
    this.sendMediaState();
    this.render();
  }

  onPeerJoined({ peer, rejoined, renegotiate }) {
    this.roster.set(peer.id, { ...peer, away: false });
    const link = this.links.get(peer.id);
    if (rejoined && renegotiate === "restart" && link) {
      // it kept its connection and restarts ICE; if it was waiting for an
      // offer of ours that was lost meanwhile, send one again
      link.peer = peer;
      if (!link.pc) link.open();
      else link.resume();
    } else {
      // new, or back without its connections: fresh link, wait for its offer
      this.dropLink(peer.id);
      const offer = Boolean(this.debug.offerOnPeerJoined) || renegotiate === "restart";
      this.addLink(peer, offer);
    }
    this.render();
  }

  setAway(id, away) {
    const peer = this.roster.get(id);
    if (peer) peer.away = away;
    this.render();
  }

  onPeerLeft(id) {
    this.roster.delete(id);
    this.dropLink(id);
    this.render();
  }

  onMute(message) {
    const peer = this.roster.get(message.from);
    if (!peer) return;
    peer.audio_muted = message.audio_muted;
    peer.video_muted = message.video_muted;
    peer.screen_sharing = message.screen_sharing;
    this.render();
  }

  onChat(message) {
    const peer = this.roster.get(message.from);
    const name = peer ? peer.name : "?";
    this.view.addChat({ name, text: message.text, at: message.t, self: false });
  }

  sendChat(text) {
    if (!this.signaling.send({ type: "chat", text })) return false;
    this.view.addChat({ name: this.selfName, text, at: Date.now(), self: true });
    return true;
  }

  // -- links --------------------------------------------------------------------

  linkFor(id) {
    const known = this.links.get(id);
    if (known) return known;
    const peer = this.roster.get(id) || { id, name: "?", role: "participant" };
    if (!this.roster.has(id)) this.roster.set(id, { ...peer, away: false });
    return this.addLink(peer, false);
  }

  addLink(peer, initiator) {
    const link = new PeerLink({
      selfId: this.selfId,
      peer,
      iceServers: this.iceServers,
      signal: (message) => this.signaling.send(message),
      canSignal: () => this.signaling.joined,
      media: this.media,
      initiator,
      debug: this.debug,
    });
    this.links.set(peer.id, link);
    if (peer.role !== ROLE_RECORDER) this.view.addTile(peer);
    link.addEventListener("stream", () => this.view.attachStream(link));
    link.addEventListener("state", () => this.render());
    link.addEventListener("mode", () => this.render());
    return link;
  }

  dropLink(id) {
    const link = this.links.get(id);
    if (link) link.close();
    this.links.delete(id);
    this.view.removeTile(id);
  }

  dropAllLinks() {
    for (const id of [...this.links.keys()]) this.dropLink(id);
  }

  // -- local media ------------------------------------------------------------

  localChanged() {
    for (const link of this.links.values()) {
      link.updateTracks().catch((error) => console.warn("track swap failed", error));
    }
    this.sendMediaState();
    this.view.showLocal(this.media);
    this.render();
  }

  sendMediaState() {
    this.signaling.send({ type: "mute", ...this.media.mediaState() });
  }

  async toggleCamera() {
    // no camera yet (missing, or refused earlier): the button asks again
    const problem = await this.media.setCameraOff(Boolean(this.media.camera));
    this.view.problems(problem ? [problem] : this.media.problems);
  }

  async toggleShare() {
    if (this.media.screen) {
      this.media.stopScreenShare();
      return;
    }
    const problem = await this.media.startScreenShare();
    if (problem) this.view.problems([problem === Problem.FAILED ? "screen_failed" : problem]);
  }

  async chooseDevice(kind, id) {
    const problem = await this.media.switchDevice(kind, id);
    this.view.problems(problem ? [problem] : this.media.problems);
    this.refreshDevices();
  }

  async refreshDevices() {
    this.view.fillDevices(await this.media.devices(), this.media);
  }

  // -- network and quality --------------------------------------------------------

  watchNetwork() {
    const changed = () => {
      for (const link of this.links.values()) link.restart("network changed");
    };
    window.addEventListener("online", changed);
    navigator.connection?.addEventListener?.("change", changed);
  }

  async measure() {
    for (const link of [...this.links.values()]) {
      const before = link.sample ? link.sample.framesDecoded : 0;
      const sample = await link.measure().catch(() => null);
      const still = Boolean(sample && link.connected && sample.framesDecoded === before);
      link.stillSamples = still ? (link.stillSamples || 0) + 1 : 0;
      // no new frames for two samples: the sender paused video (audio-only
      // fallback) or its link is too poor; the tile says so unless the
      // camera is off or a shared screen simply did not change
      link.videoStalled = link.stillSamples >= STALLED_SAMPLES;
    }
    const paused = [...this.links.values()].some((link) => link.videoMode === "audio-only");
    this.view.notice(paused ? "video_paused_local" : "");
    this.render();
  }

  render() {
    const recorderPresent = [...this.roster.values()].some((p) => p.role === ROLE_RECORDER);
    this.view.setRecording(this.recording || recorderPresent);
    this.view.participants(this.selfName, this.media, this.roster, this.links);
    for (const peer of this.roster.values()) this.view.renderTile(peer, this.links.get(peer.id));
    this.view.showControls(this.media, this.signaling.joined);
  }

  end(key) {
    clearInterval(this.statsTimer);
    this.dropAllLinks();
    this.media.stop();
    this.roster.clear();
    this.render();
    this.view.ended(key);
  }

  // frames decoded (getStats) and shown (the video element) per peer
  async frames() {
    const result = {};
    for (const link of [...this.links.values()]) {
      if (!link.pc) continue;
      let decoded = 0;
      for (const entry of (await link.pc.getStats()).values()) {
        if (entry.type === "inbound-rtp" && entry.kind === "video") {
          decoded += entry.framesDecoded || 0;
        }
      }
      result[link.id] = { decoded, shown: this.view.videoFrames(link.id) };
    }
    return result;
  }

  snapshot() {
    return {
      selfId: this.selfId,
      socket: this.signaling.state,
      joins: this.signaling.joins,
      peers: [...this.roster.values()].map((peer) => ({ ...peer })),
      links: [...this.links.values()].map((link) => ({
        ...link.snapshot(),
        videoFrames: this.view.videoFrames(link.id),
      })),
    };
  }
}

const root = document.getElementById("room");
if (root) {
  const room = new Room(root);
  // a handle for diagnostics in the console and for the browser tests
  window.huiyunRoom = {
    snapshot: () => room.snapshot(),
    frames: () => room.frames(),
    // what the heartbeat watchdog does when the socket goes silent
    dropSocket: () => room.signaling.drop(),
    releaseHeld: () => {
      room.debug.holdOffers = false;
      for (const link of room.links.values()) link.releaseHeld();
    },
  };
  room.start();
}
