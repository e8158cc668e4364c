//! A recording wrapper around the simulator, shared by the property tests: it keeps what the
//! squeezer saw and asked for in every round, and the outcome rule every property uses.

use proptest::prelude::*;
use squeeze::backend::sim::Simulator;
use squeeze::{Action, DomId, Domain, Error, Host, Io, Kib};

/// What the squeezer saw and asked for between two host snapshots.
#[derive(Debug)]
pub struct Round {
    /// The snapshot.
    pub host: Host,
    /// The targets set after it.
    pub actions: Vec<Action>,
}

/// The simulator, with a record of every round the squeezer ran on it.
pub struct Recorder {
    /// The simulated host.
    pub sim: Simulator,
    /// Every round so far.
    pub rounds: Vec<Round>,
}

impl Recorder {
    /// A recorder over `sim`, with no round yet.
    pub fn new(sim: Simulator) -> Self {
        Recorder {
            sim,
            rounds: Vec::new(),
        }
    }
}

impl Io for Recorder {
    fn make_host(&mut self) -> squeeze::Result<Host> {
        let host = self.sim.make_host()?;
        self.rounds.push(Round {
            host: host.clone(),
            actions: Vec::new(),
        });
        Ok(host)
    }
    fn set_maxmem(&mut self, domid: DomId, kib: Kib) -> squeeze::Result<()> {
        self.sim.set_maxmem(domid, kib)
    }
    fn execute_action(&mut self, action: Action) -> squeeze::Result<()> {
        self.rounds
            .last_mut()
            .expect("an action follows a snapshot")
            .actions
            .push(action);
        self.sim.execute_action(action)
    }
    fn wait(&mut self, seconds: f64) -> squeeze::Result<()> {
        self.sim.wait(seconds)
    }
    fn now(&mut self) -> squeeze::Result<f64> {
        self.sim.now()
    }
    fn target_host_free_mem_kib(&self) -> Kib {
        self.sim.target_host_free_mem_kib()
    }
    fn free_memory_tolerance_kib(&self) -> Kib {
        self.sim.free_memory_tolerance_kib()
    }
}

/// Outcomes a request may legitimately have on a random host; anything else (above all a
/// simulator safety violation, reported as a backend error) fails the property.
pub fn acceptable<T>(r: squeeze::Result<T>) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::CannotFreeThisMuchMemory { .. } | Error::DomainsRefusedToCooperate { .. }) => {
            Ok(None)
        }
        Err(e) => Err(TestCaseError::fail(format!("{e}"))),
    }
}

/// A new target frees memory when it lies below actual by more than the inaccuracy (the
/// squeezer's own test for a freeing target).
pub fn frees(d: &Domain, new_target_kib: Kib) -> bool {
    new_target_kib < d.memory_actual_kib - d.inaccuracy_kib
}
