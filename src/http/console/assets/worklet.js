// Audio worklets of the console's talk page, at the AudioContext's 16 kHz:
// the microphone cut into 20 ms frames of 16-bit PCM for the socket, and a
// player that plays the agent's frames as they come and drops what is queued
// when the caller barges in.

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(320);
    this.filled = 0;
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      for (let i = 0; i < input.length; i++) {
        const s = Math.max(-1, Math.min(1, input[i]));
        this.frame[this.filled++] = s < 0 ? s * 32768 : s * 32767;
        if (this.filled === this.frame.length) {
          this.port.postMessage(this.frame.buffer.slice(0));
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.port.onmessage = (e) => {
      if (e.data === 'clear') {
        this.queue = [];
        this.offset = 0;
      } else {
        this.queue.push(new Int16Array(e.data));
      }
    };
  }
  process(inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      const head = this.queue[0];
      if (!head) {
        out[i] = 0;
        continue;
      }
      out[i] = head[this.offset++] / 32768;
      if (this.offset === head.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    return true;
  }
}

registerProcessor('izwi-capture', Capture);
registerProcessor('izwi-player', Player);
