//! Published datasets, and reads of results another node owns.
//!
//! A dataset is a name for results of one client session. Publishing adds one reference to
//! each key at the session's owner (so the results outlive the publisher's futures; the
//! backups count it too) and writes an entry to the replicated table, which every node
//! reads. A client of another node reads the results by [`ClientRequest::Forward`]: its
//! node asks the owner (by the ownership table) and relays the answer. Unpublishing, through
//! any node, writes the tombstone there and has the owner release the references. A session
//! that holds datasets lives until they are unpublished (see `sessions.rs`); the backups keep
//! the datasets with the session, so a take-over carries them on.

use rdask_gossip::{Dataset, NodeId};
use rdask_graph::Key;

use super::{NodeCore, RequestId};
use crate::protocol::{ClientResponse, ForwardedRequest, KeyResult, KeyStatus, PeerMsg};

/// Request ids of gathers a peer forwarded here have this bit set (the shell's own ids
/// count up from zero).
const FORWARDED: u64 = 1 << 63;
/// Most bytes of a dataset's name and keys: an entry of the replicated table must fit one
/// gossip message.
const MAX_DATASET_BYTES: usize = 256 * 1024;

impl NodeCore {
    /// A client publishes `keys` of its `session` as `name`. Refused when this node does
    /// not own the session or does not know a key.
    pub fn handle_publish(
        &mut self,
        request: RequestId,
        name: String,
        session: u64,
        keys: Vec<Key>,
    ) {
        if self.refused_as_moved(request) {
            return;
        }
        let bytes = name.len() + keys.iter().map(|k| k.as_str().len() + 2).sum::<usize>();
        let refuse = if name.is_empty() {
            Some("a dataset needs a name".to_string())
        } else if bytes > MAX_DATASET_BYTES {
            Some(format!(
                "a dataset of {} keys is too large for the replicated table (at most {} KiB of \
                 name and keys): publish it as several datasets",
                keys.len(),
                MAX_DATASET_BYTES / 1024
            ))
        } else if !self.sessions.contains_key(&session) {
            Some(format!(
                "{} does not own the graphs of this client session",
                self.node
            ))
        } else if self.published.contains_key(&name) {
            Some(format!("a dataset named {name:?} is already published"))
        } else {
            keys.iter()
                .find(|k| self.index.get(*k).and_then(|id| self.task(*id)).is_none())
                .map(|k| {
                    format!(
                        "{} does not know the key {k} (released, or never submitted)",
                        self.node
                    )
                })
        };
        if let Some(reason) = refuse {
            self.replies
                .push((request, ClientResponse::Refused(reason)));
            return;
        }
        for k in &keys {
            if let Some(&id) = self.index.get(k)
                && let Some(t) = self.task_mut(id)
            {
                t.client_refs += 1;
            }
        }
        if !self.backups.is_empty() {
            self.replica_out.keep.extend(keys.iter().cloned());
            self.replica_out
                .published
                .push((name.clone(), session, keys.clone()));
        }
        self.dataset_writes.push((
            name.clone(),
            Dataset {
                session,
                keys: keys.iter().map(|k| k.as_str().to_string()).collect(),
                removed: false,
            },
        ));
        self.published.insert(name, (session, keys));
        self.dataset_count(session, 1);
        self.replies.push((request, ClientResponse::Published));
    }

    /// A client unpublishes `name` (as the table held it: `dataset`, owned by `owner`).
    /// The tombstone is written here; the owner releases the references.
    pub fn handle_unpublish(
        &mut self,
        request: RequestId,
        name: String,
        dataset: Dataset,
        owner: Option<NodeId>,
    ) {
        let keys: Vec<Key> = dataset.keys.iter().map(|k| Key::from(k.as_str())).collect();
        self.dataset_writes.push((
            name.clone(),
            Dataset {
                removed: true,
                ..dataset
            },
        ));
        match owner {
            Some(o) if *o.0 != *self.node => {
                let p = self.intern(&o);
                self.send(p, PeerMsg::Unpublished { name, keys });
            }
            _ => self.unpublished(name, keys),
        }
        self.replies.push((request, ClientResponse::Released));
    }

    /// Releases the references a dataset holds here. Only for a name this node published
    /// or took over (a second unpublish releases nothing: a client's own futures are never
    /// released by it).
    pub(super) fn unpublished(&mut self, name: String, keys: Vec<Key>) {
        let Some((session, held)) = self.published.remove(&name) else {
            tracing::debug!(%name, "unpublished a dataset this node holds no references for");
            return;
        };
        if held != keys {
            tracing::debug!(%name, "unpublished a dataset by an older entry: releasing what it held");
        }
        if !self.backups.is_empty() {
            self.replica_out.unpublished.push(name);
        }
        for k in held {
            self.client_release(k);
        }
        self.dataset_count(session, -1);
    }

    /// The names of the datasets this node holds references for (the shell asks the
    /// replicated table which of them were unpublished: see
    /// [`NodeCore::handle_unpublished`]).
    pub fn published_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.published.keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// The replicated table says these datasets were unpublished: their references are
    /// released here if they were not yet (the unpublishing node's word may have been
    /// lost).
    pub fn handle_unpublished(&mut self, names: Vec<String>) {
        for name in names {
            if let Some((_, keys)) = self.published.get(&name) {
                let keys = keys.clone();
                self.unpublished(name, keys);
            }
        }
    }

    /// Entries of the replicated dataset table to write (by the shell).
    pub fn take_dataset_writes(&mut self) -> Vec<(String, Dataset)> {
        std::mem::take(&mut self.dataset_writes)
    }

    /// A client asks, through this node, for results (or statuses) of keys that `owner`
    /// owns. Served here if this node is the owner, otherwise forwarded.
    pub fn handle_forward(&mut self, request: RequestId, owner: &NodeId, inner: ForwardedRequest) {
        if *owner.0 == *self.node {
            self.serve_forwarded(request, inner);
            return;
        }
        let pending = pending_answer(&inner);
        let p = self.intern(owner);
        if self.peers[p as usize].dead || !self.peers[p as usize].alive {
            // The table is behind: the client asks it again.
            self.replies.push((request, pending));
            return;
        }
        self.forwards.insert(request.0, (p, pending));
        self.send(
            p,
            PeerMsg::Forward {
                req: request.0,
                request: inner,
            },
        );
    }

    fn serve_forwarded(&mut self, request: RequestId, inner: ForwardedRequest) {
        match inner {
            ForwardedRequest::Gather { keys, wait_ms } => {
                self.handle_gather(request, keys, wait_ms)
            }
            ForwardedRequest::Status { keys } => {
                let reply = match self.moved_away() {
                    Some(why) => ClientResponse::Moved(why),
                    None => ClientResponse::Statuses(self.key_statuses(&keys)),
                };
                self.replies.push((request, reply));
            }
            ForwardedRequest::AwaitStatus { keys, all, wait_ms } => {
                self.handle_await_status(request, keys, all, wait_ms)
            }
        }
    }

    /// A peer forwarded a client's request: served under an id of this node's own, and
    /// answered to the peer when the reply comes (see [`NodeCore::route_forwarded`]).
    pub(super) fn forwarded_in(&mut self, from: u32, req: u64, inner: ForwardedRequest) {
        self.next_forwarded = self.next_forwarded.wrapping_add(1);
        let id = RequestId(FORWARDED | self.next_forwarded);
        self.forwarded_in.insert(id.0, (from, req));
        self.serve_forwarded(id, inner);
    }

    /// Replies to requests peers forwarded go back to them.
    pub(super) fn route_forwarded(&mut self) {
        if self.forwarded_in.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.replies.len() {
            let id = self.replies[i].0;
            if id.0 & FORWARDED == 0 {
                i += 1;
                continue;
            }
            let (_, reply) = self.replies.remove(i);
            if let Some((p, req)) = self.forwarded_in.remove(&id.0) {
                self.send(p, PeerMsg::Forwarded { req, reply });
            }
        }
    }

    /// The owner answered a forwarded request.
    pub(super) fn forwarded_back(&mut self, from: u32, req: u64, reply: ClientResponse) {
        if self.forwards.get(&req).is_some_and(|(p, _)| *p == from)
            && let Some((_, pending)) = self.forwards.remove(&req)
        {
            // A `Moved` from the owner is about its graphs, not this client's: the client
            // asks the table for the owner again.
            let reply = match reply {
                ClientResponse::Moved(_) => pending,
                r => r,
            };
            self.replies.push((RequestId(req), reply));
        }
    }

    /// `p` is gone: requests forwarded to it are answered "pending" (the client asks the
    /// table for the new owner and tries again).
    pub(super) fn forwards_lost(&mut self, p: u32) {
        let lost: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, (q, _))| *q == p)
            .map(|(r, _)| *r)
            .collect();
        for r in lost {
            if let Some((_, pending)) = self.forwards.remove(&r) {
                self.replies.push((RequestId(r), pending));
            }
        }
        self.forwarded_in.retain(|_, (q, _)| *q != p);
    }
}

/// The answer "nothing known yet" to a forwardable request, for each of its keys.
fn pending_answer(request: &ForwardedRequest) -> ClientResponse {
    match request {
        ForwardedRequest::Gather { keys, .. } => {
            ClientResponse::Results(vec![KeyResult::Pending; keys.len()])
        }
        ForwardedRequest::Status { keys } | ForwardedRequest::AwaitStatus { keys, .. } => {
            ClientResponse::Statuses(vec![KeyStatus::Pending; keys.len()])
        }
    }
}
