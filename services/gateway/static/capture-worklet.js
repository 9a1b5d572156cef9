// Microphone capture: mono float samples in, PCM16 16 kHz frames of 20 ms out (posted to the page).
// The context normally runs at 16 kHz already; where a browser cannot, this resamples.
const OUT_RATE = 16000;
const FRAME = 320;

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Int16Array(FRAME);
    this.n = 0;
    this.step = sampleRate / OUT_RATE;
    this.pos = 0; // fractional position of the next output sample in the input stream
    this.acc = 0; // box filter over each output sample's span of input (a crude low-pass)
    this.count = 0;
  }

  push(x) {
    this.buf[this.n++] = Math.max(-1, Math.min(1, x)) * 32767;
    if (this.n === FRAME) {
      const out = this.buf.buffer;
      this.port.postMessage(out, [out]);
      this.buf = new Int16Array(FRAME);
      this.n = 0;
    }
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    if (this.step === 1) {
      for (let i = 0; i < ch.length; i++) this.push(ch[i]);
      return true;
    }
    for (let i = 0; i < ch.length; i++) {
      this.acc += ch[i];
      this.count++;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        this.push(this.acc / this.count);
        this.acc = 0;
        this.count = 0;
      }
    }
    return true;
  }
}

registerProcessor("parley-capture", Capture);
