//! Dialplans: which agent answers which call. A dialplan is a TOML file of
//! rules, tried in order (the first that matches wins), a default, and the
//! agent profiles it names (beside those of the configuration). Pure: a
//! plan is parsed and checked once, then [`Dialplan::route`] is a lookup.
//!
//! ```toml
//! [[rule]]
//! name = "shona-line"
//! agent = "kiriniki"
//! to = "+263242700100"              # the number called: exact,
//! # to_prefix = "+263242"           #   by prefix,
//! # to_pattern = '\+2637[78]\d{7}'  #   or a whole-number pattern (a regex)
//! # from, from_prefix, from_pattern: the caller, likewise
//! # sip_user = "clinic"             # the SIP Request-URI's user part
//! # header = { name = "X-Line", value = "sn" }        # a SIP header (or pattern = '…')
//! # param = { name = "lang", value = "sn" }           # a Twilio parameter
//!
//! [default]
//! agent = "clinic"
//!
//! [agents.kiriniki]
//! language = "sn"
//! system_prompt = "…"
//! greeting = "…"
//! ```
//!
//! A check refuses, naming the file and line: an agent no profile defines, a
//! pattern that does not compile, a rule no call could reach (an earlier rule
//! takes every call it would), and anything TOML or the schema refuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::config::AgentProfile;

#[derive(Debug, thiserror::Error)]
pub enum DialplanError {
    #[error("cannot read dialplan {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What a call offers to be routed by. Numbers are compared with spaces,
/// dashes, dots and brackets removed.
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    /// The number called.
    pub to: Option<String>,
    /// The caller's number.
    pub from: Option<String>,
    /// The user part of the SIP Request-URI.
    pub sip_user: Option<String>,
    /// SIP headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Provider parameters (Twilio's webhook and stream parameters).
    pub params: BTreeMap<String, String>,
}

/// Which agent answers, and by which rule (`None`: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub agent: String,
    pub rule: Option<String>,
}

#[derive(Debug, Clone)]
enum Number {
    Exact(String),
    Prefix(String),
    Pattern(Regex),
}

#[derive(Debug, Clone)]
enum Text {
    Exact(String),
    Pattern(Regex),
}

#[derive(Debug, Clone)]
enum Condition {
    To(Number),
    From(Number),
    SipUser(String),
    Header(String, Text),
    Param(String, Text),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub agent: String,
    /// Where the rule starts in its file.
    pub line: usize,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
pub struct Dialplan {
    pub rules: Vec<Rule>,
    pub default_agent: String,
    /// Every profile a call may get: the configuration's, then the file's.
    pub agents: BTreeMap<String, AgentProfile>,
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
    default: Option<RawDefault>,
    #[serde(default)]
    agents: BTreeMap<String, AgentProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    agent: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    agent: String,
    to: Option<String>,
    to_prefix: Option<String>,
    to_pattern: Option<String>,
    from: Option<String>,
    from_prefix: Option<String>,
    from_pattern: Option<String>,
    sip_user: Option<String>,
    header: Option<RawPair>,
    param: Option<RawPair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    name: String,
    value: Option<String>,
    pattern: Option<String>,
}

/// The number with spaces, dashes, dots and brackets removed.
fn number(s: &str) -> String {
    crate::records::normalise_number(s)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Dialplan {
    /// Every call to `default_agent`: what a configuration without a dialplan file gets.
    pub fn single(default_agent: &str, agents: &BTreeMap<String, AgentProfile>) -> Dialplan {
        Dialplan {
            rules: Vec::new(),
            default_agent: default_agent.to_string(),
            agents: agents.clone(),
            source: None,
        }
    }

    /// Reads and checks the dialplan at `path`; the configuration's agents
    /// and default agent stand where the file names none.
    pub fn load(
        path: &Path,
        default_agent: &str,
        config_agents: &BTreeMap<String, AgentProfile>,
    ) -> Result<Dialplan, DialplanError> {
        let text = std::fs::read_to_string(path).map_err(|source| DialplanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Dialplan::parse(&text, path, default_agent, config_agents)
    }

    pub fn parse(
        text: &str,
        path: &Path,
        default_agent: &str,
        config_agents: &BTreeMap<String, AgentProfile>,
    ) -> Result<Dialplan, DialplanError> {
        let invalid = |line: usize, message: String| DialplanError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let raw: RawPlan = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(line, e.message().to_string())
        })?;
        let mut agents = config_agents.clone();
        for (name, mut profile) in raw.agents {
            profile.fill_from_pack();
            let line = text
                .find(&format!("[agents.{name}]"))
                .map_or(1, |o| line_of(text, o));
            if let Err((field, msg)) = profile.check() {
                return Err(invalid(line, format!("agents.{name}.{field}: {msg}")));
            }
            agents.insert(name, profile);
        }
        let known = |agents: &BTreeMap<String, AgentProfile>| {
            agents.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        let default_agent = match raw.default {
            Some(d) => d.agent,
            None => default_agent.to_string(),
        };
        if !agents.contains_key(&default_agent) {
            let line = text.find("[default]").map_or(1, |o| line_of(text, o));
            return Err(invalid(
                line,
                format!(
                    "the default agent `{default_agent}` is not defined (agents: {})",
                    known(&agents)
                ),
            ));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, spanned) in raw.rule.into_iter().enumerate() {
            let line = line_of(text, spanned.span().start);
            let r = spanned.into_inner();
            let name = r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1));
            if !agents.contains_key(&r.agent) {
                return Err(invalid(
                    line,
                    format!(
                        "rule `{name}` names agent `{}`, which is not defined (agents: {})",
                        r.agent,
                        known(&agents)
                    ),
                ));
            }
            if rules.iter().any(|o| o.name == name) {
                return Err(invalid(line, format!("a second rule named `{name}`")));
            }
            let conditions =
                conditions(&r).map_err(|m| invalid(line, format!("rule `{name}`: {m}")))?;
            let rule = Rule {
                name,
                agent: r.agent,
                line,
                conditions,
            };
            if let Some(earlier) = rules.iter().find(|e| covers(e, &rule)) {
                return Err(invalid(
                    line,
                    format!(
                        "rule `{}` can never match: rule `{}` (line {}) takes every call it would",
                        rule.name, earlier.name, earlier.line
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(Dialplan {
            rules,
            default_agent,
            agents,
            source: Some(path.to_path_buf()),
        })
    }

    /// The agent for a call: the first rule that matches, or the default.
    pub fn route(&self, call: &CallInfo) -> Route {
        for rule in &self.rules {
            if rule.conditions.iter().all(|c| matches(c, call)) {
                return Route {
                    agent: rule.agent.clone(),
                    rule: Some(rule.name.clone()),
                };
            }
        }
        Route {
            agent: self.default_agent.clone(),
            rule: None,
        }
    }
}

fn pattern(p: &str) -> Result<Regex, String> {
    // A pattern matches the whole value.
    Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("pattern `{p}` does not compile: {e}"))
}

fn number_match(
    exact: &Option<String>,
    prefix: &Option<String>,
    pat: &Option<String>,
    what: &str,
) -> Result<Option<Number>, String> {
    match (exact, prefix, pat) {
        (None, None, None) => Ok(None),
        (Some(e), None, None) => Ok(Some(Number::Exact(number(e)))),
        (None, Some(p), None) => Ok(Some(Number::Prefix(number(p)))),
        (None, None, Some(p)) => Ok(Some(Number::Pattern(pattern(p)?))),
        _ => Err(format!(
            "give one of `{what}`, `{what}_prefix` and `{what}_pattern`"
        )),
    }
}

fn text_match(pair: &RawPair, what: &str) -> Result<Text, String> {
    if pair.name.trim().is_empty() {
        return Err(format!("{what} needs a name"));
    }
    match (&pair.value, &pair.pattern) {
        (Some(v), None) => Ok(Text::Exact(v.clone())),
        (None, Some(p)) => Ok(Text::Pattern(pattern(p)?)),
        _ => Err(format!(
            "{what} `{}` needs one of value and pattern",
            pair.name
        )),
    }
}

fn conditions(r: &RawRule) -> Result<Vec<Condition>, String> {
    let mut c = Vec::new();
    if let Some(n) = number_match(&r.to, &r.to_prefix, &r.to_pattern, "to")? {
        c.push(Condition::To(n));
    }
    if let Some(n) = number_match(&r.from, &r.from_prefix, &r.from_pattern, "from")? {
        c.push(Condition::From(n));
    }
    if let Some(u) = &r.sip_user {
        c.push(Condition::SipUser(u.clone()));
    }
    if let Some(h) = &r.header {
        c.push(Condition::Header(
            h.name.to_ascii_lowercase(),
            text_match(h, "header")?,
        ));
    }
    if let Some(p) = &r.param {
        c.push(Condition::Param(p.name.clone(), text_match(p, "param")?));
    }
    Ok(c)
}

fn number_matches(n: &Number, value: Option<&str>) -> bool {
    let Some(v) = value else { return false };
    let v = number(v);
    match n {
        Number::Exact(e) => v == *e,
        Number::Prefix(p) => v.starts_with(p.as_str()),
        Number::Pattern(re) => re.is_match(&v),
    }
}

fn text_matches(t: &Text, value: &str) -> bool {
    match t {
        Text::Exact(e) => value == e,
        Text::Pattern(re) => re.is_match(value),
    }
}

fn matches(c: &Condition, call: &CallInfo) -> bool {
    match c {
        Condition::To(n) => number_matches(n, call.to.as_deref()),
        Condition::From(n) => number_matches(n, call.from.as_deref()),
        Condition::SipUser(u) => call.sip_user.as_deref() == Some(u.as_str()),
        Condition::Header(name, t) => call
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && text_matches(t, v.trim())),
        Condition::Param(name, t) => call.params.get(name).is_some_and(|v| text_matches(t, v)),
    }
}

/// Whether every call `later` would take, `earlier` takes first: each of
/// `earlier`'s conditions is implied by one of `later`'s.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    earlier
        .conditions
        .iter()
        .all(|e| later.conditions.iter().any(|l| implies(l, e)))
}

/// Whether a call meeting `l` surely meets `e`.
fn implies(l: &Condition, e: &Condition) -> bool {
    let numbers = |l: &Number, e: &Number| match (l, e) {
        (Number::Exact(a), Number::Exact(b)) => a == b,
        (Number::Exact(a), Number::Prefix(p)) | (Number::Prefix(a), Number::Prefix(p)) => {
            a.starts_with(p.as_str())
        }
        (Number::Exact(a), Number::Pattern(re)) => re.is_match(a),
        (Number::Pattern(a), Number::Pattern(b)) => a.as_str() == b.as_str(),
        _ => false,
    };
    let texts = |l: &Text, e: &Text| match (l, e) {
        (Text::Exact(a), Text::Exact(b)) => a == b,
        (Text::Exact(a), Text::Pattern(re)) => re.is_match(a),
        (Text::Pattern(a), Text::Pattern(b)) => a.as_str() == b.as_str(),
        _ => false,
    };
    match (l, e) {
        (Condition::To(a), Condition::To(b)) | (Condition::From(a), Condition::From(b)) => {
            numbers(a, b)
        }
        (Condition::SipUser(a), Condition::SipUser(b)) => a == b,
        (Condition::Header(na, a), Condition::Header(nb, b)) => na == nb && texts(a, b),
        (Condition::Param(na, a), Condition::Param(nb, b)) => na == nb && texts(a, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> BTreeMap<String, AgentProfile> {
        let p = AgentProfile::new("en", "x", "hi");
        ["english", "clinic"]
            .into_iter()
            .map(|n| (n.to_string(), p.clone()))
            .collect()
    }

    fn plan(text: &str) -> Result<Dialplan, DialplanError> {
        Dialplan::parse(text, Path::new("plan.toml"), "english", &agents())
    }

    fn call(to: &str, from: &str) -> CallInfo {
        CallInfo {
            to: Some(to.into()),
            from: Some(from.into()),
            ..CallInfo::default()
        }
    }

    const PLAN: &str = r#"
[[rule]]
name = "shona-line"
agent = "kiriniki"
to = "+263 242 700 100"

[[rule]]
name = "harare"
agent = "clinic"
to_prefix = "+263242"

[[rule]]
name = "mobiles"
agent = "clinic"
from_pattern = '\+2637[78]\d{7}'

[[rule]]
name = "campaign"
agent = "kiriniki"
header = { name = "X-Campaign", value = "vaccines" }

[[rule]]
name = "twilio-sn"
agent = "kiriniki"
param = { name = "lang", pattern = "sn|sna" }

[[rule]]
name = "desk-user"
agent = "clinic"
sip_user = "desk"

[default]
agent = "english"

[agents.kiriniki]
language = "sn"
system_prompt = "Pindura muchiShona."
greeting = "Mhoro"
"#;

    #[test]
    fn the_first_rule_that_matches_wins_else_the_default() {
        let p = plan(PLAN).unwrap();
        let r = |c: &CallInfo| p.route(c);
        assert_eq!(
            r(&call("+263242700100", "+1555")),
            Route {
                agent: "kiriniki".into(),
                rule: Some("shona-line".into())
            }
        );
        assert_eq!(
            r(&call("+263-242-70 01 99", "+1555")).rule.as_deref(),
            Some("harare")
        );
        assert_eq!(
            r(&call("+2634", "+263771234567")).rule.as_deref(),
            Some("mobiles")
        );
        assert_eq!(
            r(&call("+2634", "+2637712345678")).rule,
            None,
            "a pattern takes the whole number"
        );
        let mut c = call("+1", "+1");
        c.headers.push(("x-campaign".into(), " vaccines".into()));
        assert_eq!(r(&c).rule.as_deref(), Some("campaign"));
        let mut c = call("+1", "+1");
        c.params.insert("lang".into(), "sna".into());
        assert_eq!(r(&c).rule.as_deref(), Some("twilio-sn"));
        let c = CallInfo {
            sip_user: Some("desk".into()),
            ..CallInfo::default()
        };
        assert_eq!(r(&c).agent, "clinic");
        assert_eq!(
            r(&CallInfo::default()),
            Route {
                agent: "english".into(),
                rule: None
            }
        );
        assert_eq!(p.agents["kiriniki"].language, "sn");
        // What the file leaves empty comes from the language's pack.
        let shona = crate::lang::pack("sn").unwrap();
        assert_eq!(p.agents["kiriniki"].goodbye, shona.phrases.goodbye);
        assert_eq!(p.agents["kiriniki"].phonemes.as_deref(), Some("izwi:sn"));
        assert!(
            p.agents.contains_key("english"),
            "the configuration's agents stay"
        );
    }

    #[test]
    fn a_bad_plan_is_refused_naming_the_line() {
        let err = |text: &str| plan(text).unwrap_err().to_string();
        let e = err("[[rule]]\nagent = \"ghost\"\nto = \"1\"\n");
        assert!(
            e.starts_with("plan.toml:1:") && e.contains("`ghost`"),
            "{e}"
        );
        let e = err(
            "[[rule]]\nagent = \"clinic\"\nto = \"1\"\n\n[[rule]]\nagent = \"clinic\"\nto_pattern = \"(\"\n",
        );
        assert!(
            e.starts_with("plan.toml:5:") && e.contains("does not compile"),
            "{e}"
        );
        let e = err(
            "[[rule]]\nname = \"all\"\nagent = \"clinic\"\n\n[[rule]]\nname = \"late\"\nagent = \"english\"\nto = \"1\"\n",
        );
        assert!(
            e.starts_with("plan.toml:5:")
                && e.contains("`late` can never match")
                && e.contains("`all` (line 1)"),
            "{e}"
        );
        let e = err(
            "[[rule]]\nname = \"p\"\nagent = \"clinic\"\nto_prefix = \"+263\"\n[[rule]]\nname = \"q\"\nagent = \"english\"\nto = \"+263242\"\n",
        );
        assert!(e.contains("`q` can never match"), "{e}");
        let e = err("[[rule]]\nagent = \"clinic\"\nto = \"1\"\nto_prefix = \"2\"\n");
        assert!(e.contains("one of `to`"), "{e}");
        let e = err("[[rule]]\nagent = \"clinic\"\nwhen = \"1\"\n");
        assert!(e.starts_with("plan.toml:") && e.contains("when"), "{e}");
        let e = err("[default]\nagent = \"nobody\"\n");
        assert!(e.contains("`nobody`"), "{e}");
        let e = err("[[rule]\n");
        assert!(e.starts_with("plan.toml:1:"), "{e}");
        // An agent's actions are checked with it.
        let agent = |body: &str| {
            err(&format!(
                "[default]\nagent = \"x\"\n\n[agents.x]\nlanguage = \"en\"\nsystem_prompt = \"p\"\ngreeting = \"g\"\n{body}"
            ))
        };
        let e = agent("keys = { \"0\" = \"transfer:desk\" }\n");
        assert!(
            e.starts_with("plan.toml:4:") && e.contains("agents.x.keys") && e.contains("`desk`"),
            "{e}"
        );
        let e = agent("keys = { \"X\" = \"repeat\" }\n");
        assert!(e.contains("not a key"), "{e}");
        let e = agent("keys = { \"1\" = \"dance\" }\n");
        assert!(e.contains("not an action"), "{e}");
        let e = agent("transfer = { desk = \"call my cousin\" }\n");
        assert!(e.contains("neither a SIP URI"), "{e}");
        let e = agent("silence = { after_secs = 5, mumble = 1 }\n");
        assert!(e.contains("mumble"), "{e}");
        assert!(plan("[default]\nagent = \"x\"\n\n[agents.x]\nlanguage = \"en\"\nsystem_prompt = \"p\"\ngreeting = \"g\"\ntransfer = { desk = \"+263242700100\" }\nkeys = { \"0\" = \"transfer:desk\", \"#\" = \"end_call\" }\n").is_ok());
        // A later, narrower rule after a broader one that does not cover it is fine.
        assert!(plan("[[rule]]\nagent = \"clinic\"\nto = \"+263242\"\n[[rule]]\nagent = \"english\"\nto_prefix = \"+263\"\n").is_ok());
    }
}
