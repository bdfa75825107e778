//! Framing SIP messages on a byte stream (TCP, RFC 3261 §18.3): each message
//! ends its headers with an empty line and carries Content-Length for its body.

use super::message::MAX_MESSAGE;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("stream message without a valid Content-Length")]
    ContentLength,
}

/// Collects bytes from a stream and cuts them into whole messages. Each byte
/// is looked at a bounded number of times however it is trickled in: the end
/// of the headers is searched for only in what is new, and the headers are
/// read once, when they are complete.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// How far the search for the end of the headers has got.
    scanned: usize,
    /// The message's whole length, once its headers have been read.
    total: Option<usize>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether part of a message is waiting for the rest; asked after
    /// [`Framer::next_message`] has found nothing more, which leaves no
    /// keep-alive at the front.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        // CRLF keep-alives (RFC 5626) between messages.
        let lead = self
            .buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        if lead > 0 {
            self.buf.drain(..lead);
            self.scanned = 0;
        }
        if let Some(total) = self.total {
            return Ok(self.cut(total));
        }
        let from = self.scanned.saturating_sub(3);
        let Some(head_end) = self.buf[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + from)
        else {
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_MESSAGE {
                return Err(FrameError::TooLarge);
            }
            return Ok(None);
        };
        self.scanned = head_end;
        let head = String::from_utf8_lossy(&self.buf[..head_end]);
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
                    length = Some(
                        value
                            .trim()
                            .parse::<usize>()
                            .map_err(|_| FrameError::ContentLength)?,
                    );
                }
            }
        }
        let length = length.ok_or(FrameError::ContentLength)?;
        let total = head_end + 4 + length;
        if total > MAX_MESSAGE {
            return Err(FrameError::TooLarge);
        }
        self.total = Some(total);
        Ok(self.cut(total))
    }

    /// The message of `total` bytes at the front, once it is all here.
    fn cut(&mut self, total: usize) -> Option<Vec<u8>> {
        if self.buf.len() < total {
            return None;
        }
        let msg: Vec<u8> = self.buf.drain(..total).collect();
        self.scanned = 0;
        self.total = None;
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn messages_split_across_and_within_reads() {
        let mut f = Framer::default();
        let two = format!("\r\n{OPTIONS}{OPTIONS}");
        let bytes = two.as_bytes();
        f.push(&bytes[..10]);
        assert_eq!(f.next_message().unwrap(), None);
        f.push(&bytes[10..bytes.len() - 2]);
        assert_eq!(f.next_message().unwrap().unwrap(), OPTIONS.as_bytes());
        assert_eq!(f.next_message().unwrap(), None, "second body incomplete");
        f.push(&bytes[bytes.len() - 2..]);
        assert_eq!(f.next_message().unwrap().unwrap(), OPTIONS.as_bytes());
        assert_eq!(f.next_message().unwrap(), None);
    }

    #[test]
    fn missing_length_and_floods_are_errors() {
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_message(), Err(FrameError::ContentLength));
        let mut f = Framer::default();
        f.push(&vec![b'a'; MAX_MESSAGE + 1]);
        assert_eq!(f.next_message(), Err(FrameError::TooLarge));
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a SIP/2.0\r\nl: 99999999\r\n\r\n");
        assert_eq!(f.next_message(), Err(FrameError::TooLarge));
    }

    #[test]
    fn a_trickle_is_framed_byte_by_byte_and_looked_at_once() {
        let mut f = Framer::default();
        let msg = format!("\r\n\r\n{OPTIONS}");
        for (i, b) in msg.bytes().enumerate() {
            f.push(&[b]);
            let got = f.next_message().unwrap();
            if i + 1 < msg.len() {
                assert_eq!(got, None, "at byte {i}");
                assert_eq!(f.pending(), i >= 4, "at byte {i}");
            } else {
                assert_eq!(got.unwrap(), OPTIONS.as_bytes());
            }
        }
        assert!(!f.pending());
        // A 60 KB header trickled 1 byte at a time stays linear: the end of
        // the headers is searched for only in the new bytes.
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a SIP/2.0\r\nX: ");
        for _ in 0..60_000 {
            f.push(b"a");
            assert_eq!(f.next_message().unwrap(), None);
        }
        assert!(f.scanned > 59_000);
        // Once the headers are complete, a trickled body is not read again.
        let mut f = Framer::default();
        f.push(b"OPTIONS sip:a SIP/2.0\r\nl: 30000\r\n\r\n");
        assert_eq!(f.next_message().unwrap(), None);
        assert!(f.total.is_some());
        for _ in 0..29_999 {
            f.push(b"b");
            assert_eq!(f.next_message().unwrap(), None);
        }
        f.push(b"b");
        assert_eq!(f.next_message().unwrap().unwrap().len(), 30_000 + 35);
        assert!(!f.pending());
    }
}
