//! Sample-rate conversion (rubato's FFT resampler): streaming for calls, one-shot
//! for files and synthesized phrases.

use rubato::{FftFixedIn, Resampler as _};

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample {from} Hz to {to} Hz: {message}")]
    Setup { from: u32, to: u32, message: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// Converts a stream of mono samples from one rate to another, keeping state
/// between calls so that chunk boundaries leave no clicks.
pub struct StreamResampler {
    inner: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
    chunk: usize,
    /// Output samples still to discard: the filter's delay.
    skip: usize,
    from: u32,
    to: u32,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, ResampleError> {
        if from == 0 || to == 0 {
            return Err(ResampleError::Setup {
                from,
                to,
                message: "rates must be positive".into(),
            });
        }
        // 10 ms chunks keep latency low while the FFT stays cheap.
        let chunk = (from as usize / 100).max(1);
        let inner = if from == to {
            None
        } else {
            Some(
                FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1).map_err(|e| {
                    ResampleError::Setup {
                        from,
                        to,
                        message: e.to_string(),
                    }
                })?,
            )
        };
        let skip = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(StreamResampler {
            inner,
            pending: Vec::new(),
            chunk,
            skip,
            from,
            to,
        })
    }

    pub fn rates(&self) -> (u32, u32) {
        (self.from, self.to)
    }

    /// Feeds `input`, appending every sample that is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let Some(r) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        self.pending.extend_from_slice(input);
        let mut start = 0;
        while self.pending.len() - start >= self.chunk {
            let chunk = &self.pending[start..start + self.chunk];
            let produced = r
                .process(&[chunk], None)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            Self::emit(&mut self.skip, &produced[0], out);
            start += self.chunk;
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Pushes out what is buffered, padding with silence, so the total output
    /// matches the input length at the new rate.
    pub fn finish(&mut self, consumed: usize, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let want = (consumed as u64 * self.to as u64).div_ceil(self.from as u64) as usize;
        if self.inner.is_some() {
            let mut guard = 0;
            while out.len() < want && guard < 64 {
                let pad = vec![0.0; self.chunk.saturating_sub(self.pending.len() % self.chunk)];
                self.push(&pad, out)?;
                guard += 1;
            }
        }
        out.truncate(want);
        Ok(())
    }

    fn emit(skip: &mut usize, produced: &[f32], out: &mut Vec<f32>) {
        let drop = (*skip).min(produced.len());
        *skip -= drop;
        out.extend_from_slice(&produced[drop..]);
    }
}

/// Resamples a whole signal; the output has the input's duration.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    if from == to {
        return Ok(input.to_vec());
    }
    let mut r = StreamResampler::new(from, to)?;
    let mut out = Vec::with_capacity(input.len() * to as usize / from as usize + 64);
    r.push(input, &mut out)?;
    r.finish(input.len(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    /// Strength of `freq` in `x` (a single DFT bin), normalised by length.
    fn tone_power(x: &[f32], freq: f32, rate: u32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, s) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * freq as f64 * i as f64 / rate as f64;
            re += *s as f64 * ph.cos();
            im += *s as f64 * ph.sin();
        }
        ((re * re + im * im).sqrt() / x.len() as f64) as f32
    }

    #[test]
    fn durations_are_kept() {
        for (from, to) in [
            (8000, 16000),
            (22050, 16000),
            (48000, 16000),
            (16000, 8000),
            (44100, 16000),
        ] {
            let x = sine(440.0, from, 1.0);
            let y = resample(&x, from, to).unwrap();
            assert_eq!(y.len(), to as usize, "{from}->{to}");
        }
    }

    #[test]
    fn a_tone_stays_the_same_tone() {
        let x = sine(440.0, 22050, 1.0);
        let y = resample(&x, 22050, 16000).unwrap();
        let on = tone_power(&y[2000..14000], 440.0, 16000);
        let off = tone_power(&y[2000..14000], 600.0, 16000);
        assert!(on > 0.2, "440 Hz lost: {on}");
        assert!(off < 0.01, "energy leaked to 600 Hz: {off}");
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        let x = sine(6000.0, 16000, 1.0);
        let y = resample(&x, 16000, 8000).unwrap();
        assert!(
            crate::audio::rms(&y[800..7200]) < 0.02,
            "aliasing: {}",
            crate::audio::rms(&y)
        );
    }

    #[test]
    fn streaming_in_odd_pieces_matches_one_shot() {
        let x = sine(300.0, 8000, 0.5);
        let whole = resample(&x, 8000, 16000).unwrap();
        let mut r = StreamResampler::new(8000, 16000).unwrap();
        let mut out = Vec::new();
        for piece in x.chunks(37) {
            r.push(piece, &mut out).unwrap();
        }
        r.finish(x.len(), &mut out).unwrap();
        assert_eq!(out.len(), whole.len());
        let diff = out
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn signal_is_not_shifted_in_time() {
        // An impulse train: the first impulse must come out where it went in.
        let mut x = vec![0.0; 8000];
        x[4000] = 1.0;
        let y = resample(&x, 8000, 16000).unwrap();
        let peak = y
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        assert!((peak as i64 - 8000).abs() <= 2, "peak at {peak}");
    }
}
