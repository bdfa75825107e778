//! Whisper's log-mel spectrogram, as the turn model was trained on it:
//! `transformers.WhisperFeatureExtractor` with `do_normalize=True`, which
//! pipecat vendors as numpy (`pipecat/audio/turn/smart_turn/_whisper_features.py`).
//!
//! The spectrum is taken in f64, as the reference promotes it: the features
//! agree with both to about 1e-5, for some 2 ms of work a turn.

use std::sync::{Arc, OnceLock};

use realfft::{RealFftPlanner, RealToComplex};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const N_MELS: usize = 80;
/// The model sees the last 8 s of the turn.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE;
/// Frames of an 8 s window (the reference drops the frame past the end).
pub const FRAMES: usize = WINDOW_SAMPLES / HOP;

const BINS: usize = N_FFT / 2 + 1;
const MEL_FLOOR: f64 = 1e-10;
const NORM_EPS: f64 = 1e-7;

/// The last 8 s of `audio`; a shorter turn is preceded by silence, so its end
/// (where the model looks for the turn's end) is always at the window's end.
pub fn last_window(audio: &[f32]) -> Vec<f32> {
    if audio.len() >= WINDOW_SAMPLES {
        return audio[audio.len() - WINDOW_SAMPLES..].to_vec();
    }
    let mut out = vec![0.0; WINDOW_SAMPLES - audio.len()];
    out.extend_from_slice(audio);
    out
}

/// The model's input for one turn: log-mel features of its last 8 s,
/// `N_MELS` rows of `FRAMES` values.
pub fn turn_features(audio: &[f32]) -> Vec<f32> {
    log_mel(&last_window(audio))
}

/// Normalised log-mel features of `audio` (any length), mel-major:
/// `N_MELS` rows of `audio.len() / HOP` frames.
pub fn log_mel(audio: &[f32]) -> Vec<f32> {
    let x = normalize(audio);
    let bank = Filterbank::get();
    let frames = x.len() / HOP;
    let padded = reflect_pad(&x, N_FFT / 2);

    let mut mel = vec![0f64; N_MELS * frames];
    let mut input = bank.fft.make_input_vec();
    let mut spectrum = bank.fft.make_output_vec();
    let mut scratch = bank.fft.make_scratch_vec();
    let mut power = [0f64; BINS];
    for f in 0..frames {
        let start = f * HOP;
        for ((i, s), w) in input
            .iter_mut()
            .zip(&padded[start..start + N_FFT])
            .zip(&bank.window)
        {
            *i = s * w;
        }
        // Lengths come from the planner, so this cannot fail.
        let _ = bank
            .fft
            .process_with_scratch(&mut input, &mut spectrum, &mut scratch);
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.norm_sqr();
        }
        for (m, filter) in bank.filters.iter().enumerate() {
            let e: f64 = filter
                .weights
                .iter()
                .zip(&power[filter.first..])
                .map(|(w, p)| w * p)
                .sum();
            mel[m * frames + f] = e.max(MEL_FLOOR).log10();
        }
    }
    let max = mel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    mel.iter()
        .map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32)
        .collect()
}

/// Zero mean, unit variance over the whole window, padding included, as
/// `WhisperFeatureExtractor(do_normalize=True)` does before the spectrogram.
fn normalize(audio: &[f32]) -> Vec<f64> {
    let n = audio.len().max(1) as f64;
    let mean = audio.iter().map(|&s| s as f64).sum::<f64>() / n;
    let var = audio
        .iter()
        .map(|&s| (s as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let scale = 1.0 / (var + NORM_EPS).sqrt();
    audio.iter().map(|&s| (s as f64 - mean) * scale).collect()
}

/// numpy's `pad(mode="reflect")`: mirrored about the end samples, which are
/// not repeated.
fn reflect_pad(x: &[f64], pad: usize) -> Vec<f64> {
    let n = x.len();
    let at = |i: isize| -> f64 {
        if n < 2 {
            return x.first().copied().unwrap_or(0.0);
        }
        let period = 2 * (n as isize - 1);
        let mut j = i.rem_euclid(period);
        if j >= n as isize {
            j = period - j;
        }
        x[j as usize]
    };
    (-(pad as isize)..(n + pad) as isize).map(at).collect()
}

/// One triangular filter: its non-zero weights from FFT bin `first` on.
struct Filter {
    first: usize,
    weights: Vec<f64>,
}

struct Filterbank {
    window: Vec<f64>,
    filters: Vec<Filter>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl Filterbank {
    fn get() -> &'static Filterbank {
        static BANK: OnceLock<Filterbank> = OnceLock::new();
        BANK.get_or_init(|| Filterbank {
            window: periodic_hann(N_FFT),
            filters: slaney_filters()
                .into_iter()
                .map(|row| {
                    let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                    let last = row.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                    Filter {
                        first,
                        weights: row[first..=last].to_vec(),
                    }
                })
                .collect(),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
        })
    }
}

/// `torch.hann_window(n)`: periodic, so that hops of n/4 overlap-add evenly.
fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos())
        .collect()
}

fn hz_to_mel(hz: f64) -> f64 {
    const LOGSTEP: f64 = 27.0 / 1.856_297_990_365_626; // 27 / ln(6.4)
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * LOGSTEP
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * (6.4f64.ln() / 27.0 * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// The filters' edge and centre frequencies: `N_MELS + 2` points evenly
/// spaced on the Slaney mel scale from 0 to 8 kHz.
fn filter_points() -> Vec<f64> {
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    let step = (hi - lo) / (N_MELS + 1) as f64;
    (0..N_MELS + 2)
        .map(|i| mel_to_hz(lo + step * i as f64))
        .collect()
}

/// Triangular filters with Slaney area normalisation (each has unit area
/// in Hz), one row of `BINS` weights per mel band: librosa's and
/// transformers' `mel_filter_bank(norm="slaney", mel_scale="slaney")`.
fn slaney_filters() -> Vec<Vec<f64>> {
    let points = filter_points();
    let bin_hz = (SAMPLE_RATE / 2) as f64 / (BINS - 1) as f64;
    (0..N_MELS)
        .map(|m| {
            let (lo, centre, hi) = (points[m], points[m + 1], points[m + 2]);
            let norm = 2.0 / (hi - lo);
            (0..BINS)
                .map(|k| {
                    let f = k as f64 * bin_hz;
                    let up = (f - lo) / (centre - lo);
                    let down = (hi - f) / (hi - centre);
                    up.min(down).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, seconds: f32) -> Vec<f32> {
        let n = (seconds * SAMPLE_RATE as f32) as usize;
        // The phase in f64: an f32 one drifts over seconds into broadband
        // noise above the eight-decade clamp.
        (0..n)
            .map(|i| {
                let turns = (hz as f64 * i as f64 / SAMPLE_RATE as f64).fract();
                0.3 * (std::f64::consts::TAU * turns).sin() as f32
            })
            .collect()
    }

    #[test]
    fn eight_seconds_make_the_models_80_by_800() {
        assert_eq!(turn_features(&tone(440.0, 2.0)).len(), N_MELS * 800);
        assert_eq!(turn_features(&tone(440.0, 11.0)).len(), N_MELS * 800);
        assert_eq!(log_mel(&tone(440.0, 1.0)).len(), N_MELS * 100);
        assert_eq!(log_mel(&vec![0.0; 16_159]).len(), N_MELS * 100);
    }

    #[test]
    fn a_short_turn_is_preceded_by_silence_and_a_long_one_keeps_its_end() {
        let short = last_window(&[1.0; 10]);
        assert_eq!(short.len(), WINDOW_SAMPLES);
        assert!(short[..WINDOW_SAMPLES - 10].iter().all(|&s| s == 0.0));
        assert!(short[WINDOW_SAMPLES - 10..].iter().all(|&s| s == 1.0));

        let long: Vec<f32> = (0..WINDOW_SAMPLES + 5).map(|i| i as f32).collect();
        let cut = last_window(&long);
        assert_eq!(cut.len(), WINDOW_SAMPLES);
        assert_eq!(cut[0], 5.0);
        assert_eq!(*cut.last().unwrap(), (WINDOW_SAMPLES + 4) as f32);
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        // Nothing to normalise: every band sits at log10(1e-10), scaled.
        let f = turn_features(&[]);
        assert!(f.iter().all(|&v| v == -1.5), "{:?}", &f[..4]);
    }

    #[test]
    fn the_filters_are_ordered_unit_area_triangles() {
        let points = filter_points();
        assert!(points.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(points[0], 0.0);
        assert!((points[N_MELS + 1] - 8000.0).abs() < 1e-6);
        let bin_hz = 8000.0 / (BINS - 1) as f64;
        for (m, row) in slaney_filters().iter().enumerate() {
            assert!(row.iter().all(|&w| w >= 0.0));
            let area: f64 = row.iter().sum::<f64>() * bin_hz;
            assert!(area > 0.0, "filter {m} is empty");
            // Sampled on 40 Hz bins, a narrow low filter's area is rough;
            // a wide one's is close to the continuous triangle's.
            let tolerance = if points[m + 2] - points[m] > 10.0 * bin_hz {
                0.05
            } else {
                0.5
            };
            assert!((area - 1.0).abs() < tolerance, "filter {m}: area {area}");
            let peak = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert!(
                (peak as f64 * bin_hz - points[m + 1]).abs() <= bin_hz,
                "filter {m} peaks at bin {peak}, centre {}",
                points[m + 1]
            );
        }
    }

    #[test]
    fn a_1khz_tone_lands_in_the_band_centred_on_1khz() {
        let points = filter_points();
        let expected = (0..N_MELS)
            .min_by(|&a, &b| {
                (points[a + 1] - 1000.0)
                    .abs()
                    .total_cmp(&(points[b + 1] - 1000.0).abs())
            })
            .unwrap();
        // The Slaney scale turns logarithmic at 1 kHz, 15 mel: band 26 of 80.
        assert_eq!(expected, 26);

        let f = turn_features(&tone(1000.0, 8.0));
        let frame = 400;
        let column: Vec<f32> = (0..N_MELS).map(|m| f[m * FRAMES + frame]).collect();
        let loudest = column
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(loudest, expected, "{column:?}");
        // A pure tone leaves the far bands at the clamp, eight decades
        // (2.0 once scaled) under the loudest value.
        let top = f.iter().copied().fold(f32::MIN, f32::max);
        let bottom = f.iter().copied().fold(f32::MAX, f32::min);
        assert!((top - bottom - 2.0).abs() < 1e-5, "{top} {bottom}");
        assert_eq!(column[70], bottom, "{column:?}");
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            reflect_pad(&x, 2),
            vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]
        );
    }
}
