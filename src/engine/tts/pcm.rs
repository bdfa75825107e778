//! 16-bit audio read as it arrives, whatever the split of the bytes: raw
//! little-endian PCM at a known rate, or a WAV file whose header comes
//! first (its rate and channels taken from it; the data's length bounds
//! the samples unless it is 0 or 0xFFFFFFFF, what streaming servers write
//! when they do not know it). Sans-IO.

use crate::config::TtsFormat;

/// A header longer than this is not a speech server's.
const MAX_HEADER: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcmError {
    #[error("not a WAV file")]
    NotWav,
    #[error("WAV audio that is not 16-bit PCM (format {format}, {bits} bits)")]
    Encoding { format: u16, bits: u16 },
    #[error("WAV audio with {0} channels")]
    Channels(u16),
    #[error("a WAV header over {MAX_HEADER} bytes")]
    HeaderTooLong,
}

#[derive(Debug)]
pub struct PcmReader {
    /// Known once a WAV header is read.
    rate: Option<u32>,
    channels: u16,
    in_header: bool,
    pending: Vec<u8>,
    /// Bytes of samples still to come, when the WAV header says.
    remaining: Option<usize>,
}

impl PcmReader {
    /// `rate` is the rate of raw PCM; a WAV file names its own.
    pub fn new(format: TtsFormat, rate: u32) -> PcmReader {
        let wav = format == TtsFormat::Wav;
        PcmReader {
            rate: (!wav).then_some(rate),
            channels: 1,
            in_header: wav,
            pending: Vec::new(),
            remaining: None,
        }
    }

    /// The samples' rate, once known.
    pub fn rate(&self) -> Option<u32> {
        self.rate
    }

    /// Sets the rate of raw PCM (a server that names it in a header).
    pub fn set_rate(&mut self, rate: u32) {
        if !self.in_header {
            self.rate = Some(rate);
        }
    }

    /// Feeds `bytes`; returns the mono samples they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<f32>, PcmError> {
        self.pending.extend_from_slice(bytes);
        if self.in_header {
            match self.header()? {
                Some(start) => {
                    self.pending.drain(..start);
                    self.in_header = false;
                }
                None if self.pending.len() > MAX_HEADER => return Err(PcmError::HeaderTooLong),
                None => return Ok(Vec::new()),
            }
        }
        // Whatever follows the data (a trailing chunk) is not audio.
        if let Some(left) = self.remaining {
            self.pending.truncate(left);
        }
        let frame = 2 * self.channels as usize;
        let whole = self.pending.len() / frame * frame;
        if let Some(left) = self.remaining.as_mut() {
            *left -= whole;
        }
        let samples = self.pending[..whole]
            .chunks_exact(frame)
            .map(|f| {
                let sum: f32 = f
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0)
                    .sum();
                sum / self.channels as f32
            })
            .collect();
        self.pending.drain(..whole);
        Ok(samples)
    }

    /// Where the samples start, once the header up to the `data` chunk is
    /// here; the format read on the way.
    fn header(&mut self) -> Result<Option<usize>, PcmError> {
        let b = &self.pending;
        if b.len() < 12 {
            return Ok(None);
        }
        if &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
            return Err(PcmError::NotWav);
        }
        let mut at = 12;
        let mut fmt_seen = false;
        while b.len() >= at + 8 {
            let id = &b[at..at + 4];
            let size = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
            let body = at + 8;
            if id == b"data" {
                if !fmt_seen {
                    return Err(PcmError::NotWav);
                }
                if size != 0 && size != u32::MAX as usize {
                    self.remaining = Some(size);
                }
                return Ok(Some(body));
            }
            // Chunks are padded to an even length.
            let next = body.saturating_add(size).saturating_add(size & 1);
            if b.len() < next {
                return Ok(None);
            }
            if id == b"fmt " {
                if size < 16 {
                    return Err(PcmError::NotWav);
                }
                let u16_at = |i: usize| u16::from_le_bytes([b[body + i], b[body + i + 1]]);
                let format = u16_at(0);
                let channels = u16_at(2);
                let rate = u32::from_le_bytes([b[body + 4], b[body + 5], b[body + 6], b[body + 7]]);
                let bits = u16_at(14);
                // 1 is PCM; 0xFFFE (extensible) is PCM when its bits say 16.
                if !(format == 1 || format == 0xFFFE) || bits != 16 {
                    return Err(PcmError::Encoding { format, bits });
                }
                if !(1..=2).contains(&channels) {
                    return Err(PcmError::Channels(channels));
                }
                if !(8_000..=48_000).contains(&rate) {
                    return Err(PcmError::NotWav);
                }
                self.channels = channels;
                self.rate = Some(rate);
                fmt_seen = true;
            }
            at = next;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16], extra_chunk: bool) -> Vec<u8> {
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * 2 * channels as u32).to_le_bytes());
        fmt.extend_from_slice(&(2 * channels).to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        let mut out = b"RIFF\xff\xff\xff\xffWAVE".to_vec();
        if extra_chunk {
            // An odd-sized chunk, padded.
            out.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        }
        out.extend_from_slice(b"fmt \x10\x00\x00\x00");
        out.extend_from_slice(&fmt);
        out.extend_from_slice(b"data\xff\xff\xff\xff");
        for s in samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    fn read_in_pieces(reader: &mut PcmReader, bytes: &[u8], piece: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for p in bytes.chunks(piece) {
            out.extend(reader.push(p).unwrap());
        }
        out
    }

    #[test]
    fn a_wav_stream_reads_the_same_at_every_split() {
        let samples: Vec<i16> = (0..301).map(|i| (i * 97 - 15_000) as i16).collect();
        let bytes = wav(22_050, 1, &samples, true);
        let want: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
        for piece in [1, 2, 3, 7, 44, 45, 1000] {
            let mut r = PcmReader::new(TtsFormat::Wav, 24_000);
            assert_eq!(
                read_in_pieces(&mut r, &bytes, piece),
                want,
                "pieces of {piece}"
            );
            assert_eq!(r.rate(), Some(22_050));
        }
    }

    #[test]
    fn raw_pcm_keeps_an_odd_byte_for_the_next_piece() {
        let mut r = PcmReader::new(TtsFormat::Pcm, 24_000);
        assert_eq!(r.rate(), Some(24_000));
        assert!(r.push(&[0x00]).unwrap().is_empty());
        assert_eq!(r.push(&[0x40, 0x00]).unwrap(), vec![0.5]);
        assert_eq!(r.push(&[0xc0]).unwrap(), vec![-0.5]);
        r.set_rate(22_050);
        assert_eq!(r.rate(), Some(22_050));
    }

    #[test]
    fn a_known_data_length_ends_the_samples() {
        let mut bytes = wav(16_000, 1, &[16_384, -16_384], false);
        let at = bytes.len() - 4 - 4;
        bytes[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(b"LIST\x04\x00\x00\x00abcd");
        for piece in [1, 3, 100] {
            let mut r = PcmReader::new(TtsFormat::Wav, 24_000);
            assert_eq!(
                read_in_pieces(&mut r, &bytes, piece),
                vec![0.5, -0.5],
                "{piece}"
            );
        }
    }

    #[test]
    fn stereo_is_mixed_down() {
        let bytes = wav(16_000, 2, &[16_384, 0, -16_384, -16_384], false);
        let mut r = PcmReader::new(TtsFormat::Wav, 24_000);
        assert_eq!(r.push(&bytes).unwrap(), vec![0.25, -0.5]);
    }

    #[test]
    fn what_is_not_16_bit_pcm_is_refused() {
        let mut r = PcmReader::new(TtsFormat::Wav, 24_000);
        assert_eq!(
            r.push(b"ID3\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
            Err(PcmError::NotWav)
        );
        let mut float = wav(16_000, 1, &[], false);
        float[20] = 3; // IEEE float
        let mut r = PcmReader::new(TtsFormat::Wav, 24_000);
        assert_eq!(
            r.push(&float),
            Err(PcmError::Encoding {
                format: 3,
                bits: 16
            })
        );
        let mut r = PcmReader::new(TtsFormat::Wav, 24_000);
        let mut endless = b"RIFF\x00\x00\x00\x00WAVE".to_vec();
        endless.extend_from_slice(b"junk\xff\xff\x00\x00");
        endless.extend(vec![0u8; MAX_HEADER]);
        assert_eq!(r.push(&endless), Err(PcmError::HeaderTooLong));
    }
}
