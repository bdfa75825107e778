//! Server-sent events (the `text/event-stream` format of the WHATWG HTML
//! standard), decoded from bytes as they arrive: what OpenAI-compatible
//! servers stream a reply in. Sans-IO: fed chunks, returns whole events.

/// One event's data (its `data:` lines joined by newlines). Event names,
/// ids and retry hints are not used by the servers we read and are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event-stream line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("an event is longer than {0} bytes")]
    EventTooLong(usize),
    #[error("the event stream is not UTF-8")]
    NotUtf8,
}

/// A line longer than this is a broken or hostile server, not a reply.
const MAX_LINE: usize = 1 << 20;

#[derive(Default)]
pub struct Decoder {
    line: Vec<u8>,
    data: Option<String>,
    /// The previous chunk ended in CR: an LF first in the next one belongs to it.
    after_cr: bool,
}

impl Decoder {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(e) = self.line_done(&line)? {
                        events.push(e);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong(MAX_LINE));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<Event>, SseError> {
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.is_empty() {
            return Ok(self.data.take().map(|data| Event { data }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            let len = self.data.as_ref().map_or(0, |d| d.len() + 1) + value.len();
            if len > MAX_LINE {
                return Err(SseError::EventTooLong(MAX_LINE));
            }
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = Decoder::default();
        chunks
            .iter()
            .flat_map(|c| d.push(c).unwrap())
            .map(|e| e.data)
            .collect()
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream: &[u8] = b": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata:b\ndata: c\n\ndata: [DONE]\n\n";
        let whole = all(&[stream]);
        assert_eq!(whole, ["{\"a\":1}", "b\nc", "[DONE]"]);
        for cut in 0..stream.len() {
            assert_eq!(
                all(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(all(&bytes), whole);
    }

    #[test]
    fn an_event_without_its_blank_line_is_not_finished() {
        assert!(all(&[b"data: half"]).is_empty());
    }

    #[test]
    fn a_runaway_line_is_an_error_not_a_memory_leak() {
        let mut d = Decoder::default();
        let junk = vec![b'x'; 64 * 1024];
        let mut failed = None;
        for _ in 0..20 {
            if let Err(e) = d.push(&junk) {
                failed = Some(e);
                break;
            }
        }
        assert_eq!(failed, Some(SseError::LineTooLong(MAX_LINE)));
        let mut d = Decoder::default();
        assert_eq!(d.push(b"data: \xff\n"), Err(SseError::NotUtf8));
    }
}
