//! Published datasets: results one client names so that any client, through any node,
//! can read them (Dask's `publish_dataset` / `get_dataset`).

use rdask_actors::protocol::{ClientRequest, ClientResponse};
use rdask_gossip::{Dataset, NodeId};
use rdask_graph::Key;

use crate::{Client, Error, Future, Result};

impl Client {
    /// Publishes the results of `futures` under `name`: they stay on the cluster, even
    /// after this client drops its futures or closes, until [`Client::unpublish_dataset`].
    /// Any client connected to any node of the cluster reads them with
    /// [`Client::get_dataset`] (the name spreads by gossip: within a second or so).
    ///
    /// The futures must be this client's own (submitted or scattered by it). Errors:
    /// [`Error::DatasetExists`] if the name is taken, [`Error::Refused`] if the cluster no
    /// longer knows a future (cancelled or lost).
    ///
    /// ```
    /// # #[rdask::task] fn square(x: i64) -> i64 { x * x }
    /// # fn main() -> rdask::Result<()> {
    /// let client = rdask::Client::local()?;
    /// let squares = client.map(square, 0..4i64);
    /// rdask::block_on(client.publish_dataset("squares", &squares))?;
    /// let again: Vec<rdask::Future<i64>> = rdask::block_on(client.get_dataset("squares"))?;
    /// assert_eq!(rdask::block_on(client.gather(&again))?, vec![0, 1, 4, 9]);
    /// assert_eq!(rdask::block_on(client.list_datasets())?, vec!["squares".to_string()]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_dataset<T>(&self, name: &str, futures: &[Future<T>]) -> Result<()> {
        if self.lookup_dataset(name).await?.is_some() {
            return Err(Error::DatasetExists(name.to_string()));
        }
        for f in futures {
            if f.shared.borrowed.is_some() {
                return Err(Error::Refused(format!(
                    "{} is a result of another client's dataset: publish only this client's own futures",
                    f.key()
                )));
            }
            if f.is_cancelled() {
                return Err(Error::Cancelled(f.key().clone()));
            }
            // Accepted by the node before it is named.
            f.shared.submitted.clone().await?;
        }
        let keys: Vec<Key> = futures.iter().map(|f| f.key().clone()).collect();
        let request = ClientRequest::Publish {
            name: name.to_string(),
            session: self.session_id(),
            keys,
        };
        match self.request(request).await? {
            ClientResponse::Published => Ok(()),
            other => Err(Error::Protocol(format!(
                "unexpected answer to publish: {other:?}"
            ))),
        }
    }

    /// The futures of the dataset `name`, as published (by any client, through any node).
    /// They read their values through this client's node; dropping them releases nothing
    /// (the dataset holds the results until it is unpublished).
    ///
    /// A dataset future can be gathered, awaited, waited on and asked for its status. As an
    /// argument of a submission it works when this client's node owns the dataset (the
    /// publisher used the same node); otherwise the node rejects the graph, naming the key:
    /// gather the values and submit them instead.
    pub async fn get_dataset<T>(&self, name: &str) -> Result<Vec<Future<T>>> {
        let (dataset, _) = self
            .lookup_dataset(name)
            .await?
            .ok_or_else(|| Error::NoDataset(name.to_string()))?;
        Ok(dataset
            .keys
            .iter()
            .map(|k| self.borrowed_future(Key::from(k.as_str()), dataset.session))
            .collect())
    }

    /// The names of the published datasets, sorted.
    pub async fn list_datasets(&self) -> Result<Vec<String>> {
        match self.request(ClientRequest::ListDatasets).await? {
            ClientResponse::Datasets(names) => Ok(names),
            other => Err(Error::Protocol(format!(
                "unexpected answer to list_datasets: {other:?}"
            ))),
        }
    }

    /// Unpublishes the dataset `name` (through any node): the name goes at once, and its
    /// results are released unless futures of the publishing client still hold them.
    /// [`Error::NoDataset`] if no such dataset is published.
    pub async fn unpublish_dataset(&self, name: &str) -> Result<()> {
        let (dataset, owner) = self
            .lookup_dataset(name)
            .await?
            .ok_or_else(|| Error::NoDataset(name.to_string()))?;
        let request = ClientRequest::Unpublish {
            name: name.to_string(),
            dataset,
            owner,
        };
        match self.request(request).await? {
            ClientResponse::Released => Ok(()),
            other => Err(Error::Protocol(format!(
                "unexpected answer to unpublish: {other:?}"
            ))),
        }
    }

    async fn lookup_dataset(&self, name: &str) -> Result<Option<(Dataset, Option<NodeId>)>> {
        let request = ClientRequest::GetDataset {
            name: name.to_string(),
        };
        match self.request(request).await? {
            ClientResponse::Dataset(d) => Ok(d),
            other => Err(Error::Protocol(format!(
                "unexpected answer to get_dataset: {other:?}"
            ))),
        }
    }
}
