// "Test my connection": send camera and microphone to the server's echo
// peer (aiortc), which sends them straight back; report whether media flows
// both ways and the round-trip time. The echo is not trickle ICE: the offer
// is posted once gathering is complete (docs/signaling.md, echo peer).

import { LocalMedia } from "./media.js";
import { t } from "./text.js";

const FRAMES_FOR_SUCCESS = 30;
const TEST_SECONDS = 20;
const GATHER_TIMEOUT_MS = 5000;
const PING_INTERVAL_MS = 500;

function byId(id) {
  return document.getElementById(id);
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// a moving picture, for when there is no camera: the network is still tested
function syntheticVideo() {
  const canvas = document.createElement("canvas");
  canvas.width = 320;
  canvas.height = 180;
  const context = canvas.getContext("2d");
  let frame = 0;
  const timer = setInterval(() => {
    frame += 1;
    context.fillStyle = `hsl(${(frame * 7) % 360} 60% 45%)`;
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.fillStyle = "#fff";
    context.fillRect((frame * 4) % canvas.width, 70, 40, 40);
  }, 66);
  const track = canvas.captureStream(15).getVideoTracks()[0];
  track.addEventListener("ended", () => clearInterval(timer));
  return track;
}

function isSelectedPair(entry) {
  return entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded";
}

function waitForGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    // send what we have: host candidates arrive at once, others may never
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

class ConnectionTest {
  constructor(root) {
    this.root = root;
    this.echoUrl = root.dataset.echoUrl;
    this.csrf = root.dataset.csrf;
    this.iceServers = JSON.parse(root.dataset.iceServers || "[]");
    this.media = new LocalMedia();
    this.pc = null;
    this.channel = null;
    this.pings = [];
    this.timers = [];
    this.synthetic = null;
  }

  async run() {
    this.reset();
    this.show("running", "test_starting");
    const problems = await this.media.start();
    this.showProblems(problems);
    const tracks = this.localTracks();
    byId("test-local").srcObject = new MediaStream(tracks);
    try {
      await this.connect(tracks);
    } catch (error) {
      this.fail(error.message || "test_failed");
      return;
    }
    this.show("running", "test_measuring");
    this.timers.push(setInterval(() => this.ping(), PING_INTERVAL_MS));
    this.timers.push(setInterval(() => this.check(), 1000));
    this.deadline = performance.now() + TEST_SECONDS * 1000;
  }

  localTracks() {
    const tracks = [];
    if (this.media.microphone) tracks.push(this.media.microphone);
    if (this.media.camera) tracks.push(this.media.camera);
    else {
      this.synthetic = syntheticVideo();
      tracks.push(this.synthetic);
    }
    return tracks;
  }

  async connect(tracks) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const stream = new MediaStream(tracks);
    for (const track of tracks) pc.addTrack(track, stream);
    pc.ontrack = ({ track }) => this.echoed(track);
    this.channel = pc.createDataChannel("rtt");
    this.channel.onmessage = (event) => this.pong(event.data);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    const answer = await this.post({ type: "offer", sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription(answer);
  }

  async post(offer) {
    let response;
    try {
      response = await fetch(this.echoUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": this.csrf },
        body: JSON.stringify(offer),
        credentials: "same-origin",
      });
    } catch {
      throw new Error("test_unreachable");
    }
    if (response.status === 401) throw new Error("test_login");
    if (response.status === 429) throw new Error("test_busy");
    if (!response.ok) throw new Error("test_failed");
    return response.json();
  }

  echoed(track) {
    const video = byId("test-remote");
    const stream = video.srcObject || new MediaStream();
    stream.addTrack(track);
    video.srcObject = stream;
    video.play().catch(() => {});
  }

  ping() {
    if (this.channel?.readyState !== "open") return;
    this.channel.send(JSON.stringify({ sent: performance.now() }));
  }

  pong(data) {
    try {
      const { sent } = JSON.parse(data);
      this.pings.push(performance.now() - sent);
    } catch {
      // not one of ours: ignore
    }
  }

  async check() {
    const figures = await this.figures();
    this.showFigures(figures);
    if (figures.framesDecoded >= FRAMES_FOR_SUCCESS && figures.rttMs !== null) {
      this.finish(figures);
    } else if (performance.now() > this.deadline) {
      this.fail(figures.framesDecoded ? "test_slow" : "test_no_media", figures);
    }
  }

  async figures() {
    const figures = { framesDecoded: 0, audioPackets: 0, rttMs: null, mediaRttMs: null };
    for (const entry of (await this.pc.getStats()).values()) {
      if (entry.type === "inbound-rtp" && entry.kind === "video") {
        figures.framesDecoded = entry.framesDecoded || 0;
      } else if (entry.type === "inbound-rtp" && entry.kind === "audio") {
        figures.audioPackets = entry.packetsReceived || 0;
      } else if (isSelectedPair(entry) && entry.currentRoundTripTime !== undefined) {
        figures.mediaRttMs = Math.round(entry.currentRoundTripTime * 1000);
      }
    }
    const fromChannel = median(this.pings);
    figures.rttMs = fromChannel !== null ? Math.round(fromChannel) : figures.mediaRttMs;
    return figures;
  }

  showFigures(figures) {
    byId("test-frames").textContent = String(figures.framesDecoded);
    byId("test-audio").textContent = t(figures.audioPackets > 0 ? "yes" : "no");
    byId("test-rtt").textContent = figures.rttMs === null ? "—" : `${figures.rttMs} ms`;
  }

  finish(figures) {
    this.stop();
    this.root.dataset.framesDecoded = String(figures.framesDecoded);
    this.root.dataset.rttMs = String(figures.rttMs);
    this.root.dataset.audio = String(figures.audioPackets > 0);
    this.show("ok", "test_ok", { ms: figures.rttMs });
  }

  fail(key, figures = null) {
    this.stop();
    if (figures) this.showFigures(figures);
    this.show("failed", key.startsWith("test_") ? key : "test_failed");
  }

  show(status, key, values = {}) {
    this.root.dataset.status = status;
    byId("test-result").textContent = t(key, values);
    byId("test-start").disabled = status === "running";
  }

  showProblems(keys) {
    byId("test-problems").replaceChildren(...keys.map((key) => {
      const item = document.createElement("p");
      item.className = "alert";
      item.textContent = t(key);
      return item;
    }));
  }

  reset() {
    this.stop();
    this.pings = [];
    byId("test-remote").srcObject = null;
  }

  // close at once: the server runs only a few echo sessions at a time
  stop() {
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    this.pc?.close();
    this.pc = null;
    this.synthetic?.stop();
    this.synthetic = null;
    this.media.stop();
  }
}

const root = document.getElementById("connection-test");
if (root) {
  const test = new ConnectionTest(root);
  byId("test-start").addEventListener("click", () => test.run());
}
