// Audio in the page: microphone capture to PCM16 16 kHz, and gapless reply playback with
// per-reply positions (for playback reports and interrupts) and an output level meter.

const LEAD_S = 0.08; // scheduling margin after an underrun, so a chunk is never started late

export class Player {
  constructor() {
    this.ctx = null;
    this.replies = new Map();
    this.playAt = 0;
    this.level = { peak: 0, rms: 0, maxPeak: 0, maxRms: 0 };
    this.onLevel = null;
  }

  /** The playback context; created (or resumed) from a user gesture where autoplay needs one. */
  ensure() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      // Everything played passes the analyser, so the page can tell audio really came out.
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = 2048;
      this.analyser.connect(this.ctx.destination);
      this.samples = new Float32Array(this.analyser.fftSize);
      setInterval(() => this.measure(), 50);
    }
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  }

  measure() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let peak = 0;
    let sum = 0;
    for (const x of this.samples) {
      peak = Math.max(peak, Math.abs(x));
      sum += x * x;
    }
    const rms = Math.sqrt(sum / this.samples.length);
    const l = this.level;
    l.peak = peak;
    l.rms = rms;
    l.maxPeak = Math.max(l.maxPeak, peak);
    l.maxRms = Math.max(l.maxRms, rms);
    if (this.onLevel) this.onLevel(l);
  }

  /** The context time of the sample the listener hears now (output latency taken off). */
  heardNow() {
    const t = this.ctx.getOutputTimestamp ? this.ctx.getOutputTimestamp().contextTime : 0;
    return t > 0 ? Math.min(t, this.ctx.currentTime) : this.ctx.currentTime;
  }

  reply(mid) {
    let r = this.replies.get(mid);
    if (!r) {
      r = { mid, chunks: [], sentenceS: {}, stopped: false, complete: false, stoppedAt: null, reportedEnd: false };
      this.replies.set(mid, r);
    }
    return r;
  }

  /** Queue a chunk right after what is already scheduled; false once the reply was stopped. */
  enqueue(mid, sentence, rate, pcm) {
    const r = this.reply(mid);
    if (r.stopped || !pcm.length) return !r.stopped;
    const ctx = this.ensure();
    const buffer = ctx.createBuffer(1, pcm.length, rate);
    const ch = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.analyser);
    const start = Math.max(this.playAt, ctx.currentTime + LEAD_S);
    const offset = r.sentenceS[sentence] || 0;
    r.sentenceS[sentence] = offset + buffer.duration;
    r.chunks.push({ src, start, duration: buffer.duration, sentence, offset });
    src.start(start);
    this.playAt = start + buffer.duration;
    return true;
  }

  /** Seconds of the reply heard so far, from its first sample. */
  played(r) {
    if (r.stoppedAt != null) return r.stoppedAt;
    if (!this.ctx) return 0;
    const now = this.heardNow();
    let s = r.base || 0;
    for (const c of r.chunks) s += Math.min(c.duration, Math.max(0, now - c.start));
    return s;
  }

  /** {sentence_index, offset_ms} being heard now, or null when nothing of it is. */
  position(r) {
    if (!this.ctx || r.stopped) return null;
    const now = this.heardNow();
    const c = r.chunks.find((k) => k.start <= now && now < k.start + k.duration);
    if (!c) return null;
    return { sentence_index: c.sentence, offset_ms: Math.round((c.offset + now - c.start) * 1000) };
  }

  started(r) {
    return !!this.ctx && r.chunks.length > 0 && this.heardNow() >= r.chunks[0].start;
  }

  /** All of its audio arrived and has been heard. */
  finished(r) {
    if (!r.complete || !this.ctx) return false;
    const last = r.chunks[r.chunks.length - 1];
    return !last || this.heardNow() >= last.start + last.duration;
  }

  /** The reply being heard now, if any. */
  audible() {
    for (const r of this.replies.values()) if (this.position(r)) return r;
    return null;
  }

  /** Flush the reply's queued audio now, keeping its place: it may resume or stop for good. */
  pause(mid) {
    const r = this.stop(mid);
    r.paused = true;
    return r;
  }

  /** Play a paused reply again: its audio follows from (sentence, seconds into it). */
  resume(mid, sentence, offsetS) {
    const r = this.reply(mid);
    if (!r.paused) return r;
    r.base = r.stoppedAt;
    r.stopped = r.paused = false;
    r.stoppedAt = null;
    r.chunks = [];
    for (const k of Object.keys(r.sentenceS)) if (Number(k) > sentence) delete r.sentenceS[k];
    r.sentenceS[sentence] = offsetS;
    return r;
  }

  /** Flush the reply's queued audio at once; later chunks of it are dropped. */
  stop(mid) {
    const r = this.reply(mid);
    if (r.stopped) return r;
    r.stoppedAt = this.played(r);
    r.stopped = true;
    for (const c of r.chunks) {
      try {
        c.src.stop();
      } catch (e) {
        // never started: nothing to stop
      }
      c.src.disconnect();
    }
    // What is still queued (another reply) keeps its place; nothing waits for the flushed audio.
    let end = 0;
    for (const other of this.replies.values()) {
      if (other.stopped) continue;
      for (const c of other.chunks) end = Math.max(end, c.start + c.duration);
    }
    this.playAt = end;
    return r;
  }
}

export class Mic {
  constructor() {
    this.stream = null;
    this.ctx = null;
  }

  get on() {
    return this.stream !== null;
  }

  /** Capture from the microphone; `onFrame` gets 20 ms ArrayBuffers of PCM16 at 16 kHz. */
  async start(onFrame) {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    try {
      this.ctx = new AudioContext({ sampleRate: 16000 });
      await this.connect(onFrame);
    } catch (e) {
      // Some browsers cannot feed a 48 kHz stream into a 16 kHz context: resample in the worklet.
      if (this.ctx) await this.ctx.close();
      this.ctx = new AudioContext();
      await this.connect(onFrame);
    }
  }

  async connect(onFrame) {
    await this.ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    // No outputs: the node is pulled by the graph on its own and nothing is played back.
    const node = new AudioWorkletNode(this.ctx, "parley-capture", { numberOfInputs: 1, numberOfOutputs: 0 });
    node.port.onmessage = (m) => onFrame(m.data);
    this.ctx.createMediaStreamSource(this.stream).connect(node);
  }

  async stop() {
    // Stopping the tracks releases the device (and its indicator), not just the graph.
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    if (this.ctx) await this.ctx.close();
    this.ctx = null;
  }
}
