// The local camera, microphone and screen: acquiring them with a clear
// reason when that fails, switching devices, mute, camera off and screen
// sharing. Peer links ask outgoing(kind) for what to send.

export const Problem = Object.freeze({
  INSECURE: "insecure_context", // getUserMedia needs https or localhost
  DENIED: "permission_denied",
  CAMERA_MISSING: "camera_missing",
  MICROPHONE_MISSING: "microphone_missing",
  BUSY: "device_busy",
  FAILED: "media_failed",
});

const VIDEO_CONSTRAINTS = {
  // modest defaults: a mesh of four sends three copies of this stream
  width: { ideal: 640 },
  height: { ideal: 360 },
  frameRate: { ideal: 20, max: 30 },
};
const AUDIO_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

export function classify(error, kind) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return Problem.DENIED;
    case "NotFoundError":
    case "OverconstrainedError":
      return kind === "video" ? Problem.CAMERA_MISSING : Problem.MICROPHONE_MISSING;
    case "NotReadableError":
    case "AbortError":
      return Problem.BUSY;
    default:
      return Problem.FAILED;
  }
}

function constraintsFor(kind, deviceId) {
  const base = kind === "video" ? VIDEO_CONSTRAINTS : AUDIO_CONSTRAINTS;
  return deviceId ? { ...base, deviceId: { exact: deviceId } } : { ...base };
}

export class LocalMedia extends EventTarget {
  constructor() {
    super();
    this.microphone = null;
    this.camera = null;
    this.screen = null;
    this.audioMuted = false;
    this.cameraOff = false;
    this.cameraId = "";
    this.microphoneId = "";
    this.problems = [];
    // one stream id for every sender, so the far side sees one stream
    this.outStream = new MediaStream();
    this.blanks = {};
  }

  get supported() {
    return Boolean(navigator.mediaDevices?.getUserMedia);
  }

  // What a peer connection should send now for "audio" or "video".
  outgoing(kind) {
    if (kind === "audio") return this.microphone;
    if (this.screen) return this.screen;
    return this.cameraOff ? null : this.camera;
  }

  mediaState() {
    return {
      audio_muted: this.audioMuted || !this.microphone,
      video_muted: !this.screen && (this.cameraOff || !this.camera),
      screen_sharing: Boolean(this.screen),
    };
  }

  // A track that never carries media: peer connections add it so every
  // connection has an audio and a video sender from the start, then swap in
  // the real track (or none) without renegotiating.
  blank(kind) {
    if (!this.blanks[kind]) {
      this.blanks[kind] = kind === "video" ? blankVideo() : blankAudio();
    }
    return this.blanks[kind];
  }

  async start() {
    this.problems = [];
    if (!this.supported) {
      this.problems.push(Problem.INSECURE);
      return this.problems;
    }
    const present = await this.presentKinds();
    const wanted = ["audio", "video"].filter((kind) => present.has(kind));
    for (const kind of ["audio", "video"]) {
      if (!present.has(kind)) this.problems.push(missing(kind));
    }
    if (wanted.length) await this.acquire(wanted);
    this.changed();
    return this.problems;
  }

  // enumerateDevices shows device kinds even before permission is given
  async presentKinds() {
    try {
      const devices = await navigator.mediaDevices.enumerateDevices();
      const kinds = new Set();
      for (const device of devices) {
        if (device.kind === "audioinput") kinds.add("audio");
        if (device.kind === "videoinput") kinds.add("video");
      }
      return kinds;
    } catch {
      return new Set(["audio", "video"]);
    }
  }

  async acquire(kinds) {
    try {
      await this.request(kinds);
    } catch (error) {
      const problem = classify(error, kinds[0]);
      // refused outright, or only one kind asked for: nothing more to try
      if (problem === Problem.DENIED || kinds.length === 1) {
        this.problems.push(problem);
        return;
      }
      // one device failed: try each alone so the other still works
      for (const kind of kinds) {
        try {
          await this.request([kind]);
        } catch (failure) {
          this.problems.push(classify(failure, kind));
        }
      }
    }
  }

  async request(kinds) {
    const constraints = {
      audio: kinds.includes("audio") ? constraintsFor("audio", this.microphoneId) : false,
      video: kinds.includes("video") ? constraintsFor("video", this.cameraId) : false,
    };
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    for (const track of stream.getTracks()) this.adopt(track);
  }

  adopt(track) {
    if (track.kind === "audio") {
      this.microphone?.stop();
      this.microphone = track;
      track.enabled = !this.audioMuted;
      this.microphoneId = track.getSettings().deviceId || this.microphoneId;
    } else {
      this.camera?.stop();
      this.camera = track;
      this.cameraId = track.getSettings().deviceId || this.cameraId;
    }
  }

  setAudioMuted(muted) {
    this.audioMuted = muted;
    // a disabled track sends silence: no renegotiation, instant unmute
    if (this.microphone) this.microphone.enabled = !muted;
    this.changed();
  }

  async setCameraOff(off) {
    if (off) {
      // stop the track so the camera light goes out, not just black frames
      this.camera?.stop();
      this.camera = null;
      this.cameraOff = true;
      this.changed();
      return null;
    }
    this.cameraOff = false;
    const problem = await this.reacquire("video");
    this.changed();
    return problem;
  }

  async switchDevice(kind, deviceId) {
    if (kind === "video") this.cameraId = deviceId;
    else this.microphoneId = deviceId;
    if (kind === "video" && this.cameraOff) return null;
    const problem = await this.reacquire(kind);
    this.changed();
    return problem;
  }

  async reacquire(kind) {
    try {
      await this.request([kind]);
      this.problems = this.problems.filter((p) => p !== missing(kind));
      return null;
    } catch (error) {
      return classify(error, kind);
    }
  }

  async startScreenShare() {
    if (!navigator.mediaDevices?.getDisplayMedia) return Problem.FAILED;
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({
        video: { frameRate: { ideal: 10, max: 15 } },
        audio: false,
      });
    } catch (error) {
      return error?.name === "NotAllowedError" ? null : Problem.FAILED;
    }
    const track = stream.getVideoTracks()[0];
    // ultrasound images and reports: keep resolution, let frame rate drop
    track.contentHint = "detail";
    track.addEventListener("ended", () => this.stopScreenShare());
    this.screen?.stop();
    this.screen = track;
    this.changed();
    return null;
  }

  stopScreenShare() {
    if (!this.screen) return;
    this.screen.stop();
    this.screen = null;
    this.changed();
  }

  async devices() {
    const found = { audio: [], video: [] };
    if (!navigator.mediaDevices?.enumerateDevices) return found;
    for (const device of await navigator.mediaDevices.enumerateDevices()) {
      if (device.kind === "audioinput") found.audio.push(device);
      if (device.kind === "videoinput") found.video.push(device);
    }
    return found;
  }

  stop() {
    for (const track of [this.microphone, this.camera, this.screen]) track?.stop();
    this.microphone = this.camera = this.screen = null;
    this.changed();
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }
}

function missing(kind) {
  return kind === "video" ? Problem.CAMERA_MISSING : Problem.MICROPHONE_MISSING;
}

function blankVideo() {
  const canvas = document.createElement("canvas");
  canvas.width = 2;
  canvas.height = 2;
  // frame rate 0: the track only yields a frame on requestFrame(), never here
  return canvas.captureStream(0).getVideoTracks()[0];
}

function blankAudio() {
  const context = new AudioContext();
  return context.createMediaStreamDestination().stream.getAudioTracks()[0];
}
