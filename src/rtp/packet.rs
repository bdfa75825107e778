//! RTP packets (RFC 3550 §5.1): parsing received packets and building sent ones.

use rtp_rs::{RtpReader, RtpReaderError};
use thiserror::Error;

/// Length of the fixed RTP header, without CSRCs or extensions.
const HEADER_LEN: usize = 12;

/// The fields of a received RTP header that a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type (7 bits): 0 PCMU, 8 PCMA, dynamic types for telephone-events.
    pub payload_type: u8,
    /// Marker bit: for audio, the first packet of a talkspurt.
    pub marker: bool,
    /// Sequence number, incremented by one per packet, wrapping at 65535.
    pub sequence: u16,
    /// Sampling instant of the first sample, in the payload's clock rate.
    pub timestamp: u32,
    /// Synchronisation source: identifies the stream.
    pub ssrc: u32,
}

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet too short: {0} bytes")]
    TooShort(usize),
    /// Not RTP version 2.
    #[error("unsupported RTP version {0}")]
    Version(u8),
    /// CSRC list or header extension runs past the end of the packet.
    #[error("RTP headers need {header_len} bytes but the packet has {buffer_len}")]
    Truncated {
        /// Bytes the headers claim.
        header_len: usize,
        /// Bytes available.
        buffer_len: usize,
    },
    /// Padding length is zero or larger than what follows the headers.
    #[error("invalid RTP padding length {0}")]
    Padding(u8),
}

impl From<RtpReaderError> for RtpError {
    fn from(e: RtpReaderError) -> Self {
        match e {
            RtpReaderError::BufferTooShort(n) => RtpError::TooShort(n),
            RtpReaderError::UnsupportedVersion(v) => RtpError::Version(v),
            RtpReaderError::HeadersTruncated {
                header_len,
                buffer_len,
            } => RtpError::Truncated {
                header_len,
                buffer_len,
            },
            RtpReaderError::PaddingLengthInvalid(p) => RtpError::Padding(p),
        }
    }
}

/// Parses an RTP packet, returning its header and payload (without padding).
///
/// CSRCs and header extensions are skipped. Any malformed or truncated input is
/// an error.
pub fn parse(buf: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    // RtpReader::new validates every length it later slices with, so the
    // accessors below cannot panic.
    let r = RtpReader::new(buf)?;
    let header = RtpHeader {
        payload_type: r.payload_type(),
        marker: r.mark(),
        sequence: r.sequence_number().into(),
        timestamp: r.timestamp(),
        ssrc: r.ssrc(),
    };
    Ok((header, r.payload()))
}

/// Builds the packets of one sent RTP stream: one SSRC, consecutive sequence
/// numbers, timestamps advancing by the samples in each packet.
#[derive(Debug, Clone)]
pub struct Packetizer {
    ssrc: u32,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    marker: bool,
}

impl Packetizer {
    /// A stream with random initial sequence number and timestamp, as RFC 3550
    /// §5.1 asks so that they are hard to guess. The first packet carries the
    /// marker bit. Payload types are 7 bits; higher bits are ignored.
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        Self::starting_at(ssrc, payload_type, rand::random(), rand::random())
    }

    /// A stream starting at the given sequence number and timestamp.
    pub fn starting_at(ssrc: u32, payload_type: u8, sequence: u16, timestamp: u32) -> Self {
        Self {
            ssrc,
            payload_type: payload_type & 0x7F,
            sequence,
            timestamp,
            marker: true,
        }
    }

    /// Builds the next audio packet carrying `payload`, which holds `samples`
    /// samples (the timestamp advances by that many).
    pub fn packet(&mut self, payload: &[u8], samples: u32) -> Vec<u8> {
        let marker = std::mem::take(&mut self.marker);
        let packet = self.build(self.payload_type, marker, self.timestamp, payload);
        self.timestamp = self.timestamp.wrapping_add(samples);
        packet
    }

    /// Marks the next audio packet as the first of a talkspurt, so the receiver
    /// can reset its jitter buffer. Call it after a silence in which no packets
    /// were sent.
    pub fn start_talkspurt(&mut self) {
        self.marker = true;
    }

    /// Builds an RFC 4733 telephone-event packet. It takes the stream's next
    /// sequence number but carries the event's own `timestamp` (the start of the
    /// event), and leaves the audio timestamp alone.
    pub fn event(
        &mut self,
        payload_type: u8,
        payload: &[u8],
        marker: bool,
        timestamp: u32,
    ) -> Vec<u8> {
        self.build(payload_type & 0x7F, marker, timestamp, payload)
    }

    /// Moves the audio clock on by `samples` without sending: the time a
    /// telephone-event replaced the audio.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
    }

    /// The timestamp the next audio packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// The sequence number the next packet will carry.
    pub fn sequence(&self) -> u16 {
        self.sequence
    }

    /// The stream's synchronisation source.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    fn build(&mut self, payload_type: u8, marker: bool, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        // Written by hand rather than with rtp-rs's builder: no CSRCs, extensions
        // or padding are ever sent, and this cannot fail.
        let mut p = Vec::with_capacity(HEADER_LEN + payload.len());
        p.push(2 << 6);
        p.push(payload_type | if marker { 0x80 } else { 0 });
        p.extend_from_slice(&self.sequence.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.sequence = self.sequence.wrapping_add(1);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(first: u8, second: u8) -> Vec<u8> {
        vec![
            first, second, 0x12, 0x34, 0, 0, 0x01, 0x40, 0xDE, 0xAD, 0xBE, 0xEF,
        ]
    }

    #[test]
    fn build_parse_round_trip() {
        let mut p = Packetizer::starting_at(0xDEADBEEF, 8, 1000, 160_000);
        let first = p.packet(&[1, 2, 3], 160);
        let second = p.packet(&[4, 5], 160);

        let (h, payload) = parse(&first).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                payload_type: 8,
                marker: true,
                sequence: 1000,
                timestamp: 160_000,
                ssrc: 0xDEADBEEF,
            }
        );
        assert_eq!(payload, [1, 2, 3]);

        let (h, payload) = parse(&second).unwrap();
        assert!(!h.marker);
        assert_eq!((h.sequence, h.timestamp), (1001, 160_160));
        assert_eq!(payload, [4, 5]);
        assert_eq!(p.timestamp(), 160_320);
        assert_eq!(p.sequence(), 1002);
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        let mut p = Packetizer::starting_at(1, 0, 65535, u32::MAX - 79);
        let (a, _) = parse(&p.packet(&[0; 160], 160)).unwrap();
        let (b, _) = parse(&p.packet(&[0; 160], 160)).unwrap();
        assert_eq!((a.sequence, a.timestamp), (65535, u32::MAX - 79));
        assert_eq!((b.sequence, b.timestamp), (0, 80));
    }

    #[test]
    fn marker_on_first_packet_and_each_talkspurt() {
        let mut p = Packetizer::new(7, 0);
        let marks: Vec<bool> = (0..6)
            .map(|i| {
                if i == 3 {
                    p.start_talkspurt();
                }
                parse(&p.packet(&[0xFF; 160], 160)).unwrap().0.marker
            })
            .collect();
        assert_eq!(marks, [true, false, false, true, false, false]);
    }

    #[test]
    fn random_initial_state() {
        // Two streams starting at the same sequence and timestamp would be a 1 in 2^48 fluke.
        let a = Packetizer::new(1, 0);
        let b = Packetizer::new(1, 0);
        assert_ne!((a.sequence(), a.timestamp()), (b.sequence(), b.timestamp()));
    }

    #[test]
    fn events_share_sequence_but_keep_their_timestamp() {
        let mut p = Packetizer::starting_at(9, 0, 10, 8000);
        p.packet(&[0; 160], 160);
        let ev = p.event(101, &[5, 0x0A, 0, 160], true, 8160);
        let (h, payload) = parse(&ev).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                payload_type: 101,
                marker: true,
                sequence: 11,
                timestamp: 8160,
                ssrc: 9,
            }
        );
        assert_eq!(payload, [5, 0x0A, 0, 160]);
        assert_eq!(p.timestamp(), 8160);
        let (h, _) = parse(&p.packet(&[0; 160], 160)).unwrap();
        assert_eq!((h.sequence, h.timestamp, h.marker), (12, 8160, false));
    }

    #[test]
    fn csrc_extension_and_padding_are_skipped() {
        // Two CSRCs, a one-word extension, a 3-byte payload and 4 bytes of padding.
        let mut b = header(0x80 | 0x20 | 0x10 | 2, 0x80 | 96);
        b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]);
        b.extend_from_slice(&[7, 8, 9]);
        b.extend_from_slice(&[0, 0, 0, 4]);
        let (h, payload) = parse(&b).unwrap();
        assert_eq!(h.payload_type, 96);
        assert!(h.marker);
        assert_eq!(h.sequence, 0x1234);
        assert_eq!(h.timestamp, 0x140);
        assert_eq!(h.ssrc, 0xDEADBEEF);
        assert_eq!(payload, [7, 8, 9]);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(parse(&[]), Err(RtpError::TooShort(0)));
        assert_eq!(parse(&header(0x80, 0)[..11]), Err(RtpError::TooShort(11)));
        assert_eq!(parse(&header(0x40, 0)), Err(RtpError::Version(1)));
        assert_eq!(parse(&header(0x00, 0)), Err(RtpError::Version(0)));

        // Three CSRCs claimed, one present.
        let mut b = header(0x83, 0);
        b.extend_from_slice(&[0, 0, 0, 1]);
        assert!(matches!(parse(&b), Err(RtpError::Truncated { .. })));

        // Extension flag with no room for the extension header.
        assert!(matches!(
            parse(&header(0x90, 0)),
            Err(RtpError::Truncated { .. })
        ));

        // Extension claims 4 words, 1 present.
        let mut b = header(0x90, 0);
        b.extend_from_slice(&[0xBE, 0xDE, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&b), Err(RtpError::Truncated { .. })));

        // Padding flag but no bytes at all after the header.
        assert!(parse(&header(0xA0, 0)).is_err());

        // Padding longer than the payload.
        let mut b = header(0xA0, 0);
        b.extend_from_slice(&[1, 2, 9]);
        assert_eq!(parse(&b), Err(RtpError::Padding(9)));

        // Padding length zero.
        let mut b = header(0xA0, 0);
        b.extend_from_slice(&[1, 2, 0]);
        assert_eq!(parse(&b), Err(RtpError::Padding(0)));
    }

    #[test]
    fn no_panic_on_arbitrary_bytes() {
        // Every first byte (all flag combinations and CSRC counts) over short buffers.
        for first in 0..=255u8 {
            for len in 0..40 {
                let mut b: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(37)).collect();
                if let Some(x) = b.first_mut() {
                    *x = first;
                }
                if let Ok((_, payload)) = parse(&b) {
                    assert!(payload.len() + HEADER_LEN <= b.len());
                }
            }
        }
    }
}
