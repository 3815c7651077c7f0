// Connection quality from getStats: round-trip time, packet loss and bitrate
// per interval, a grade for the participant list, and the rule that pauses
// outgoing video when the link is too poor for it (audio-only fallback).
// Pure functions of their inputs, so the rules can be checked with numbers.

export const Grade = Object.freeze({
  UNKNOWN: "unknown",
  GOOD: "good",
  FAIR: "fair",
  POOR: "poor",
});

export const VideoMode = Object.freeze({ VIDEO: "video", AUDIO_ONLY: "audio-only" });

// thresholds for the grade; 150 ms of round trip is where talk starts to feel
// delayed, 400 ms where people talk over each other
const FAIR_RTT_MS = 200;
const POOR_RTT_MS = 400;
const FAIR_LOSS_PERCENT = 3;
const POOR_LOSS_PERCENT = 8;

// the audio-only rule: video needs a few hundred kbit/s; below this the
// sound breaks up too, so video yields
const POOR_SEND_KBPS = 150;
const GOOD_SEND_KBPS = 350;
const POOR_SEND_LOSS = 0.15;
const GOOD_SEND_LOSS = 0.05;
const POOR_SAMPLES_TO_FALL_BACK = 3;
const GOOD_SAMPLES_TO_RECOVER = 5;
// with video paused the bandwidth estimate has little traffic to learn from
// and the video loss figure goes stale, so video is tried again this often
const SAMPLES_BEFORE_RETRY = 15;

function emptyTotals() {
  return { at: 0, bytesIn: 0, bytesOut: 0, packetsIn: 0, lostIn: 0 };
}

// Reduce one RTCStatsReport (anything with values()) to a sample; `previous`
// is the totals of the last sample, for rates over the interval.
export function summarize(report, previous = null, nowMs = 0) {
  const stats = [...report.values()];
  const totals = emptyTotals();
  totals.at = nowMs;
  const sample = {
    rttMs: null,
    lossPercent: null,
    inKbps: null,
    outKbps: null,
    availableOutKbps: null,
    sendLoss: null,
    framesDecoded: 0,
    framesPerSecond: null,
    totals,
  };
  const pair = selectedPair(stats);
  if (pair) {
    if (pair.currentRoundTripTime !== undefined) {
      sample.rttMs = Math.round(pair.currentRoundTripTime * 1000);
    }
    if (pair.availableOutgoingBitrate !== undefined) {
      sample.availableOutKbps = Math.round(pair.availableOutgoingBitrate / 1000);
    }
  }
  for (const entry of stats) addEntry(sample, totals, entry);
  if (previous && previous.at && nowMs > previous.at) {
    rates(sample, totals, previous, nowMs - previous.at);
  }
  return sample;
}

function selectedPair(stats) {
  const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  if (transport) return stats.find((s) => s.id === transport.selectedCandidatePairId);
  return stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
}

function addEntry(sample, totals, entry) {
  if (entry.type === "inbound-rtp") {
    totals.bytesIn += entry.bytesReceived || 0;
    totals.packetsIn += entry.packetsReceived || 0;
    totals.lostIn += Math.max(0, entry.packetsLost || 0);
    if (entry.kind === "video") {
      sample.framesDecoded += entry.framesDecoded || 0;
      if (entry.framesPerSecond !== undefined) sample.framesPerSecond = entry.framesPerSecond;
    }
  } else if (entry.type === "outbound-rtp") {
    totals.bytesOut += entry.bytesSent || 0;
  } else if (entry.type === "remote-inbound-rtp" && entry.kind === "video") {
    if (entry.fractionLost !== undefined) sample.sendLoss = entry.fractionLost;
    if (sample.rttMs === null && entry.roundTripTime !== undefined) {
      sample.rttMs = Math.round(entry.roundTripTime * 1000);
    }
  }
}

function rates(sample, totals, previous, intervalMs) {
  // bytes * 8 / ms = kbit/s
  const kbps = (bytes) => Math.max(0, Math.round((bytes * 8) / intervalMs));
  sample.inKbps = kbps(totals.bytesIn - previous.bytesIn);
  sample.outKbps = kbps(totals.bytesOut - previous.bytesOut);
  const received = totals.packetsIn - previous.packetsIn;
  const lost = totals.lostIn - previous.lostIn;
  if (received + lost > 0) {
    sample.lossPercent = Math.round((Math.max(0, lost) * 1000) / (received + lost)) / 10;
  }
}

export function grade(sample) {
  if (!sample || (sample.rttMs === null && sample.lossPercent === null)) return Grade.UNKNOWN;
  const rtt = sample.rttMs ?? 0;
  const loss = sample.lossPercent ?? 0;
  if (rtt >= POOR_RTT_MS || loss >= POOR_LOSS_PERCENT) return Grade.POOR;
  if (rtt >= FAIR_RTT_MS || loss >= FAIR_LOSS_PERCENT) return Grade.FAIR;
  return Grade.GOOD;
}

function sendIsPoor(sample) {
  const kbps = sample.availableOutKbps;
  return (kbps !== null && kbps < POOR_SEND_KBPS) || (sample.sendLoss ?? 0) > POOR_SEND_LOSS;
}

function sendIsGood(sample, videoPaused) {
  const kbps = sample.availableOutKbps;
  const loss = videoPaused ? 0 : (sample.sendLoss ?? 0);
  return (kbps === null || kbps >= GOOD_SEND_KBPS) && loss < GOOD_SEND_LOSS;
}

// Hysteresis: a few poor samples in a row pause video, more good ones bring
// it back, so a single bad second does not make the picture flicker.
export class VideoFallback {
  constructor() {
    this.mode = VideoMode.VIDEO;
    this.poorRun = 0;
    this.goodRun = 0;
    this.pausedRun = 0;
  }

  update(sample) {
    const paused = this.mode === VideoMode.AUDIO_ONLY;
    this.poorRun = !paused && sendIsPoor(sample) ? this.poorRun + 1 : 0;
    this.goodRun = sendIsGood(sample, paused) ? this.goodRun + 1 : 0;
    this.pausedRun = paused ? this.pausedRun + 1 : 0;
    if (!paused && this.poorRun >= POOR_SAMPLES_TO_FALL_BACK) {
      this.mode = VideoMode.AUDIO_ONLY;
      this.goodRun = 0;
    } else if (
      paused &&
      (this.goodRun >= GOOD_SAMPLES_TO_RECOVER || this.pausedRun >= SAMPLES_BEFORE_RETRY)
    ) {
      this.mode = VideoMode.VIDEO;
      this.poorRun = 0;
      this.pausedRun = 0;
    }
    return this.mode;
  }
}
