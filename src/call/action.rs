//! What an agent does besides talking: end the call, transfer it, repeat its
//! last answer. An action comes from the model (a tool call, checked here
//! against what the agent's profile allows before anything happens), from a
//! key the caller pressed (the profile's key map), or from a policy (silence,
//! the longest call). The call core turns an action into a [`CallControl`]
//! for the transport once the words that go with it have been played.

use serde_json::json;

use super::ending::Ending;
use crate::config::{AgentProfile, KeyAction};
use crate::engine::{ToolCall, ToolSpec};
use crate::records::ActionRow;

/// An action the call will carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    EndCall,
    /// To the target the profile names `name`: `target` is its SIP URI or number.
    Transfer {
        name: String,
        target: String,
    },
    Repeat,
}

impl Action {
    pub fn label(&self) -> &'static str {
        match self {
            Action::EndCall => "end_call",
            Action::Transfer { .. } => "transfer",
            Action::Repeat => "repeat",
        }
    }
}

/// What the transport must do for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallControl {
    /// End the call (SIP BYE; the provider's stream closed) and record it so.
    HangUp(Ending),
    /// Hand the caller to `target` (SIP REFER; Twilio `<Dial>`); the
    /// transport reports back with [`super::core::CallCore::transfer_result`].
    Transfer { target: String },
}

/// Why a model's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such action")]
    Unknown,
    #[error("this agent may not {0}")]
    NotAllowed(&'static str),
    #[error("the transfer target is not in the agent's list")]
    Target,
    #[error("the arguments are not what the action takes")]
    Arguments,
    #[error("the request could not be read")]
    Malformed,
}

/// The actions the model is offered, with the agent's allowed values.
pub fn tools(profile: &AgentProfile) -> Vec<ToolSpec> {
    let mut tools = Vec::new();
    if profile.model_may("end_call") {
        tools.push(ToolSpec {
            name: "end_call".into(),
            description: "when the caller says goodbye or has nothing more to ask".into(),
            parameters: json!({"type": "object", "properties": {}}),
        });
    }
    if profile.model_may("transfer") && !profile.transfer.is_empty() {
        let names: Vec<&String> = profile.transfer.keys().collect();
        tools.push(ToolSpec {
            name: "transfer".into(),
            description: "when the caller asks to speak to a person".into(),
            parameters: json!({"type": "object", "properties": {
                "to": {"type": "string", "enum": names}}, "required": ["to"]}),
        });
    }
    tools
}

/// Checks a model's request against the agent's profile.
pub fn from_model(profile: &AgentProfile, call: &ToolCall) -> Result<Action, Refusal> {
    let args = call.arguments.as_object().ok_or(Refusal::Arguments)?;
    match call.name.as_str() {
        "end_call" if !profile.model_may("end_call") => Err(Refusal::NotAllowed("end the call")),
        "end_call" => Ok(Action::EndCall),
        "transfer" if !profile.model_may("transfer") || profile.transfer.is_empty() => {
            Err(Refusal::NotAllowed("transfer"))
        }
        "transfer" => {
            let to = args
                .get("to")
                .and_then(|v| v.as_str())
                .ok_or(Refusal::Arguments)?;
            let target = profile.transfer.get(to).ok_or(Refusal::Target)?;
            Ok(Action::Transfer {
                name: to.to_string(),
                target: target.clone(),
            })
        }
        _ => Err(Refusal::Unknown),
    }
}

/// What a key does, per the profile's key map.
pub fn from_key(profile: &AgentProfile, key: char) -> Option<Action> {
    let (_, action) = profile
        .key_actions()
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&key))?;
    match action {
        KeyAction::EndCall => Some(Action::EndCall),
        KeyAction::Repeat => Some(Action::Repeat),
        KeyAction::Transfer(name) => profile.transfer.get(&name).map(|t| Action::Transfer {
            target: t.clone(),
            name,
        }),
    }
}

/// What asked for an action, as the record says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Model,
    Key,
    Silence,
    MaxLength,
    Collect,
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Model => "model",
            Source::Key => "key",
            Source::Silence => "silence",
            Source::MaxLength => "max_length",
            Source::Collect => "collect",
            Source::Fallback => "fallback",
        }
    }
}

/// A refused request's record: its name when it is one of ours.
pub fn refused_row(call: Option<&ToolCall>, at_ms: f64) -> ActionRow {
    let action = call
        .map(|c| c.name.as_str())
        .filter(|n| matches!(*n, "end_call" | "transfer"))
        .unwrap_or("unknown");
    ActionRow {
        at_ms,
        action: action.into(),
        source: Source::Model.as_str().into(),
        target: None,
        result: "refused".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> AgentProfile {
        let mut p = AgentProfile::new("en", "x", "hi");
        p.model_actions = vec!["end_call".into(), "transfer".into()];
        p.transfer
            .insert("front_desk".into(), "sip:desk@127.0.0.1:5070".into());
        p.keys.insert("0".into(), "transfer:front_desk".into());
        p.keys.insert("9".into(), "repeat".into());
        p.keys.insert("#".into(), "end_call".into());
        p
    }

    fn call(name: &str, args: serde_json::Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: args,
        }
    }

    #[test]
    fn a_model_may_only_transfer_to_a_listed_target() {
        let p = profile();
        assert_eq!(
            from_model(&p, &call("transfer", json!({"to": "front_desk"}))),
            Ok(Action::Transfer {
                name: "front_desk".into(),
                target: "sip:desk@127.0.0.1:5070".into()
            })
        );
        assert_eq!(
            from_model(&p, &call("transfer", json!({"to": "+263771234567"}))),
            Err(Refusal::Target),
            "a number the model made up is refused"
        );
        assert_eq!(
            from_model(&p, &call("transfer", json!({"to": 7}))),
            Err(Refusal::Arguments)
        );
        assert_eq!(
            from_model(&p, &call("transfer", json!("front_desk"))),
            Err(Refusal::Arguments)
        );
        assert_eq!(
            from_model(&p, &call("dial", json!({}))),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            from_model(&p, &call("end_call", json!({}))),
            Ok(Action::EndCall)
        );
        let mut quiet = profile();
        quiet.model_actions.clear();
        assert!(matches!(
            from_model(&quiet, &call("end_call", json!({}))),
            Err(Refusal::NotAllowed(_))
        ));
        assert!(matches!(
            from_model(&quiet, &call("transfer", json!({"to": "front_desk"}))),
            Err(Refusal::NotAllowed(_))
        ));
    }

    #[test]
    fn keys_map_to_actions_and_tools_list_the_allowed_targets() {
        let p = profile();
        assert!(matches!(from_key(&p, '0'), Some(Action::Transfer { .. })));
        assert_eq!(from_key(&p, '9'), Some(Action::Repeat));
        assert_eq!(from_key(&p, '#'), Some(Action::EndCall));
        assert_eq!(from_key(&p, '5'), None);
        let t = tools(&p);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[1].parameters["properties"]["to"]["enum"],
            json!(["front_desk"])
        );
        assert!(
            tools(&AgentProfile::new("en", "x", "hi")).is_empty(),
            "a default agent has no actions for its model"
        );
        let mut keys_only = profile();
        keys_only.model_actions = vec!["end_call".into()];
        assert_eq!(
            tools(&keys_only).len(),
            1,
            "the targets serve the keys only"
        );
    }
}
