//! Packet-loss concealment for G.711, which has none of its own (in the manner
//! of ITU-T G.711 Appendix I): a lost packet is filled by repeating the last
//! pitch period heard, held for 10 ms and then faded out by 60 ms, and the first
//! packet after a loss is cross-faded in. Silence in place of a lost packet is a
//! hole the ear hears as a click, and it is also what the VAD would see.

/// G.711's rate: the only one this concealer serves.
const RATE: usize = 8_000;
/// Pitch periods searched: 66 to 200 Hz, where voices are.
const MIN_PITCH: usize = RATE / 200;
const MAX_PITCH: usize = RATE / 66;
/// Samples compared when looking for the period.
const WINDOW: usize = RATE / 50;
const HISTORY: usize = WINDOW + MAX_PITCH;
/// Full level for the first 10 ms of a loss, then a linear fade to nothing at 60 ms.
const HOLD: usize = RATE / 100;
const FADE_END: usize = RATE * 6 / 100;
/// Cross-fade into the first packet after a loss (4 ms).
const OVERLAP: usize = RATE / 250;

#[derive(Debug, Clone)]
pub struct Concealer {
    /// The last `HISTORY` samples received, oldest first.
    history: Vec<f32>,
    /// The pitch period being repeated while a loss lasts.
    period: Vec<f32>,
    /// Samples concealed since the loss began (0: no loss under way).
    lost: usize,
}

impl Default for Concealer {
    fn default() -> Self {
        Concealer {
            history: vec![0.0; HISTORY],
            period: Vec::new(),
            lost: 0,
        }
    }
}

impl Concealer {
    /// Takes in a decoded packet (in place: the start of the first one after a
    /// loss is cross-faded with the concealment it replaces).
    pub fn received(&mut self, pcm: &mut [f32]) {
        if self.lost > 0 {
            let n = OVERLAP.min(pcm.len());
            for (i, s) in pcm.iter_mut().take(n).enumerate() {
                let fade_in = (i + 1) as f32 / (n + 1) as f32;
                let synth = self.synthesize();
                *s = *s * fade_in + synth * (1.0 - fade_in);
            }
            self.lost = 0;
        }
        if pcm.len() >= HISTORY {
            self.history.copy_from_slice(&pcm[pcm.len() - HISTORY..]);
        } else {
            self.history.drain(..pcm.len());
            self.history.extend_from_slice(pcm);
        }
    }

    /// Appends `samples` of concealment for a lost packet.
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) {
        if self.lost == 0 {
            let pitch = self.pitch();
            self.period.clear();
            self.period
                .extend_from_slice(&self.history[HISTORY - pitch..]);
        }
        out.extend((0..samples).map(|_| self.synthesize()));
    }

    /// The next sample of the repeated period, at the fade's level.
    fn synthesize(&mut self) -> f32 {
        let gain = if self.lost < HOLD {
            1.0
        } else if self.lost < FADE_END {
            (FADE_END - self.lost) as f32 / (FADE_END - HOLD) as f32
        } else {
            0.0
        };
        let s = if self.period.is_empty() {
            0.0
        } else {
            self.period[self.lost % self.period.len()] * gain
        };
        self.lost += 1;
        s
    }

    /// The lag in [`MIN_PITCH`, `MAX_PITCH`] at which the last `WINDOW` samples
    /// best match themselves (normalised cross-correlation).
    fn pitch(&self) -> usize {
        let recent = &self.history[HISTORY - WINDOW..];
        let mut best = (MIN_PITCH, f32::MIN);
        for lag in MIN_PITCH..=MAX_PITCH {
            let past = &self.history[HISTORY - WINDOW - lag..HISTORY - lag];
            let (mut dot, mut energy) = (0.0f32, 0.0f32);
            for (a, b) in recent.iter().zip(past) {
                dot += a * b;
                energy += b * b;
            }
            let score = if energy > 0.0 {
                dot / energy.sqrt()
            } else {
                0.0
            };
            if score > best.1 {
                best = (lag, score);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, from: usize, n: usize) -> Vec<f32> {
        (from..from + n)
            .map(|i| (i as f32 * hz * std::f32::consts::TAU / RATE as f32).sin() * 0.5)
            .collect()
    }

    fn primed(hz: f32) -> Concealer {
        let mut c = Concealer::default();
        for k in 0..5 {
            c.received(&mut tone(hz, k * 160, 160));
        }
        c
    }

    #[test]
    fn a_lost_packet_of_a_voiced_sound_continues_it() {
        let mut c = primed(125.0);
        let mut out = Vec::new();
        c.conceal(160, &mut out);
        assert_eq!(out.len(), 160);
        // The first 10 ms follow the tone that was lost.
        let truth = tone(125.0, 800, 80);
        let err: f32 = out[..80]
            .iter()
            .zip(&truth)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            / 80.0;
        assert!(err < 0.001, "concealment strays from the tone: {err}");
        assert!(crate::audio::rms(&out) > 0.3);
    }

    #[test]
    fn a_long_loss_fades_to_silence() {
        let mut c = primed(200.0);
        let mut out = Vec::new();
        for _ in 0..5 {
            c.conceal(160, &mut out);
        }
        let level = |r: std::ops::Range<usize>| crate::audio::rms(&out[r]);
        assert!(level(0..80) > 0.3);
        assert!(level(240..320) < level(80..160), "no fade");
        assert!(out[FADE_END..].iter().all(|&s| s == 0.0));
    }

    #[test]
    fn recovery_is_cross_faded() {
        let mut c = primed(125.0);
        let mut out = Vec::new();
        c.conceal(160, &mut out);
        // The packet after the loss is the tone shifted: a hard cut would jump.
        let mut next: Vec<f32> = tone(125.0, 1000 + 32, 160);
        let raw_jump = (next[0] - out[159]).abs();
        c.received(&mut next);
        let jump = (next[0] - out[159]).abs();
        assert!(jump < raw_jump, "{jump} vs {raw_jump}");
        assert!(jump < 0.15, "{jump}");
    }

    #[test]
    fn nothing_heard_conceals_as_silence() {
        let mut c = Concealer::default();
        let mut out = Vec::new();
        c.conceal(160, &mut out);
        assert!(out.iter().all(|&s| s == 0.0));
        // Packets shorter than the history are taken in too.
        c.received(&mut [0.1; 80]);
        c.conceal(80, &mut out);
        assert_eq!(out.len(), 240);
    }
}
