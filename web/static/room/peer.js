// One RTCPeerConnection per remote peer, negotiated with the W3C "perfect
// negotiation" pattern. For each pair the peer whose id sorts lower is
// polite: on a collision it rolls back its own offer and answers, while the
// impolite peer ignores the incoming offer, so simultaneous offers always
// settle. Candidates trickle over signaling; ICE restarts when the
// connection fails, stays disconnected, or the network changes.

import { VideoFallback, VideoMode, grade, summarize } from "./quality.js";

const KINDS = ["audio", "video"];
// "disconnected" often heals by itself within a few seconds
const DISCONNECTED_GRACE_MS = 4000;
// no answer to our offer, or no connection at all, after this long: re-offer
const STALL_MS = 12000;
// a fresh connection for a peer whose description no longer fits ours (an
// aiortc peer that started over) at most this often
const REBUILD_MIN_INTERVAL_MS = 3000;

export class PeerLink extends EventTarget {
  constructor({ selfId, peer, iceServers, signal, canSignal, media, initiator, debug }) {
    super();
    this.id = peer.id;
    this.peer = peer;
    this.polite = selfId < peer.id;
    this.iceServers = iceServers;
    this.signal = signal;
    this.canSignal = canSignal;
    this.media = media;
    this.debug = debug || {};
    this.pc = null;
    this.senders = {};
    this.remoteStream = new MediaStream();
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.answerPending = false;
    this.restartWanted = false;
    this.inbox = Promise.resolve();
    this.held = [];
    this.timers = {};
    this.lastRebuildAt = 0;
    this.closed = false;
    this.previousTotals = null;
    this.sample = null;
    this.quality = grade(null);
    this.fallback = new VideoFallback();
    this.videoMode = VideoMode.VIDEO;
    this.counters = {
      offersSent: 0,
      offersReceived: 0,
      answersSent: 0,
      collisions: 0,
      ignoredOffers: 0,
      rollbacks: 0,
      iceRestarts: 0,
      rebuilds: 0,
    };
    // the newcomer offers; the others wait for its offer (docs/signaling.md)
    if (initiator) this.open();
  }

  get connectionState() {
    return this.pc ? this.pc.connectionState : "new";
  }

  get connected() {
    return this.connectionState === "connected";
  }

  open() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.senders = {};
    for (const kind of KINDS) this.addSender(pc, kind);
    pc.onnegotiationneeded = () => this.negotiate(pc);
    pc.onicecandidate = ({ candidate }) => this.sendCandidate(pc, candidate);
    pc.ontrack = ({ track }) => this.addRemoteTrack(pc, track);
    pc.oniceconnectionstatechange = () => this.iceChanged(pc);
    pc.onconnectionstatechange = () => this.connectionChanged(pc);
    this.armStallTimer();
    return pc;
  }

  // every connection gets one audio and one video sender from the start,
  // made by addTrack so that a remote offer's sections pair with them
  addSender(pc, kind) {
    const track = this.media.outgoing(kind);
    const sender = pc.addTrack(track || this.media.blank(kind), this.media.outStream);
    if (!track) sender.replaceTrack(null);
    this.senders[kind] = sender;
  }

  // -- outgoing ---------------------------------------------------------

  send(message) {
    if (this.debug.holdOffers) {
      this.held.push(message);
      return true;
    }
    return this.signal(message);
  }

  releaseHeld() {
    const held = this.held;
    this.held = [];
    for (const message of held) this.signal(message);
  }

  async negotiate(pc) {
    if (pc !== this.pc || this.closed) return;
    try {
      this.makingOffer = true;
      await pc.setLocalDescription();
      if (pc !== this.pc || pc.localDescription.type !== "offer") return;
      this.counters.offersSent += 1;
      this.send({ type: "offer", to: this.id, sdp: pc.localDescription.sdp });
      this.armStallTimer();
    } catch (error) {
      console.warn(`peer ${this.id}: could not make an offer`, error);
    } finally {
      this.makingOffer = false;
    }
  }

  sendCandidate(pc, candidate) {
    if (pc !== this.pc) return;
    // null: end of candidates (docs/signaling.md, candidate)
    this.send({ type: "candidate", to: this.id, candidate: candidate ? candidate.toJSON() : null });
  }

  // -- incoming ---------------------------------------------------------

  // messages are handled one at a time, in the order they arrived
  receive(message) {
    this.inbox = this.inbox
      .then(() => this.handle(message))
      .catch((error) => console.warn(`peer ${this.id}: ${message.type} failed`, error));
    return this.inbox;
  }

  async handle(message) {
    if (this.closed) return;
    if (message.type === "offer" || message.type === "answer") {
      await this.handleDescription({ type: message.type, sdp: message.sdp });
    } else if (message.type === "candidate") {
      await this.handleCandidate(message.candidate);
    } else if (message.type === "restart") {
      await this.restartNow("asked");
    }
  }

  async handleDescription(description) {
    const pc = this.pc || this.open();
    const isOffer = description.type === "offer";
    // an answer to an offer we have since rolled back or replaced
    if (!isOffer && pc.signalingState !== "have-local-offer") return;
    if (isOffer) this.counters.offersReceived += 1;
    const ready = !this.makingOffer && (pc.signalingState === "stable" || this.answerPending);
    const collision = isOffer && !ready;
    this.ignoreOffer = collision && !this.polite;
    if (collision) this.counters.collisions += 1;
    if (this.ignoreOffer) {
      this.counters.ignoredOffers += 1;
      return;
    }
    // polite side of a collision: setRemoteDescription rolls our offer back
    if (collision) this.counters.rollbacks += 1;
    this.answerPending = !isOffer;
    try {
      await pc.setRemoteDescription(description);
    } catch (error) {
      if (!isOffer || !this.mayRebuild()) throw error;
      await this.answerOnFreshConnection(description, error);
      return;
    } finally {
      this.answerPending = false;
    }
    if (isOffer) await this.answer(pc);
    else this.armStallTimer();
  }

  async answer(pc) {
    await pc.setLocalDescription();
    if (pc !== this.pc) return;
    this.counters.answersSent += 1;
    this.send({ type: "answer", to: this.id, sdp: pc.localDescription.sdp });
  }

  // The offer does not fit our connection (new DTLS fingerprint: the other
  // side started over, as aiortc peers do). Start over too and answer.
  async answerOnFreshConnection(description, error) {
    console.info(`peer ${this.id}: starting a fresh connection (${error.name})`);
    this.rebuild();
    await this.pc.setRemoteDescription(description);
    await this.answer(this.pc);
  }

  mayRebuild() {
    return performance.now() - this.lastRebuildAt > REBUILD_MIN_INTERVAL_MS;
  }

  async handleCandidate(candidate) {
    const pc = this.pc;
    if (!pc || !pc.remoteDescription) return;
    try {
      if (candidate) await pc.addIceCandidate(candidate);
      else await pc.addIceCandidate();
    } catch (error) {
      // candidates of an offer we ignored are expected to fail
      if (!this.ignoreOffer) console.warn(`peer ${this.id}: candidate refused`, error);
    }
  }

  addRemoteTrack(pc, track) {
    if (pc !== this.pc) return;
    for (const old of this.remoteStream.getTracks()) {
      if (old.kind === track.kind) this.remoteStream.removeTrack(old);
    }
    this.remoteStream.addTrack(track);
    this.emit("stream");
  }

  // -- recovery -----------------------------------------------------------

  iceChanged(pc) {
    if (pc !== this.pc) return;
    clearTimeout(this.timers.disconnected);
    const state = pc.iceConnectionState;
    if (state === "failed") {
      this.restart("failed");
    } else if (state === "disconnected") {
      this.timers.disconnected = setTimeout(() => {
        if (pc === this.pc && pc.iceConnectionState === "disconnected") {
          this.restart("disconnected");
        }
      }, DISCONNECTED_GRACE_MS);
    }
  }

  connectionChanged(pc) {
    if (pc !== this.pc) return;
    if (pc.connectionState === "connected") clearTimeout(this.timers.stall);
    if (pc.connectionState === "failed") this.restart("failed");
    this.emit("state");
  }

  // Restart ICE; with signaling down the offer would be lost, so wait for
  // the room to call resume() once the socket has rejoined.
  restart(reason) {
    if (this.closed) return;
    if (!this.canSignal()) {
      this.restartWanted = true;
      return;
    }
    this.inbox = this.inbox
      .then(() => this.restartNow(reason))
      .catch((error) => console.warn(`peer ${this.id}: ICE restart failed`, error));
  }

  async restartNow(reason) {
    const pc = this.pc;
    if (!pc || this.closed) return;
    this.restartWanted = false;
    this.counters.iceRestarts += 1;
    console.info(`peer ${this.id}: ICE restart (${reason})`);
    if (pc.signalingState === "have-local-offer") {
      // our offer went unanswered (lost while a socket was down): take it
      // back, or the restart would wait for an answer that never comes
      await pc.setLocalDescription({ type: "rollback" });
    }
    pc.restartIce();
    this.armStallTimer();
  }

  useIceServers(iceServers) {
    this.iceServers = iceServers;
    if (!this.pc) return;
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers });
    } catch (error) {
      console.warn(`peer ${this.id}: kept the old ICE servers`, error);
    }
  }

  resume() {
    if (this.restartWanted || (this.pc && !this.connected)) this.restart("rejoined");
  }

  // no answer or no connection after STALL_MS: try again with an ICE restart
  armStallTimer() {
    clearTimeout(this.timers.stall);
    this.timers.stall = setTimeout(() => {
      if (this.pc && !this.connected && !this.closed) this.restart("stalled");
    }, STALL_MS);
  }

  rebuild() {
    this.counters.rebuilds += 1;
    this.lastRebuildAt = performance.now();
    this.shutPeerConnection();
    this.remoteStream = new MediaStream();
    this.previousTotals = null;
    this.open();
    this.applyVideoMode();
    this.emit("stream");
  }

  // -- media and stats ------------------------------------------------------

  // the local tracks changed (mute, camera, screen): swap them in place
  async updateTracks() {
    if (!this.pc) return;
    for (const kind of KINDS) {
      const sender = this.senders[kind];
      const track = this.media.outgoing(kind);
      if (sender && sender.track !== track) await sender.replaceTrack(track);
    }
  }

  async measure() {
    const pc = this.pc;
    if (!pc || this.closed) return null;
    const now = performance.now();
    const sample = summarize(await pc.getStats(), this.previousTotals, now);
    if (pc !== this.pc) return null;
    this.previousTotals = sample.totals;
    this.sample = sample;
    this.quality = this.connected ? grade(sample) : grade(null);
    if (this.connected) {
      const mode = this.fallback.update(sample);
      if (mode !== this.videoMode) {
        this.videoMode = mode;
        await this.applyVideoMode();
      }
    }
    this.emit("stats");
    return sample;
  }

  // audio-only fallback: stop sending video without renegotiating
  async applyVideoMode() {
    const sender = this.senders.video;
    if (!sender) return;
    const parameters = sender.getParameters();
    if (!parameters.encodings || !parameters.encodings.length) return;
    const active = this.videoMode === VideoMode.VIDEO;
    if (parameters.encodings.every((encoding) => encoding.active === active)) return;
    for (const encoding of parameters.encodings) encoding.active = active;
    await sender.setParameters(parameters);
    this.emit("mode");
  }

  snapshot() {
    const pc = this.pc;
    return {
      id: this.id,
      polite: this.polite,
      signalingState: pc ? pc.signalingState : "none",
      connectionState: this.connectionState,
      iceConnectionState: pc ? pc.iceConnectionState : "new",
      framesDecoded: this.sample ? this.sample.framesDecoded : 0,
      rttMs: this.sample ? this.sample.rttMs : null,
      quality: this.quality,
      videoMode: this.videoMode,
      held: this.held.length,
      counters: { ...this.counters },
    };
  }

  // -- teardown -------------------------------------------------------------

  shutPeerConnection() {
    const pc = this.pc;
    if (!pc) return;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = null;
    pc.oniceconnectionstatechange = pc.onconnectionstatechange = null;
    pc.close();
    this.pc = null;
  }

  close() {
    this.closed = true;
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.shutPeerConnection();
    this.emit("closed");
  }

  emit(name) {
    this.dispatchEvent(new Event(name));
  }
}
