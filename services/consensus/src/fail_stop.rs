//! Fail-stop crashes as a modelled action: an actor that may stop for good at any moment.
//!
//! The atomic-commit models ask what the *others* can do once a coordinator (or an acceptor) has
//! crashed, so the crash here is permanent: [`FailStop`] wraps a protocol role, arms a `Crash`
//! timer, and when that timer fires the actor is [`Life::Down`]: it ignores every message from
//! then on. A real node would restart and read its log; the models leave that out on purpose,
//! because "who can decide while it is down" is the question (blocking), and a recovery would only
//! hide the answer. (stateright's own crash support always offers a recovery, which is why it is
//! not used here.)
//!
//! Three details make the crash honest:
//! - **A crash can fall in the middle of a broadcast.** In the model one step can send to many
//!   actors at once, and messages already sent are delivered even after their sender stops. If a
//!   coordinator's "commit to all" were one step, no crash could ever leave RM1 told and RM2 not,
//!   and 2PC would look non-blocking. So a crashable actor's step that sends two or more messages
//!   queues them in an outbox, and they leave one per step (a `Transmit` timer), with the crash
//!   free to come between any two. A single send goes out at once: a crash just before it is
//!   already the crash before the step.
//! - **A crash can be announced.** Protocols that assume a perfect failure detector (3PC's
//!   termination protocol, a backup leader that takes over) are told through
//!   [`FailStop::crash_notices`]: messages delivered, like any other, after the crash. A model
//!   without a detector gives none, and its actors must time out instead.
//! - **A crash after the actor's work is done is not offered.** Once the role says it is finished
//!   (its decision sent, say) and its outbox is empty, nothing anyone can observe depends on whether
//!   it crashes, so the crash timer is cancelled: fewer states, the same verdicts.

use stateright::actor::{model_timeout, Actor, ActorModelState, Command, Id, Out};
use std::borrow::Cow;
use std::collections::VecDeque;

/// A protocol role that [`FailStop`] can wrap.
pub trait Role: Actor {
    /// Whether the role, in this state, has done everything others could observe, so that a crash
    /// from here on would change nothing (see the module docs).
    fn is_finished(&self, state: &Self::State) -> bool;
}

/// A role that may crash and stay down (when `may_crash`), or an ordinary actor (when not).
#[derive(Clone, Debug)]
pub struct FailStop<R: Role> {
    /// The protocol role being run.
    pub role: R,
    /// Whether this actor may crash at all. The models keep the set of crashable actors small
    /// (the coordinator; one acceptor), since every crashable actor multiplies the state space.
    pub may_crash: bool,
    /// Messages a perfect failure detector delivers when this actor crashes (empty when the model
    /// assumes none).
    pub crash_notices: Vec<(Id, R::Msg)>,
}

/// An actor's life: up, with its role's state and the messages still waiting to leave, or down.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Life<S, M> {
    /// Running.
    Up {
        /// The role's own state.
        role: S,
        /// Messages of one step still to be sent, one per step (see the module docs).
        outbox: VecDeque<(Id, M)>,
    },
    /// Crashed, for good.
    Down,
}

/// The timers of a [`FailStop`] actor: its own two, and its role's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifeTimer<T> {
    /// The crash, which may come at any moment while the timer is armed.
    Crash,
    /// The next queued message leaves.
    Transmit,
    /// A timer of the role.
    Role(T),
}

impl<R: Role> FailStop<R> {
    /// An actor that never crashes.
    pub fn reliable(role: R) -> Self {
        FailStop {
            role,
            may_crash: false,
            crash_notices: Vec::new(),
        }
    }

    /// An actor that may crash, its crash announced by `crash_notices`.
    pub fn crashable(role: R, crash_notices: Vec<(Id, R::Msg)>) -> Self {
        FailStop {
            role,
            may_crash: true,
            crash_notices,
        }
    }

    /// Applies the role's commands to `o`, queueing multi-message steps of a crashable actor, and
    /// returns the new state.
    fn settle(
        &self,
        role: R::State,
        mut outbox: VecDeque<(Id, R::Msg)>,
        role_out: Out<R>,
        o: &mut Out<Self>,
    ) -> Life<R::State, R::Msg> {
        let was_empty = outbox.is_empty();
        let mut sends = Vec::new();
        for command in role_out {
            match command {
                Command::Send(dst, msg) => sends.push((dst, msg)),
                Command::SetTimer(timer, duration) => o.set_timer(LifeTimer::Role(timer), duration),
                Command::CancelTimer(timer) => o.cancel_timer(LifeTimer::Role(timer)),
                Command::ChooseRandom(key, choices) => o.choose_random(key, choices),
                Command::Save(storage) => o.save(storage),
            }
        }
        if self.may_crash && sends.len() > 1 {
            outbox.extend(sends);
        } else {
            for (dst, msg) in sends {
                o.send(dst, msg);
            }
        }
        if was_empty && !outbox.is_empty() {
            o.set_timer(LifeTimer::Transmit, model_timeout());
        }
        if self.may_crash && outbox.is_empty() && self.role.is_finished(&role) {
            o.cancel_timer(LifeTimer::Crash);
        }
        Life::Up { role, outbox }
    }

    /// Runs one handler of the role on a running actor; a down actor, or a step that changes
    /// nothing, stays a no-op (which stateright prunes).
    fn step(
        &self,
        state: &mut Cow<Life<R::State, R::Msg>>,
        o: &mut Out<Self>,
        handler: impl FnOnce(&mut Cow<R::State>, &mut Out<R>),
    ) {
        let (role, outbox, role_out) = match &**state {
            Life::Down => return,
            Life::Up { role, outbox } => {
                let mut role_state = Cow::Borrowed(role);
                let mut role_out = Out::new();
                handler(&mut role_state, &mut role_out);
                if matches!(role_state, Cow::Borrowed(_)) && role_out.is_empty() {
                    return;
                }
                (role_state.into_owned(), outbox.clone(), role_out)
            }
        };
        *state = Cow::Owned(self.settle(role, outbox, role_out, o));
    }
}

impl<R: Role> Actor for FailStop<R> {
    type Msg = R::Msg;
    type State = Life<R::State, R::Msg>;
    type Timer = LifeTimer<R::Timer>;
    type Random = R::Random;
    type Storage = R::Storage;

    fn name(&self) -> String {
        self.role.name()
    }

    fn on_start(&self, id: Id, storage: &Option<Self::Storage>, o: &mut Out<Self>) -> Self::State {
        if self.may_crash {
            o.set_timer(LifeTimer::Crash, model_timeout());
        }
        let mut role_out = Out::new();
        let role = self.role.on_start(id, storage, &mut role_out);
        self.settle(role, VecDeque::new(), role_out, o)
    }

    fn on_msg(
        &self,
        id: Id,
        state: &mut Cow<Self::State>,
        src: Id,
        msg: Self::Msg,
        o: &mut Out<Self>,
    ) {
        self.step(state, o, |role_state, role_out| {
            self.role.on_msg(id, role_state, src, msg, role_out)
        });
    }

    fn on_timeout(
        &self,
        id: Id,
        state: &mut Cow<Self::State>,
        timer: &Self::Timer,
        o: &mut Out<Self>,
    ) {
        match timer {
            LifeTimer::Crash => {
                if let Life::Up { .. } = **state {
                    *state = Cow::Owned(Life::Down);
                    o.cancel_timer(LifeTimer::Transmit);
                    for (dst, msg) in &self.crash_notices {
                        o.send(*dst, msg.clone());
                    }
                }
            }
            LifeTimer::Transmit => {
                let Life::Up { role, outbox } = &**state else {
                    return;
                };
                let (role, mut outbox) = (role.clone(), outbox.clone());
                let Some((dst, msg)) = outbox.pop_front() else {
                    return;
                };
                o.send(dst, msg);
                if !outbox.is_empty() {
                    o.set_timer(LifeTimer::Transmit, model_timeout());
                } else if self.may_crash && self.role.is_finished(&role) {
                    o.cancel_timer(LifeTimer::Crash);
                }
                *state = Cow::Owned(Life::Up { role, outbox });
            }
            LifeTimer::Role(timer) => self.step(state, o, |role_state, role_out| {
                self.role.on_timeout(id, role_state, timer, role_out)
            }),
        }
    }

    fn on_random(
        &self,
        id: Id,
        state: &mut Cow<Self::State>,
        random: &Self::Random,
        o: &mut Out<Self>,
    ) {
        self.step(state, o, |role_state, role_out| {
            self.role.on_random(id, role_state, random, role_out)
        });
    }
}

/// The running role's state, or `None` for a crashed actor.
pub fn role_state<S, M>(life: &Life<S, M>) -> Option<&S> {
    match life {
        Life::Up { role, .. } => Some(role),
        Life::Down => None,
    }
}

/// How many actors have crashed in `state`.
pub fn crashed_count<R: Role, H>(state: &ActorModelState<FailStop<R>, H>) -> usize {
    state
        .actor_states
        .iter()
        .filter(|life| matches!(***life, Life::Down))
        .count()
}

/// The model boundary for "at most one crash": states with two crashed actors are not explored.
/// (Several actors may be crashable, but no run loses more than one.)
pub fn at_most_one_crash<R: Role, C, H>(_cfg: &C, state: &ActorModelState<FailStop<R>, H>) -> bool {
    crashed_count(state) <= 1
}

/// A [`LifeTimer`] in words, the role's own timers worded by `role_timer`.
pub fn describe_timer<T>(
    timer: &LifeTimer<T>,
    role_timer: impl FnOnce(&T) -> String,
) -> Option<String> {
    match timer {
        LifeTimer::Crash => Some("crashes (and stays down)".to_owned()),
        LifeTimer::Transmit => None,
        LifeTimer::Role(timer) => Some(role_timer(timer)),
    }
}
