//! The engine's audio format: mono f32 at 16 kHz, moved in 20 ms frames.

use std::time::Duration;

pub const ENGINE_RATE: u32 = 16_000;
pub const FRAME_MS: u32 = 20;
pub const FRAME_SAMPLES: usize = (ENGINE_RATE * FRAME_MS / 1000) as usize;
pub const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);

/// One 20 ms frame of 16 kHz mono audio.
pub type Frame = [f32; FRAME_SAMPLES];

pub const SILENCE: Frame = [0.0; FRAME_SAMPLES];

/// Splits audio into whole frames, padding the last one with silence.
pub fn frames(samples: &[f32]) -> Vec<Frame> {
    samples
        .chunks(FRAME_SAMPLES)
        .map(|c| {
            let mut f = SILENCE;
            f[..c.len()].copy_from_slice(c);
            f
        })
        .collect()
}

pub fn ms_to_samples(ms: u32) -> usize {
    (ENGINE_RATE as usize * ms as usize) / 1000
}

pub fn samples_to_ms(n: usize) -> f64 {
    n as f64 * 1000.0 / ENGINE_RATE as f64
}

/// Root-mean-square level, for tests and diagnostics.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

/// The quiet before the first sound of `samples` (16 kHz), less 10 ms kept
/// so the sound does not start on a click: a voice's lead-in of 20–80 ms is
/// time the caller waits for nothing.
pub fn quiet_lead(samples: &[f32]) -> usize {
    sound_onset(samples).unwrap_or(0)
}

/// As [`quiet_lead`], or `None` while all of `samples` is quiet (audio
/// that is still arriving may yet begin).
pub fn sound_onset(samples: &[f32]) -> Option<usize> {
    // 5 ms windows; −50 dBFS is well under speech and over dither.
    const WINDOW: usize = 80;
    const QUIET: f32 = 0.003;
    let first = samples.chunks(WINDOW).position(|w| rms(w) >= QUIET)?;
    Some((first * WINDOW).saturating_sub(ms_to_samples(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_lead_is_found_and_10_ms_kept() {
        let mut a = vec![0.0005; ms_to_samples(60)];
        a.extend(vec![0.3; 800]);
        assert_eq!(quiet_lead(&a), ms_to_samples(50));
        assert_eq!(quiet_lead(&[0.3; 800]), 0, "sound at once");
        assert_eq!(quiet_lead(&[0.0; 800]), 0, "all quiet: nothing cut");
        assert_eq!(sound_onset(&[0.0; 800]), None);
        assert_eq!(sound_onset(&a), Some(ms_to_samples(50)));
    }

    #[test]
    fn framing_pads_the_tail() {
        let f = frames(&vec![0.5; FRAME_SAMPLES + 10]);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1][9], 0.5);
        assert_eq!(f[1][10], 0.0);
        assert_eq!(FRAME_SAMPLES, 320);
    }
}
