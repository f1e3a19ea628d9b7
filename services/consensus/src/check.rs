//! Running the model checker on a scenario and reading its verdicts.
//!
//! The checker explores every state reachable from the initial one, breadth first, on one thread
//! (the models here are small enough that a second thread would not pay for its coordination).
//! A run printed for a reader should be a shortest one, the easiest to read; breadth first alone
//! does not give it, because stateright keeps the *last* state it found for a property, not the
//! first, so the run it returns can be a long one found in passing (a commit reached 34 steps into
//! a ZAB run, after a crash that had nothing to do with it). [`Report::trace`] therefore searches
//! again for the property alone with a bound on the depth, halving the bound until the shortest
//! run is found: a few bounded re-runs, made only for the runs that are printed.
//!
//! How far it goes is the caller's choice ([`Stop`]): until every property is decided (the whole
//! state space, unless every property has a discovery sooner), or until the first counterexample,
//! which is all a seeded bug needs and can be much faster (a buggy model's other invariants may
//! never fail, so "every property decided" means exploring all of its states). A verdict of
//! [`Verdict::Holds`] or [`Verdict::Unreached`] is always over the whole state space; a property
//! a run stopped before deciding is [`Verdict::Undecided`], and [`Report::stopped_early`] says when
//! the state count is of a partial run.

use crate::scenario::{ModelOf, Scenario, StateOf, StepOf};
use crate::trace;
use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};
use std::fmt;
use std::time::{Duration, Instant};

/// What the checker concluded about one property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An `always` property held in every reachable state.
    Holds,
    /// An `always` property failed: the checker found a counterexample.
    Violated,
    /// A `sometimes` property: the checker reached a state where it is true.
    Reached,
    /// A `sometimes` property: no reachable state makes it true.
    Unreached,
    /// The run stopped (at a counterexample to another property) before deciding this one.
    Undecided,
}

/// When the checker stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// When every property is decided: each has a discovery, or every state has been explored.
    WhenAllDecided,
    /// At the first counterexample to an `always` property (or when all states are explored).
    AtFirstViolation,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Holds => "holds",
            Verdict::Violated => "VIOLATED",
            Verdict::Reached => "reached",
            Verdict::Unreached => "unreached",
            Verdict::Undecided => "undecided (the run stopped first)",
        })
    }
}

/// One property and what the checker found for it.
pub struct Finding<S: Scenario> {
    /// The property's name, as the model declares it.
    pub property: &'static str,
    /// `always` (an invariant) or `sometimes` (a reachability claim).
    pub expectation: Expectation,
    /// The verdict.
    pub verdict: Verdict,
    /// The discovery: a counterexample for an `always` property, an example for a `sometimes`.
    pub path: Option<Path<StateOf<S>, StepOf<S>>>,
}

/// The result of checking one scenario.
pub struct Report<S: Scenario> {
    /// The scenario that was checked.
    pub scenario: S,
    /// A copy of its model, used to replay steps when narrating a path.
    model: ModelOf<S>,
    /// Distinct states explored.
    pub unique_states: usize,
    /// States generated, counting each time a known state was reached again.
    pub generated_states: usize,
    /// The longest path explored, in steps.
    pub max_depth: usize,
    /// Wall-clock time of the exploration.
    pub elapsed: Duration,
    /// The checker stopped before exhausting the state space (every property had a discovery,
    /// or a counterexample was found with [`Stop::AtFirstViolation`]): the counts are of a
    /// partial exploration.
    pub stopped_early: bool,
    /// One finding per property, in the model's order.
    pub findings: Vec<Finding<S>>,
}

/// Checks the scenario's model until every property is decided, and reports the verdicts.
pub fn run<S: Scenario>(scenario: S) -> Report<S> {
    run_until(scenario, Stop::WhenAllDecided)
}

/// Checks the scenario's model until `stop`, and reports the verdicts.
pub fn run_until<S: Scenario>(scenario: S, stop: Stop) -> Report<S> {
    let model = scenario.model();
    let properties: Vec<(&'static str, Expectation)> = model
        .properties
        .iter()
        .map(|property| (property.name, property.expectation.clone()))
        .collect();
    let started = Instant::now();
    let finish_when = match stop {
        Stop::WhenAllDecided => HasDiscoveries::All,
        Stop::AtFirstViolation => HasDiscoveries::AnyFailures,
    };
    let checker = model.checker().finish_when(finish_when).spawn_bfs().join();
    let elapsed = started.elapsed();

    let mut discoveries = checker.discoveries();
    let violated = properties.iter().any(|(property, expectation)| {
        *expectation != Expectation::Sometimes && discoveries.contains_key(property)
    });
    let stopped_early =
        discoveries.len() == properties.len() || (stop == Stop::AtFirstViolation && violated);
    let findings = properties
        .into_iter()
        .map(|(property, expectation)| {
            let path = discoveries.remove(property);
            let verdict = match (&expectation, path.is_some()) {
                (Expectation::Sometimes, true) => Verdict::Reached,
                (_, true) => Verdict::Violated,
                (_, false) if stopped_early => Verdict::Undecided,
                (Expectation::Sometimes, false) => Verdict::Unreached,
                (_, false) => Verdict::Holds,
            };
            Finding {
                property,
                expectation,
                verdict,
                path,
            }
        })
        .collect();
    Report {
        model: scenario.model(),
        scenario,
        unique_states: checker.unique_state_count(),
        generated_states: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        stopped_early,
        findings,
    }
}

impl<S: Scenario> Report<S> {
    /// The verdict for a property, or `None` if the model has no property of that name.
    pub fn verdict(&self, property: &str) -> Option<Verdict> {
        self.finding(property).map(|finding| finding.verdict)
    }

    /// The finding for a property, or `None` if the model has no property of that name.
    pub fn finding(&self, property: &str) -> Option<&Finding<S>> {
        self.findings
            .iter()
            .find(|finding| finding.property == property)
    }

    /// The property's discovery told as numbered steps, or `None` if it has none. The run told is
    /// a shortest one (see the module docs).
    pub fn trace(&self, property: &str) -> Option<String> {
        let finding = self.finding(property)?;
        let found = finding.path.as_ref()?;
        let path = shortest_discovery(&self.scenario, finding.property, found)
            .unwrap_or_else(|| found.clone());
        Some(trace::narrate(&self.scenario, &self.model, &path))
    }

    /// The names of the properties whose discovery is a counterexample.
    pub fn violations(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.findings
            .iter()
            .filter(|finding| finding.verdict == Verdict::Violated)
            .map(|finding| finding.property)
    }
}

/// A shortest run to a state where `property` has its discovery, given one run `found` that gets
/// there: the smallest depth bound under which the checker, looking for that property alone, still
/// finds one. (A bound of `d` explores states of fewer than `d` steps' depth, counting the initial
/// state as depth 1; whether a run exists within a bound only grows with the bound.) `None` if no
/// bounded run finds it, which would be a checker bug; the caller then keeps `found`.
fn shortest_discovery<S: Scenario>(
    scenario: &S,
    property: &'static str,
    found: &Path<StateOf<S>, StepOf<S>>,
) -> Option<Path<StateOf<S>, StepOf<S>>> {
    let within = |bound: usize| {
        scenario
            .model()
            .checker()
            .target_max_depth(bound)
            .finish_when(HasDiscoveries::AnyOf([property].into()))
            .spawn_bfs()
            .join()
            .discovery(property)
    };
    // `found` has this many steps, so a bound one past its last state finds it.
    let (mut low, mut high) = (1, found.clone().into_actions().len() + 2);
    let mut shortest = None;
    while low < high {
        let bound = low + (high - low) / 2;
        match within(bound) {
            Some(path) => {
                shortest = Some(path);
                high = bound;
            }
            None => low = bound + 1,
        }
    }
    shortest
}

impl<S: Scenario> fmt::Display for Report<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.scenario.title())?;
        writeln!(
            f,
            "explored {} distinct states ({} generated), depth {}, in {:.2} s{}",
            thousands(self.unique_states),
            thousands(self.generated_states),
            self.max_depth,
            self.elapsed.as_secs_f64(),
            if self.stopped_early {
                " (stopped before exploring them all)"
            } else {
                ""
            }
        )?;
        for finding in &self.findings {
            let kind = match finding.expectation {
                Expectation::Always => "always",
                Expectation::Eventually => "eventually",
                Expectation::Sometimes => "sometimes",
            };
            // No step count: the run found here need not be a shortest one; the traces are.
            writeln!(
                f,
                "  {kind:<9}  {:<30}  {}",
                finding.property, finding.verdict
            )?;
        }
        Ok(())
    }
}

/// `12345` as `12,345`, for counts a reader compares at a glance.
fn thousands(count: usize) -> String {
    let digits = count.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(16_668), "16,668");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
