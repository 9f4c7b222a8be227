//! Where results live: `replicate`, `rebalance`, and scattering to every node.

use std::time::{Duration, Instant};

use rdask_actors::protocol::{ClientRequest, ClientResponse};
use rdask_graph::Key;

use crate::{Client, Error, Future, Result, ReturnWhen};

/// How long `replicate` and `rebalance` wait for the copies they started.
const COPY_WAIT: Duration = Duration::from_secs(60);

impl Client {
    /// Copies each of these (finished) results until `n` nodes hold it, or every node when
    /// the cluster has fewer (Dask's `replicate`): tasks that read them then find a copy
    /// close by, and a result survives the loss of `n - 1` of its holders without being
    /// computed again. Waits for the futures to finish, then for the copies (at most a
    /// minute: [`Error::Timeout`]).
    pub async fn replicate<T>(&self, futures: &[Future<T>], n: usize) -> Result<()> {
        self.wait(futures, ReturnWhen::AllCompleted).await?;
        let keys: Vec<Key> = futures.iter().map(|f| f.key().clone()).collect();
        let nodes = self
            .nodes()
            .await?
            .iter()
            .filter(|m| m.state == crate::MemberState::Alive)
            .count();
        let want = n.min(nodes.max(1));
        let request = ClientRequest::Replicate {
            keys,
            n: u32::try_from(n).unwrap_or(u32::MAX),
        };
        match self.request(request).await? {
            ClientResponse::Copying(_) => {}
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected answer to replicate: {other:?}"
                )));
            }
        }
        let deadline = Instant::now() + COPY_WAIT;
        loop {
            let holders = self.who_has(futures).await?;
            // A result that failed or was lost has no holders: nothing to copy.
            if holders.iter().all(|h| h.is_empty() || h.len() >= want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(COPY_WAIT));
            }
            self.inner()
                .spawn(async { tokio::time::sleep(Duration::from_millis(20)).await })
                .await?;
        }
    }

    /// Moves these (finished) results between nodes so that each holds about as many of
    /// their bytes as the others (Dask's `rebalance`): from the nodes holding the most to
    /// those holding the least, each result that only one node holds. Returns the number
    /// of results moved, once they have (at most a minute: [`Error::Timeout`]).
    pub async fn rebalance<T>(&self, futures: &[Future<T>]) -> Result<usize> {
        self.wait(futures, ReturnWhen::AllCompleted).await?;
        let before = self.who_has(futures).await?;
        let keys: Vec<Key> = futures.iter().map(|f| f.key().clone()).collect();
        let moves = match self.request(ClientRequest::Rebalance { keys }).await? {
            ClientResponse::Copying(n) => n as usize,
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected answer to rebalance: {other:?}"
                )));
            }
        };
        let deadline = Instant::now() + COPY_WAIT;
        loop {
            let now = self.who_has(futures).await?;
            // A moved result has one holder again, another than before.
            let moved = now
                .iter()
                .zip(&before)
                .filter(|(n, b)| n.len() == 1 && b.len() == 1 && n != b)
                .count();
            if moved >= moves {
                return Ok(moves);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(COPY_WAIT));
            }
            self.inner()
                .spawn(async { tokio::time::sleep(Duration::from_millis(20)).await })
                .await?;
        }
    }

    /// Scatters `value` and copies it to every node (Dask's `scatter(…, broadcast=True)`):
    /// for an input that many tasks read, wherever they run.
    pub async fn scatter_broadcast<T: serde::Serialize>(&self, value: &T) -> Result<Future<T>> {
        let future = self.scatter(value);
        self.replicate(std::slice::from_ref(&future), usize::MAX)
            .await?;
        Ok(future)
    }
}
