//! Actions for a model whose chat template has no function calling (the
//! small local models): every reply starts with a bracket that says what it
//! does — `[answer]`, `[end_call]`, `[transfer:front_desk]` — then its words.
//! A grammar holds the model to that form, so the bracket can only be one
//! of the agent's actions with one of its allowed arguments, and the choice
//! is made on the reply's first tokens (a small model picks well among a few
//! named options where it would seldom volunteer a bracket of its own).
//! [`Brackets`] turns the streamed text back into words and [`ToolCall`]s.
//!
//! A tool takes no parameter (`[name]`) or one string parameter
//! (`[name:value]`, its `enum` listed in the grammar when the schema has one).

use crate::engine::{ToolCall, ToolChoice, ToolSpec};

/// The longest bracket read; a longer one is malformed.
const MAX_BRACKET: usize = 96;

/// A tool's single parameter: its name and allowed values (empty: any).
fn parameter(tool: &ToolSpec) -> Option<(String, Vec<String>)> {
    let props = tool.parameters.get("properties")?.as_object()?;
    let (name, schema) = props.iter().next()?;
    let values = schema
        .get("enum")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some((name.clone(), values))
}

/// Whether the words after an action's bracket are spoken with it: a
/// goodbye after `[end_call]`, an announcement after `[transfer:…]`. After
/// an agent's function (a tool) the model has yet to read its answer, so
/// its reply ends at the bracket.
pub fn speaks_after(action: &str) -> bool {
    matches!(action, "end_call" | "transfer")
}

/// The bracket of a reply that only answers.
pub const ANSWER: &str = "answer";

/// What the system prompt adds so the model knows the form.
pub fn instructions(tools: &[ToolSpec]) -> String {
    if tools.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n\nBegin every reply with one of these tags, then say your words:\n[{ANSWER}] when you answer the caller"
    );
    for t in tools {
        match parameter(t) {
            None => s.push_str(&format!("\n[{}] {}", t.name, t.description)),
            Some((p, values)) if values.is_empty() => {
                s.push_str(&format!("\n[{}:{p}] {}", t.name, t.description))
            }
            Some((p, values)) => s.push_str(&format!(
                "\n[{}:{p}] {}; {p} is one of: {}",
                t.name,
                t.description,
                values.join(", ")
            )),
        }
    }
    s
}

/// A GBNF string literal.
fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The grammar of a reply's opening tag: `[answer]` or one of the agent's
/// actions with an allowed argument; `None` without tools.
pub fn grammar(tools: &[ToolSpec]) -> Option<String> {
    if tools.is_empty() {
        return None;
    }
    Some(grammar_of(tools.iter(), true))
}

/// The opening tag's grammar for one request: what `choice` allows of the
/// agent's `tools` (which are not empty).
pub fn grammar_for(tools: &[ToolSpec], choice: &ToolChoice) -> String {
    match choice {
        ToolChoice::Auto => grammar_of(tools.iter(), true),
        ToolChoice::None => grammar_of(std::iter::empty(), true),
        ToolChoice::Required => grammar_of(tools.iter(), false),
        ToolChoice::Named(name) => grammar_of(tools.iter().filter(|t| &t.name == name), false),
    }
}

fn grammar_of<'a>(tools: impl Iterator<Item = &'a ToolSpec>, answer: bool) -> String {
    let alternatives: Vec<String> = tools
        .map(|t| match parameter(t) {
            None => literal(&t.name),
            Some((_, values)) if values.is_empty() => {
                format!("{} [^\\]\\n]{{1,64}}", literal(&format!("{}:", t.name)))
            }
            Some((_, values)) => format!(
                "{} ({})",
                literal(&format!("{}:", t.name)),
                values
                    .iter()
                    .map(|v| literal(v))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        })
        .collect();
    format!(
        "root ::= \"[\" ({}) \"]\"\n",
        answer
            .then(|| literal(ANSWER))
            .into_iter()
            .chain(alternatives)
            .collect::<Vec<_>>()
            .join(" | ")
    )
}

/// A piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
    Malformed(String),
    /// A bracket after the reply's opening tag: the model has stopped
    /// answering and started reciting its instructions; the reply ends here.
    Stop,
}

/// Splits streamed text into words and bracketed actions.
#[derive(Debug, Default)]
pub struct Brackets {
    tools: Vec<ToolSpec>,
    open: Option<String>,
    /// The opening tag has been read: later brackets end the reply.
    tagged: bool,
    stopped: bool,
}

impl Brackets {
    pub fn new(tools: &[ToolSpec]) -> Brackets {
        Brackets {
            tools: tools.to_vec(),
            open: None,
            tagged: false,
            stopped: false,
        }
    }

    pub fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        let mut words = String::new();
        for c in text.chars() {
            if self.stopped {
                break;
            }
            match self.open.as_mut() {
                None if c == '[' && !self.tools.is_empty() && self.tagged => {
                    self.stopped = true;
                    if !words.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut words)));
                    }
                    out.push(Piece::Stop);
                }
                None if c == '[' && !self.tools.is_empty() => {
                    self.open = Some(String::new());
                }
                None => words.push(c),
                Some(inner) if c == ']' => {
                    let inner = std::mem::take(inner);
                    self.open = None;
                    self.tagged = true;
                    if !words.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut words)));
                    }
                    match self.read(&inner) {
                        Piece::Text(t) if t.is_empty() => {}
                        p => out.push(p),
                    }
                }
                Some(inner) if inner.len() >= MAX_BRACKET => {
                    let inner = std::mem::take(inner);
                    self.open = None;
                    self.tagged = true;
                    out.push(Piece::Malformed(inner));
                }
                Some(inner) => inner.push(c),
            }
        }
        if !words.is_empty() {
            out.push(Piece::Text(words));
        }
    }

    /// The reply ended: an unclosed bracket is malformed.
    pub fn finish(&mut self) -> Option<Piece> {
        self.open.take().map(Piece::Malformed)
    }

    fn read(&self, inner: &str) -> Piece {
        let (name, value) = match inner.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (inner.trim(), None),
        };
        let well_formed = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && value.is_none_or(|v| !v.is_empty());
        if !well_formed {
            return Piece::Malformed(inner.to_string());
        }
        if name == ANSWER && value.is_none() {
            return Piece::Text(String::new());
        }
        let mut arguments = serde_json::Map::new();
        if let Some(v) = value {
            let key = self
                .tools
                .iter()
                .find(|t| t.name == name)
                .and_then(parameter)
                .map_or_else(|| "value".to_string(), |(p, _)| p);
            arguments.insert(key, serde_json::Value::String(v.to_string()));
        }
        Piece::Call(ToolCall {
            name: name.to_string(),
            arguments: serde_json::Value::Object(arguments),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "end_call".into(),
                description: "end the call after saying goodbye".into(),
                parameters: json!({"type": "object", "properties": {}}),
            },
            ToolSpec {
                name: "transfer".into(),
                description: "hand the caller to a person".into(),
                parameters: json!({"type": "object", "properties": {
                    "to": {"type": "string", "enum": ["front_desk", "nurse"]}}}),
            },
        ]
    }

    fn pieces(chunks: &[&str]) -> Vec<Piece> {
        let mut b = Brackets::new(&tools());
        let mut out = Vec::new();
        for c in chunks {
            b.push(c, &mut out);
        }
        out.extend(b.finish());
        out
    }

    #[test]
    fn words_and_actions_come_apart_across_pieces() {
        assert_eq!(
            pieces(&["Goodbye", " now. [end", "_call]"]),
            vec![
                Piece::Text("Goodbye".into()),
                Piece::Text(" now. ".into()),
                Piece::Call(ToolCall {
                    name: "end_call".into(),
                    arguments: json!({})
                })
            ]
        );
        assert_eq!(
            pieces(&["[transfer: nurse]"]),
            vec![Piece::Call(ToolCall {
                name: "transfer".into(),
                arguments: json!({"to": "nurse"})
            })]
        );
    }

    #[test]
    fn a_bracket_after_the_tag_ends_the_reply() {
        assert_eq!(
            pieces(&["[answer] We open at eight.\n[end_call] when"]),
            vec![Piece::Text(" We open at eight.\n".into()), Piece::Stop]
        );
    }

    #[test]
    fn an_answer_bracket_is_no_action() {
        assert_eq!(
            pieces(&["[answer] We open", " at eight."]),
            vec![
                Piece::Text(" We open".into()),
                Piece::Text(" at eight.".into())
            ]
        );
        assert_eq!(
            pieces(&["[end_call] Goodbye!"]),
            vec![
                Piece::Call(ToolCall {
                    name: "end_call".into(),
                    arguments: json!({})
                }),
                Piece::Text(" Goodbye!".into())
            ]
        );
    }

    #[test]
    fn cut_off_or_odd_brackets_are_malformed() {
        assert_eq!(
            pieces(&["Wait [transfer:nu"]),
            vec![
                Piece::Text("Wait ".into()),
                Piece::Malformed("transfer:nu".into())
            ]
        );
        assert_eq!(
            pieces(&["[call me maybe]"]),
            vec![Piece::Malformed("call me maybe".into())]
        );
        assert_eq!(
            pieces(&["[transfer:]"]),
            vec![Piece::Malformed("transfer:".into())]
        );
        let long = format!("[{}", "x".repeat(200));
        assert!(matches!(pieces(&[&long])[0], Piece::Malformed(_)));
    }

    #[test]
    fn without_tools_brackets_are_words() {
        let mut b = Brackets::new(&[]);
        let mut out = Vec::new();
        b.push("a [b] c", &mut out);
        assert_eq!(out, vec![Piece::Text("a [b] c".into())]);
    }

    #[test]
    fn the_grammar_lists_each_action_and_its_allowed_values() {
        let g = grammar(&tools()).unwrap();
        assert_eq!(
            g,
            "root ::= \"[\" (\"answer\" | \"end_call\" | \"transfer:\" (\"front_desk\" | \"nurse\")) \"]\"\n"
        );
        assert!(grammar(&[]).is_none());
        let i = instructions(&tools());
        assert!(i.contains("[end_call]"), "{i}");
        assert!(i.contains("[transfer:to]"), "{i}");
        assert!(i.contains("front_desk, nurse"), "{i}");
    }
}
