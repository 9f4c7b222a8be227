//! How long a client session lives, and its entry in the replicated ownership table.
//!
//! A session is owned by the node that accepted its first graph (or took it over). It ends:
//!
//! - when its client closes (`Close`, sent by `Client::close` and on drop, after the release
//!   of its futures);
//! - when no connection has carried it for [`SESSION_GRACE_MS`] (the client died, or lost
//!   its connection and did not re-attach: a client that re-attaches sends `Attach` on its
//!   new connection, and gives up after a minute);
//!
//! but never while it holds published datasets: it ends once they are unpublished. Ending
//! a session drops it here, tells the backups (which then never take it over), and turns
//! its ownership entry into a tombstone. A client that comes back afterwards and submits
//! again starts the session anew (its first claim outranks the tombstone). Ending a session
//! does not release results its client still holds futures of: only the client's releases
//! (or `close`) do.
//!
//! The shell tells the core what happened ([`NodeCore::handle_attach`],
//! [`NodeCore::handle_detach`], [`NodeCore::handle_close`], [`NodeCore::handle_claimed`]);
//! the core decides, and says what to write ([`NodeCore::take_owner_writes`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rdask_graph::GraphId;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{NodeCore, RequestId};
use crate::protocol::ClientResponse;

/// How long a session no connection carries is kept: longer than a client looks for a new
/// owner after losing its node (a minute) plus a take-over's wait.
pub const SESSION_GRACE_MS: u64 = 120_000;

/// A change to the replicated ownership table, for the shell to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerWrite {
    /// This node owns the session's graphs (the entry is keyed by the session shifted into
    /// a graph id) in `epoch`: 1 for a first claim (the table raises it past an entry of
    /// another owner or a tombstone), higher for a take-over (refused if the session
    /// ended). The shell hands the outcome back ([`NodeCore::handle_claimed`]).
    Claim {
        /// The session's entry.
        graph: GraphId,
        /// The epoch claimed.
        epoch: u64,
    },
    /// This node no longer owns the session (it ended): its entry becomes a tombstone.
    Release {
        /// The session's entry.
        graph: GraphId,
        /// Its client closed it: the entry goes whoever the table names (another node may
        /// have taken it over behind a partition while the client stayed here).
        closed: bool,
    },
}

/// What the core keeps to decide when sessions end.
#[derive(Default)]
pub(super) struct Lifetimes {
    /// Connections (or in-process clients) that carry each session, owned here or not.
    attached: FxHashMap<u64, u32>,
    /// Owned sessions no connection carries, since when.
    idle: FxHashMap<u64, u64>,
    /// Owned sessions whose client closed them, kept for their datasets.
    closed: FxHashSet<u64>,
    /// Datasets published here, by session.
    pub(super) datasets: FxHashMap<u64, u32>,
    /// When to look at a session again: (time, session), earliest first.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    /// [`SESSION_GRACE_MS`], unless set otherwise.
    grace_ms: Option<u64>,
}

fn entry_of(session: u64) -> GraphId {
    GraphId(u128::from(session) << 64)
}

impl NodeCore {
    /// How long a session no connection carries is kept (default [`SESSION_GRACE_MS`]).
    pub fn set_session_grace(&mut self, ms: u64) {
        self.lifetimes.grace_ms = Some(ms);
    }

    fn session_grace(&self) -> u64 {
        self.lifetimes.grace_ms.unwrap_or(SESSION_GRACE_MS)
    }

    /// A connection (or an in-process client) now carries `session`. Replies `Attached`.
    pub fn handle_attach(&mut self, request: RequestId, session: u64) {
        *self.lifetimes.attached.entry(session).or_default() += 1;
        self.lifetimes.idle.remove(&session);
        self.replies.push((request, ClientResponse::Attached));
    }

    /// A connection that carried `session` closed (the shell saw it end).
    pub fn handle_detach(&mut self, session: u64) {
        let Some(n) = self.lifetimes.attached.get_mut(&session) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.lifetimes.attached.remove(&session);
            if self.sessions.contains_key(&session) {
                self.session_idle(session);
            }
        }
    }

    /// The client of `session` closed: the session ends here (once its datasets are
    /// unpublished, if it holds any). Replies `Closed`.
    pub fn handle_close(&mut self, request: RequestId, session: u64) {
        self.lifetimes.attached.remove(&session);
        if self.sessions.contains_key(&session) {
            if self.lifetimes.datasets.get(&session).copied().unwrap_or(0) > 0 {
                self.lifetimes.closed.insert(session);
                self.lifetimes.idle.insert(session, self.now_ms);
            } else {
                self.end_session(session, Some(true));
            }
        }
        self.replies.push((request, ClientResponse::Closed));
    }

    /// The outcome of a claim this node made ([`OwnerWrite::Claim`]): the epoch the table
    /// took (a first claim is raised past the entry or tombstone it replaces), or `None`
    /// when the table refused a take-over because the session had ended; it ends here too.
    pub fn handle_claimed(&mut self, graph: GraphId, epoch: Option<u64>) {
        let session = (graph.0 >> 64) as u64;
        match epoch {
            Some(e) => {
                if let Some(mine) = self.sessions.get_mut(&session)
                    && *mine < e
                {
                    *mine = e;
                    if !self.backups.is_empty() {
                        self.replica_out.sessions.push((session, e));
                    }
                }
            }
            None => {
                if self.sessions.contains_key(&session) {
                    tracing::info!(
                        session,
                        "a taken-over session had ended before its owner died: dropped"
                    );
                    self.stats.sessions_refused += 1;
                    self.end_session(session, None);
                }
            }
        }
    }

    /// Changes to the replicated ownership table, in order: sessions this node started to
    /// own (by a first submission or a take-over) and sessions that ended here.
    pub fn take_owner_writes(&mut self) -> Vec<OwnerWrite> {
        std::mem::take(&mut self.owner_writes)
    }

    /// What this node knows of `session`'s lifetime (for diagnostics).
    pub fn describe_session(&self, session: u64) -> String {
        let l = &self.lifetimes;
        format!(
            "session {session:x}: epoch {:?}, attached {:?}, idle since {:?}, closed {}, datasets {:?}, due {:?}, now {}",
            self.sessions.get(&session),
            l.attached.get(&session),
            l.idle.get(&session),
            l.closed.contains(&session),
            l.datasets.get(&session),
            l.due
                .iter()
                .filter(|Reverse((_, s))| *s == session)
                .map(|Reverse((d, _))| *d)
                .collect::<Vec<_>>(),
            self.now_ms
        )
    }

    /// The sessions this node owns, sorted (for checks and diagnostics).
    pub fn owned_sessions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.sessions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// This node now owns `session` in `epoch` (a first submission, or a take-over): the
    /// table is told, and the session's clock starts if no connection carries it.
    pub(super) fn own_session(&mut self, session: u64, epoch: u64) {
        self.sessions.insert(session, epoch);
        self.owner_writes.push(OwnerWrite::Claim {
            graph: entry_of(session),
            epoch,
        });
        if !self.lifetimes.attached.contains_key(&session) {
            self.session_idle(session);
        }
    }

    /// No connection carries the owned `session` from now on.
    fn session_idle(&mut self, session: u64) {
        let now = self.now_ms;
        self.lifetimes.idle.insert(session, now);
        let due = now + self.session_grace();
        self.lifetimes.due.push(Reverse((due, session)));
    }

    /// `session`'s datasets changed: it may end now.
    pub(super) fn dataset_count(&mut self, session: u64, by: i32) {
        let n = self.lifetimes.datasets.entry(session).or_default();
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            self.lifetimes.datasets.remove(&session);
            if self.lifetimes.closed.contains(&session) {
                self.end_session(session, Some(true));
            } else if self.sessions.contains_key(&session)
                && !self.lifetimes.attached.contains_key(&session)
            {
                let since = *self.lifetimes.idle.entry(session).or_insert(self.now_ms);
                let due = since + self.session_grace();
                if due <= self.now_ms {
                    self.end_session(session, Some(false));
                } else {
                    self.lifetimes.due.push(Reverse((due, session)));
                }
            }
        }
    }

    /// The clock: sessions idle for longer than the grace (or closed) end.
    pub(super) fn sessions_tick(&mut self) {
        let now = self.now_ms;
        let grace = self.session_grace();
        while let Some(&Reverse((due, s))) = self.lifetimes.due.peek() {
            if due > now {
                break;
            }
            self.lifetimes.due.pop();
            if !self.sessions.contains_key(&s) {
                self.lifetimes.idle.remove(&s);
                self.lifetimes.closed.remove(&s);
                continue;
            }
            if self.lifetimes.attached.contains_key(&s) || self.lifetimes.datasets.contains_key(&s)
            {
                continue;
            }
            let closed = self.lifetimes.closed.contains(&s);
            let idle = self
                .lifetimes
                .idle
                .get(&s)
                .is_some_and(|since| now.saturating_sub(*since) >= grace);
            if closed || idle {
                tracing::debug!(session = s, closed, "a client session ended");
                self.end_session(s, Some(closed));
            }
        }
    }

    /// `session` ends here: dropped, the backups told (they drop their copy of it and never
    /// take it over), and, if `release` says so (whether its client closed it), its
    /// ownership entry released.
    pub(super) fn end_session(&mut self, session: u64, release: Option<bool>) {
        let Some(epoch) = self.sessions.remove(&session) else {
            return;
        };
        self.lifetimes.idle.remove(&session);
        self.lifetimes.closed.remove(&session);
        for list in self.taken.values_mut() {
            list.remove(&session);
        }
        self.taken.retain(|_, l| !l.is_empty());
        if let Some(closed) = release {
            self.owner_writes.push(OwnerWrite::Release {
                graph: entry_of(session),
                closed,
            });
        }
        if !self.backups.is_empty() {
            self.replica_out.closed.push((session, epoch));
        }
        self.stats.sessions_ended += 1;
    }
}
