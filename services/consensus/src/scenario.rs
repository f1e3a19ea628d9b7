//! What every model in this crate provides: how to build it for the checker, and how to tell its
//! steps to a reader.
//!
//! A *scenario* is one configuration of one protocol (for example "two-phase commit, three
//! resource managers, the coordinator may crash"). It builds a stateright [`ActorModel`] whose
//! configuration is the scenario itself, so the properties (plain `fn`s, as stateright requires)
//! can read the scenario back from `model.cfg`. It also names the actors, messages, timers and
//! choices of that model in words, which is what [`crate::trace`] needs to print a counterexample
//! as numbered steps instead of `Debug` dumps.

use stateright::actor::{Actor, ActorModel, ActorModelAction, ActorModelState, Id};
use stateright::Model;
use std::fmt::Debug;
use std::hash::Hash;

/// The model a scenario builds.
pub type ModelOf<S> = ActorModel<<S as Scenario>::Actor, S, <S as Scenario>::History>;
/// One state of a scenario's model: every actor's state, the messages in flight, the history.
pub type StateOf<S> = ActorModelState<<S as Scenario>::Actor, <S as Scenario>::History>;
/// One step of a scenario's model: a delivery, a loss, a timer firing, a choice.
pub type StepOf<S> = ActorModelAction<MsgOf<S>, TimerOf<S>, ChoiceOf<S>>;
/// The messages a scenario's actors exchange.
pub type MsgOf<S> = <<S as Scenario>::Actor as Actor>::Msg;
/// The timers a scenario's actors set.
pub type TimerOf<S> = <<S as Scenario>::Actor as Actor>::Timer;
/// The nondeterministic choices a scenario's actors make (a resource manager's vote, say).
pub type ChoiceOf<S> = <<S as Scenario>::Actor as Actor>::Random;

/// One configuration of one protocol, ready to be checked and narrated.
pub trait Scenario: Clone + Send + Sync + 'static {
    /// The actor type of the model (usually an enum over the protocol's roles).
    type Actor: Actor<
            Msg: Ord + Send + Sync + 'static,
            Timer: Ord + Send + Sync + 'static,
            Random: Send + Sync + 'static,
            Storage: Send + Sync + 'static,
            State: Send + Sync + 'static,
        > + Send
        + Sync
        + 'static;
    /// Auxiliary state the properties need that no actor holds (a linearizability tester, the
    /// votes ever cast); `()` when the actors' states say everything.
    type History: Clone + Debug + Hash + PartialEq + Send + Sync + 'static;

    /// One line saying what is modelled, for the report's heading.
    fn title(&self) -> String;
    /// Builds the model: actors, network, properties.
    fn model(&self) -> ModelOf<Self>;

    /// The actor's name in traces ("TM", "RM2", "acceptor A1").
    fn actor_name(&self, id: Id) -> String;
    /// A message in words ("vote yes", "prepare b1/P1").
    fn describe_message(&self, msg: &MsgOf<Self>) -> String;
    /// What happens when the timer fires, as a verb phrase after the actor's name ("crashes");
    /// `None` when the step is nothing but the messages it sends, which the trace then shows.
    fn describe_timer(&self, timer: &TimerOf<Self>) -> Option<String>;
    /// A choice, as a verb phrase after the actor's name ("votes yes").
    fn describe_choice(&self, choice: &ChoiceOf<Self>) -> String;
    /// The parts of a state a reader needs to see the verdict ("RM1 committed, RM2 aborted").
    fn describe_state(&self, state: &StateOf<Self>) -> String;
}

/// Whether no step can change `state` any more: every message left in flight is one its receiver
/// ignores, no timer is armed, no choice is pending (or every remaining step leaves the model's
/// boundary). In a model whose runs are all finite, something still undecided in a final state
/// stays undecided forever: that is how a liveness fact ("this RM can never decide") becomes a
/// state the checker can find.
pub fn is_final<S: Scenario>(model: &ModelOf<S>, state: &StateOf<S>) -> bool {
    let mut steps = Vec::new();
    Model::actions(model, state, &mut steps);
    steps
        .into_iter()
        .all(|step| match Model::next_state(model, state, step) {
            None => true,
            Some(next) => !Model::within_boundary(model, &next),
        })
}

/// ", seeded bug: NAME" for a title, or nothing for the protocol as specified.
pub fn bug_suffix<B: clap::ValueEnum>(bug: Option<B>) -> String {
    bug.and_then(|bug| bug.to_possible_value())
        .map(|name| format!(", seeded bug: {}", name.get_name()))
        .unwrap_or_default()
}
