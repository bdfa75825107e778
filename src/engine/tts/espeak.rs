//! Text to IPA phonemes with espeak-ng. espeak-ng is GPL-3.0, so Izwi does not
//! link it: it runs the `espeak-ng` program as a separate process per phrase
//! (about 20 ms) and reads its output, which keeps Izwi's own licence free.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::engine::EngineError;

#[derive(Debug, Clone)]
pub struct Espeak {
    program: PathBuf,
}

impl Espeak {
    pub fn new(program: PathBuf) -> Espeak {
        Espeak { program }
    }

    /// Checks that the program runs and knows `voice`, so a missing install fails at start-up.
    pub fn check(&self, voice: &str) -> Result<(), EngineError> {
        let phonemes = self.phonemize("test", voice)?;
        if phonemes.trim().is_empty() {
            return Err(EngineError::Tts(format!(
                "{} produced no phonemes for voice `{voice}`",
                self.program.display()
            )));
        }
        Ok(())
    }

    /// IPA phonemes of `text`, with the text's clause punctuation put back
    /// (espeak-ng prints one line per clause and drops the punctuation, which
    /// Piper voices use for pauses and intonation).
    pub fn phonemize(&self, text: &str, voice: &str) -> Result<String, EngineError> {
        let mut child = Command::new(&self.program)
            .args(["-q", "-b", "1", "--ipa", "--stdin", "-v", voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                EngineError::Tts(format!(
                    "cannot run {} (install espeak-ng): {e}",
                    self.program.display()
                ))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| EngineError::Tts(format!("espeak-ng input: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| EngineError::Tts(format!("espeak-ng: {e}")))?;
        if !out.status.success() {
            return Err(EngineError::Tts(format!(
                "espeak-ng failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Ok(join_clauses(&lines, &clause_marks(text)))
    }
}

/// The punctuation that ends each clause of `text`, in order.
fn clause_marks(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut marks = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        if matches!(c, ',' | '.' | '!' | '?' | ';' | ':') {
            let at_end = chars[i + 1..]
                .iter()
                .all(|c| c.is_whitespace() || matches!(c, '"' | '\'' | ')'));
            let before_space = chars.get(i + 1).is_some_and(|c| c.is_whitespace());
            if at_end || before_space {
                marks.push(*c);
            }
        }
    }
    marks
}

/// Re-attaches clause punctuation when espeak-ng's clause lines line up with
/// the text's; otherwise keeps only the final mark.
fn join_clauses(lines: &[&str], marks: &[char]) -> String {
    let mut out = String::new();
    if lines.len() == marks.len() {
        for (line, mark) in lines.iter().zip(marks) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(line);
            out.push(*mark);
        }
    } else {
        out = lines.join(" ");
        if let Some(last) = marks.last()
            && matches!(last, '.' | '!' | '?')
        {
            out.push(*last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clause_punctuation() {
        assert_eq!(clause_marks("Hello there, how are you?"), vec![',', '?']);
        assert_eq!(clause_marks("It costs 3.50 dollars."), vec!['.']);
        // A run such as "..." or "?!" ends one clause, marked by its last character.
        assert_eq!(clause_marks("Wait... what?!"), vec!['.', '!']);
        assert_eq!(clause_marks("No punctuation"), Vec::<char>::new());
    }

    #[test]
    fn joins_lines_with_their_marks() {
        assert_eq!(
            join_clauses(&["həlˈoʊ", "haʊ ɑːɹ juː"], &[',', '?']),
            "həlˈoʊ, haʊ ɑːɹ juː?"
        );
        assert_eq!(join_clauses(&["a", "b", "c"], &['.']), "a b c.");
        assert_eq!(join_clauses(&["a"], &[]), "a");
    }
}
