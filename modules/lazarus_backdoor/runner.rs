// SPDX-License-Identifier: GPL-2.0
//! The module's thread: applies the configuration, hands the connection manager's
//! events to the current role, and runs the role's periodic work. Every RDMA object
//! is created and destroyed here, so teardown at unload happens in this thread as
//! it stops.

use super::lzk::kthread::{should_stop, sleep_ms, ThreadBody};
use super::lzk::proto::genl_bdoor::role;
use super::lzk::rdma::{CmEvent, CmId, EventInfo, RawId};
use super::monitor::Monitor;
use super::target::Target;
use super::{now_ms, Config, Shared};
use kernel::prelude::*;
use kernel::sync::Arc;

pub(crate) struct Body {
    shared: Arc<Shared>,
}

impl Body {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self> {
        Ok(Body { shared })
    }
}

enum Role {
    None,
    Target(Target),
    Monitor(Monitor),
}

impl Shared {
    /// Forget queued events of an id just destroyed (its address may be reused).
    pub(crate) fn purge(&self, id: RawId) {
        super::lzk::vec::retain(&mut self.events.lock(), |e| e.id != id);
    }
}

/// A connection request nobody wants: refuse it and destroy its id.
pub(crate) fn refuse(shared: &Shared, e: &EventInfo) {
    // SAFETY: A `ConnectRequest` event names a new child id that the handler left
    // to us (it returns 0) and that nothing adopted yet: each event is handled once.
    if let Some(child) = unsafe { CmId::adopt(e.id) } {
        child.reject();
        drop(child);
        shared.purge(e.id);
    }
    super::bump(&shared.stats.refused);
}

impl ThreadBody for Body {
    fn run(&self) {
        let s = &*self.shared;
        let mut applied = 0u64;
        let mut current = Role::None;
        let mut interval = super::INTERVAL_DEFAULT_MS;
        while !should_stop() {
            // Events first, with the role they were meant for.
            let events = core::mem::take(&mut *s.events.lock());
            let now = now_ms();
            for e in events.iter() {
                match &mut current {
                    Role::Target(t) => t.on_event(s, e, now),
                    Role::Monitor(m) => m.on_event(s, e, now),
                    Role::None if e.event == CmEvent::ConnectRequest => refuse(s, e),
                    Role::None => {}
                }
            }
            let cfg: Option<Config> = {
                let c = s.config.lock();
                (c.generation != applied).then_some(*c)
            };
            if let Some(cfg) = cfg {
                applied = cfg.generation;
                interval = cfg.interval_ms;
                // The old role's ids go before the new role makes any.
                drop(core::mem::replace(&mut current, Role::None));
                current = match cfg.role {
                    role::TARGET => match Target::new(s, &cfg) {
                        Ok(t) => Role::Target(t),
                        Err(e) => {
                            pr_warn!("target role not started: error {}\n", e.to_errno());
                            Role::None
                        }
                    },
                    role::MONITOR => Role::Monitor(Monitor::new(&cfg)),
                    _ => Role::None,
                };
                if !matches!(current, Role::Monitor(_)) {
                    super::lzk::vec::clear(&mut s.view.lock());
                }
            }
            let now = now_ms();
            let nap = match &mut current {
                Role::Target(t) => t.tick(s, now, interval),
                Role::Monitor(m) => m.tick(s, now, interval),
                Role::None => 50,
            };
            sleep_ms(nap.clamp(1, 50));
        }
        // Dropping the role here destroys every id, queue pair, region and domain in
        // this thread, before the module's shared state may go.
        drop(current);
    }
}
