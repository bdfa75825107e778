//! The agents a call may get, made ready (greeting synthesized, prompt
//! evaluated) and routed by the current dialplan. A reload prepares what is
//! new, then swaps the plan in one step: calls in progress keep the agent
//! they were given, the next call gets the new plan's.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::Agent;
use crate::dialplan::{CallInfo, Dialplan};
use crate::engine::{Engine, EngineError};

/// The agent routed to a call.
#[derive(Clone)]
pub struct Routed {
    /// The agent's name, as the record shows it.
    pub name: String,
    /// The dialplan rule that chose it; `None` for the default.
    pub rule: Option<String>,
    /// The agent, ready; `None` when calls are answered by the echo agent.
    pub agent: Option<Arc<Agent>>,
}

struct Current {
    plan: Dialplan,
    prepared: BTreeMap<String, Arc<Agent>>,
}

pub struct Agents {
    /// `None`: the echo agent answers every call (no models loaded).
    engine: Option<Arc<Engine>>,
    current: RwLock<Arc<Current>>,
}

impl Agents {
    /// Prepares every agent the plan may route to.
    pub async fn new(engine: Option<Arc<Engine>>, plan: Dialplan) -> Result<Agents, EngineError> {
        let prepared = prepare(engine.as_ref(), &plan, &BTreeMap::new()).await?;
        Ok(Agents {
            engine,
            current: RwLock::new(Arc::new(Current { plan, prepared })),
        })
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The agent for a call.
    pub fn route(&self, call: &CallInfo) -> Routed {
        let current = self.current();
        let route = current.plan.route(call);
        Routed {
            agent: current.prepared.get(&route.agent).cloned(),
            name: if self.engine.is_some() {
                route.agent
            } else {
                "echo".into()
            },
            rule: route.rule,
        }
    }

    /// The agent named `name`, ready.
    pub fn agent(&self, name: &str) -> Option<Arc<Agent>> {
        self.current().prepared.get(name).cloned()
    }

    /// The agent calls get when no rule routes them.
    pub fn default_agent(&self) -> Option<Arc<Agent>> {
        let current = self.current();
        current.prepared.get(&current.plan.default_agent).cloned()
    }

    /// The plan in force.
    pub fn plan(&self) -> Dialplan {
        self.current().plan.clone()
    }

    /// Puts `plan` in force once its agents are ready (those whose profile
    /// did not change are kept as they are).
    pub async fn reload(&self, plan: Dialplan) -> Result<(), EngineError> {
        let old = self.current();
        let prepared = prepare(self.engine.as_ref(), &plan, &old.prepared).await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Current { plan, prepared });
        Ok(())
    }
}

/// Every agent of `plan`, ready: taken from `ready` when its profile is the
/// same, prepared otherwise.
async fn prepare(
    engine: Option<&Arc<Engine>>,
    plan: &Dialplan,
    ready: &BTreeMap<String, Arc<Agent>>,
) -> Result<BTreeMap<String, Arc<Agent>>, EngineError> {
    let Some(engine) = engine else {
        return Ok(BTreeMap::new());
    };
    let mut prepared = BTreeMap::new();
    for (name, profile) in &plan.agents {
        let agent = match ready.get(name).filter(|a| a.profile == *profile) {
            Some(a) => a.clone(),
            None => {
                let agent = Agent::prepare(engine, name, profile).await?;
                tracing::info!(
                    agent = %name,
                    language = %profile.language,
                    greeting_ms = agent.greeting.len() as u64 * crate::audio::FRAME_MS as u64,
                    prepared_ms = agent.prepared_in.as_millis() as u64,
                    "agent ready"
                );
                Arc::new(agent)
            }
        };
        prepared.insert(name.clone(), agent);
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentProfile;
    use std::path::Path;

    fn profiles() -> BTreeMap<String, AgentProfile> {
        let p = AgentProfile::new("en", "x", "hi");
        [("a".to_string(), p.clone()), ("b".to_string(), p)]
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn routes_by_the_plan_in_force_and_a_reload_swaps_it() {
        let plan = |to: &str| {
            Dialplan::parse(
                &format!("[[rule]]\nname = \"r\"\nagent = \"b\"\nto = \"{to}\"\n"),
                Path::new("p.toml"),
                "a",
                &profiles(),
            )
            .unwrap()
        };
        let agents = Agents::new(None, plan("100")).await.unwrap();
        let call = CallInfo {
            to: Some("100".into()),
            ..CallInfo::default()
        };
        let r = agents.route(&call);
        assert_eq!((r.name.as_str(), r.rule.as_deref()), ("echo", Some("r")));
        assert!(r.agent.is_none(), "no engine, no agent: the echo answers");
        agents.reload(plan("200")).await.unwrap();
        assert_eq!(agents.route(&call).rule, None, "the new plan is in force");
    }
}
