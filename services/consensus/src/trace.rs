//! A checker's path told as numbered steps: which actor received what from whom, what fired, who
//! chose what, and what each step sent on.
//!
//! A stateright path is a list of (state, action) pairs; its `Display` prints the actions'
//! `Debug` forms, which for these models read like
//! `Deliver { src: Id(3), dst: Id(0), msg: Internal(Promise { .. }) }`. This module replays each
//! step on the state before it (actors are deterministic, so the replay sends exactly what the
//! checked step sent) and words it with the scenario's names:
//!
//! ```text
//!   1. RM1 votes yes
//!        RM1 sends vote yes to TM
//!   2. RM1 → TM: vote yes
//!   ...
//!      end: TM down; RM1 voted yes, in doubt; RM2 voted yes, committed
//! ```

use crate::scenario::{ModelOf, MsgOf, Scenario, StateOf, StepOf};
use stateright::actor::{Actor, ActorModelAction, Command, Id, Out};
use stateright::Path;
use std::borrow::Cow;
use std::fmt::Write;

/// Renders a path of the scenario's model as numbered steps, ending with the final state.
pub fn narrate<S: Scenario>(
    scenario: &S,
    model: &ModelOf<S>,
    path: &Path<StateOf<S>, StepOf<S>>,
) -> String {
    let mut text = String::new();
    let mut number = 0;
    for (state, step) in path.clone().into_vec() {
        let Some(step) = step else { continue };
        number += 1;
        let Told {
            actor,
            headline,
            sends,
        } = tell_step(scenario, model, &state, step);
        let mut sends = group_by_message(scenario, sends).into_iter();
        let headline = match headline {
            Some(headline) => headline,
            // A step with nothing to say of its own (a queued message leaving) is its first send.
            None => match sends.next() {
                Some((msg, to)) => format!("{} sends {msg} to {to}", scenario.actor_name(actor)),
                None => format!("{} does nothing", scenario.actor_name(actor)),
            },
        };
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{number:>3}. {headline}");
        for (msg, to) in sends {
            let _ = writeln!(
                text,
                "       {} sends {msg} to {to}",
                scenario.actor_name(actor)
            );
        }
    }
    let _ = writeln!(
        text,
        "     end: {}",
        scenario.describe_state(path.last_state())
    );
    text
}

/// One step in words.
struct Told<S: Scenario> {
    /// The actor it happened to.
    actor: Id,
    /// What happened, or `None` if the step is only its sends.
    headline: Option<String>,
    /// The messages the actor sent in the step, found by replaying it.
    sends: Vec<(Id, MsgOf<S>)>,
}

/// Tells one step.
fn tell_step<S: Scenario>(
    scenario: &S,
    model: &ModelOf<S>,
    state: &StateOf<S>,
    step: StepOf<S>,
) -> Told<S> {
    let name = |id: Id| scenario.actor_name(id);
    match step {
        ActorModelAction::Deliver { src, dst, msg } => {
            let headline = format!(
                "{} → {}: {}",
                name(src),
                name(dst),
                scenario.describe_message(&msg)
            );
            let sends = replay(model, state, dst, |actor, actor_state, out| {
                actor.on_msg(dst, actor_state, src, msg, out)
            });
            Told {
                actor: dst,
                headline: Some(headline),
                sends,
            }
        }
        ActorModelAction::Drop(envelope) => {
            let headline = format!(
                "{} → {}: {} is lost",
                name(envelope.src),
                name(envelope.dst),
                scenario.describe_message(&envelope.msg)
            );
            Told {
                actor: envelope.dst,
                headline: Some(headline),
                sends: Vec::new(),
            }
        }
        ActorModelAction::Timeout(id, timer) => {
            let headline = scenario
                .describe_timer(&timer)
                .map(|phrase| format!("{} {phrase}", name(id)));
            let sends = replay(model, state, id, |actor, actor_state, out| {
                actor.on_timeout(id, actor_state, &timer, out)
            });
            Told {
                actor: id,
                headline,
                sends,
            }
        }
        ActorModelAction::Crash(id) => Told {
            actor: id,
            headline: Some(format!("{} crashes", name(id))),
            sends: Vec::new(),
        },
        ActorModelAction::Recover(id) => Told {
            actor: id,
            headline: Some(format!("{} recovers", name(id))),
            sends: Vec::new(),
        },
        ActorModelAction::SelectRandom { actor, random, .. } => {
            let headline = format!("{} {}", name(actor), scenario.describe_choice(&random));
            let sends = replay(model, state, actor, |node, actor_state, out| {
                node.on_random(actor, actor_state, &random, out)
            });
            Told {
                actor,
                headline: Some(headline),
                sends,
            }
        }
    }
}

/// Runs one handler of actor `id` on its state in `state` and returns the messages it sent.
fn replay<S: Scenario>(
    model: &ModelOf<S>,
    state: &StateOf<S>,
    id: Id,
    handler: impl FnOnce(&S::Actor, &mut Cow<<S::Actor as Actor>::State>, &mut Out<S::Actor>),
) -> Vec<(Id, MsgOf<S>)> {
    let index = usize::from(id);
    let (Some(actor), Some(actor_state)) = (model.actors.get(index), state.actor_states.get(index))
    else {
        return Vec::new();
    };
    let mut actor_state = Cow::Borrowed(&**actor_state);
    let mut out = Out::new();
    handler(actor, &mut actor_state, &mut out);
    out.into_iter()
        .filter_map(|command| match command {
            Command::Send(dst, msg) => Some((dst, msg)),
            _ => None,
        })
        .collect()
}

/// Sends of one message to several actors, as ("commit", "RM1, RM2, RM3"), in send order.
fn group_by_message<S: Scenario>(
    scenario: &S,
    sends: Vec<(Id, MsgOf<S>)>,
) -> Vec<(String, String)> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (dst, msg) in sends {
        let msg = scenario.describe_message(&msg);
        let dst = scenario.actor_name(dst);
        match grouped.last_mut() {
            Some((last, recipients)) if *last == msg => recipients.push(dst),
            _ => grouped.push((msg, vec![dst])),
        }
    }
    grouped
        .into_iter()
        .map(|(msg, recipients)| (msg, recipients.join(", ")))
        .collect()
}
