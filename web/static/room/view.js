// The room's page: video tiles, participant list, chat, status and alerts.
// Only DOM work lives here; room.js decides what to show. Text from other
// people is always set with textContent, never parsed as HTML.

import { has, t } from "./text.js";

const QUALITY_KEYS = {
  unknown: "quality_unknown",
  good: "quality_good",
  fair: "quality_fair",
  poor: "quality_poor",
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

export class RoomView {
  constructor(root) {
    this.root = root;
    this.grid = byId("video-grid");
    this.localTile = byId("tile-local");
    this.tiles = new Map();
    this.language = document.documentElement.lang || "zh-CN";
  }

  // -- status and alerts ------------------------------------------------

  status(key, values = {}, state = "") {
    const node = byId("room-status");
    node.textContent = t(key, values);
    node.dataset.state = state;
  }

  problems(keys) {
    const holder = byId("room-problems");
    holder.replaceChildren(...keys.map((key) => {
      const item = element("p", "alert", t(key));
      item.dataset.problem = key;
      return item;
    }));
  }

  notice(key) {
    const holder = byId("room-notice");
    holder.textContent = key ? t(key) : "";
    holder.classList.toggle("hidden", !key);
    holder.dataset.notice = key || "";
  }

  setRecording(on) {
    byId("recording-badge").classList.toggle("hidden", !on);
  }

  ended(key) {
    this.status(key, {}, "closed");
    this.root.classList.add("ended");
    byId("btn-rejoin").classList.remove("hidden");
    for (const id of ["btn-mic", "btn-camera", "btn-share", "btn-leave"]) {
      byId(id).disabled = true;
    }
    byId("chat-send").disabled = true;
  }

  // -- controls -----------------------------------------------------------

  bind(handlers) {
    byId("btn-mic").addEventListener("click", handlers.toggleMic);
    byId("btn-camera").addEventListener("click", handlers.toggleCamera);
    byId("btn-share").addEventListener("click", handlers.toggleShare);
    byId("btn-leave").addEventListener("click", handlers.leave);
    byId("btn-rejoin").addEventListener("click", () => window.location.reload());
    byId("btn-sound").addEventListener("click", () => this.playAllSound());
    byId("btn-devices").addEventListener("click", () => this.toggleDevices());
    byId("camera-select").addEventListener("change", (event) =>
      handlers.chooseDevice("video", event.target.value));
    byId("microphone-select").addEventListener("change", (event) =>
      handlers.chooseDevice("audio", event.target.value));
    byId("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = byId("chat-input");
      const text = input.value.trim();
      if (text && handlers.sendChat(text)) input.value = "";
    });
  }

  toggleDevices() {
    const panel = byId("device-panel");
    const open = panel.classList.toggle("hidden") === false;
    byId("btn-devices").setAttribute("aria-expanded", String(open));
  }

  showControls(media, canSignal) {
    const mic = byId("btn-mic");
    mic.textContent = t(media.audioMuted ? "unmute" : "mute");
    mic.setAttribute("aria-pressed", String(media.audioMuted));
    mic.disabled = !media.microphone;
    const camera = byId("btn-camera");
    camera.textContent = t(media.camera ? "camera_off" : "camera_on");
    camera.setAttribute("aria-pressed", String(!media.camera));
    const share = byId("btn-share");
    share.textContent = t(media.screen ? "share_stop" : "share_start");
    share.setAttribute("aria-pressed", String(Boolean(media.screen)));
    share.disabled = !navigator.mediaDevices?.getDisplayMedia;
    byId("chat-send").disabled = !canSignal;
  }

  fillDevices(devices, media) {
    fillSelect(byId("camera-select"), devices.video, media.cameraId, "camera_n");
    fillSelect(byId("microphone-select"), devices.audio, media.microphoneId, "microphone_n");
  }

  // -- tiles ------------------------------------------------------------------

  showLocal(media) {
    const track = media.outgoing("video");
    const video = this.localTile.querySelector("video");
    const current = video.srcObject?.getVideoTracks()[0];
    if (track && track !== current) video.srcObject = new MediaStream([track]);
    if (!track) video.srcObject = null;
    this.localTile.classList.toggle("off", !track);
    this.localTile.classList.toggle("screen", Boolean(media.screen));
    this.localTile.classList.toggle("muted", media.audioMuted || !media.microphone);
  }

  addTile(peer) {
    this.removeTile(peer.id);
    const tile = element("figure", "tile remote");
    tile.dataset.peer = peer.id;
    const video = element("video");
    video.muted = true; // sound plays through the <audio> below
    video.autoplay = true;
    video.playsInline = true;
    const audio = element("audio");
    audio.autoplay = true;
    const off = element("div", "tile-off", t("camera_is_off"));
    const paused = element("div", "tile-paused", t("video_paused_remote"));
    const caption = element("figcaption");
    caption.append(element("span", "tile-name", peer.name), element("span", "tile-badges"));
    tile.append(video, audio, off, paused, caption);
    this.grid.append(tile);
    this.tiles.set(peer.id, tile);
    return tile;
  }

  removeTile(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    for (const media of tile.querySelectorAll("video, audio")) media.srcObject = null;
    tile.remove();
    this.tiles.delete(id);
  }

  attachStream(link) {
    const tile = this.tiles.get(link.id);
    if (!tile) return;
    const video = tile.querySelector("video");
    const audio = tile.querySelector("audio");
    if (video.srcObject !== link.remoteStream) video.srcObject = link.remoteStream;
    if (audio.srcObject !== link.remoteStream) audio.srcObject = link.remoteStream;
    video.play().catch(() => {});
    this.playSound(audio);
  }

  // browsers may refuse to start sound before the user touched the page
  playSound(audio) {
    audio.play().catch((error) => {
      if (error.name === "NotAllowedError") byId("btn-sound").classList.remove("hidden");
    });
  }

  playAllSound() {
    byId("btn-sound").classList.add("hidden");
    for (const audio of this.grid.querySelectorAll("audio")) this.playSound(audio);
  }

  renderTile(peer, link) {
    const tile = this.tiles.get(peer.id);
    if (!tile) return;
    tile.querySelector(".tile-name").textContent = peer.name;
    tile.classList.toggle("off", Boolean(peer.video_muted));
    tile.classList.toggle("screen", Boolean(peer.screen_sharing));
    tile.classList.toggle("away", Boolean(peer.away));
    const stalled = Boolean(link?.videoStalled) && !peer.video_muted && !peer.screen_sharing;
    tile.classList.toggle("stalled", stalled);
    tile.dataset.connection = link ? link.connectionState : "new";
    tile.dataset.framesDecoded = String(link?.sample?.framesDecoded ?? 0);
    const badges = [];
    if (peer.audio_muted) badges.push(t("badge_muted"));
    if (peer.away) badges.push(t("badge_reconnecting"));
    tile.querySelector(".tile-badges").textContent = badges.join(" · ");
  }

  videoFrames(id) {
    const video = this.tiles.get(id)?.querySelector("video");
    if (!video || !video.getVideoPlaybackQuality) return 0;
    return video.getVideoPlaybackQuality().totalVideoFrames;
  }

  // -- participant list ---------------------------------------------------------

  participants(selfName, media, roster, links) {
    const list = byId("participants");
    const items = [participantItem({
      id: "self",
      name: `${selfName} (${t("you")})`,
      audio_muted: media.mediaState().audio_muted,
      video_muted: media.mediaState().video_muted,
      screen_sharing: Boolean(media.screen),
    }, null)];
    for (const peer of roster.values()) items.push(participantItem(peer, links.get(peer.id)));
    list.replaceChildren(...items);
    byId("participant-count").textContent = String(items.length);
  }

  // -- chat -----------------------------------------------------------------------

  addChat({ name, text, at, self }) {
    const item = element("li", self ? "chat-line self" : "chat-line");
    const time = new Date(at).toLocaleTimeString(this.language, {
      hour: "2-digit",
      minute: "2-digit",
    });
    item.append(
      element("span", "chat-meta", `${name} · ${time}`),
      element("span", "chat-text", text),
    );
    const log = byId("chat-log");
    log.append(item);
    log.scrollTop = log.scrollHeight;
  }
}

function participantItem(peer, link) {
  const item = element("li", "participant");
  item.dataset.peer = peer.id;
  const head = element("div", "participant-head");
  head.append(element("span", "participant-name", peer.name));
  if (peer.role && peer.role !== "participant") {
    // roles are named by the room's owner; unknown ones are shown as given
    const key = `role_${peer.role}`;
    head.append(element("span", "participant-role", has(key) ? t(key) : peer.role));
  }
  const flags = [];
  if (peer.audio_muted) flags.push(t("badge_muted"));
  if (peer.video_muted) flags.push(t("badge_camera_off"));
  if (peer.screen_sharing) flags.push(t("badge_sharing"));
  if (peer.away) flags.push(t("badge_reconnecting"));
  item.append(head);
  if (flags.length) item.append(element("div", "participant-flags", flags.join(" · ")));
  if (link) item.append(qualityLine(link));
  return item;
}

function qualityLine(link) {
  const line = element("div", "participant-quality");
  const quality = link.connected ? link.quality : "unknown";
  line.dataset.quality = quality;
  const label = link.connected ? t(QUALITY_KEYS[quality]) : t("connecting_peer");
  const parts = [label];
  const sample = link.sample;
  if (link.connected && sample) {
    if (sample.rttMs !== null) parts.push(t("stat_rtt", { ms: sample.rttMs }));
    if (sample.lossPercent !== null) parts.push(t("stat_loss", { percent: sample.lossPercent }));
    if (sample.inKbps !== null) parts.push(t("stat_bitrate", { kbps: sample.inKbps }));
  }
  if (link.videoMode === "audio-only") parts.push(t("badge_audio_only"));
  line.textContent = parts.join(" · ");
  return line;
}

function fillSelect(select, devices, selectedId, fallbackKey) {
  const options = devices.map((device, index) => {
    const option = element("option", "", device.label || t(fallbackKey, { n: index + 1 }));
    option.value = device.deviceId;
    option.selected = device.deviceId === selectedId;
    return option;
  });
  if (!options.length) {
    const none = element("option", "", t("no_devices"));
    none.value = "";
    options.push(none);
  }
  select.replaceChildren(...options);
  select.disabled = devices.length === 0;
}
