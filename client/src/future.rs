use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rdask_graph::{Arg, Key, value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::ClientInner;
use crate::{Error, Result};

pub(crate) type Submitted = Shared<BoxFuture<'static, Result<()>>>;

/// What one future handle shares with its clones. Dropping the last one releases the
/// result on the cluster.
pub(crate) struct FutureShared {
    pub(crate) key: Key,
    pub(crate) client: Arc<ClientInner>,
    pub(crate) submitted: Submitted,
    /// Cancelled: its reference on the cluster is released already.
    pub(crate) cancelled: AtomicBool,
    /// A result of another client's session, read from a published dataset: the session,
    /// whose owner serves it. Such a future holds no reference (the dataset does).
    pub(crate) borrowed: Option<u64>,
}

impl Drop for FutureShared {
    fn drop(&mut self) {
        if self.borrowed.is_none() && !self.cancelled.load(Ordering::Acquire) {
            self.client.release(&self.key);
        }
    }
}

/// Where a future stands ([`Future::status`]), as Dask's `future.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FutureStatus {
    /// Waiting for inputs, queued or running.
    Pending,
    /// The value is in memory on the cluster.
    Finished,
    /// The task, or one it depends on, failed ([`Future::result`] gives the error).
    Error,
    /// Cancelled by this client.
    Cancelled,
    /// The cluster no longer knows the key (released elsewhere, or every copy lost).
    Lost,
}

impl FutureStatus {
    /// Whether the future will not change any more (anything but `Pending`).
    pub fn is_done(self) -> bool {
        self != FutureStatus::Pending
    }
}

/// A result that is being computed on the cluster: the handle of one task's value.
///
/// Awaiting it (`fut.await` or [`Future::result`]) gives the value, decoded as `T`, or the
/// error of the task (or of a task it depends on). Passing it (or a reference to it) as an
/// argument of another submission makes a dependency that is resolved on the cluster: the
/// value never travels through the client. Clones share the handle; when the last one is
/// dropped the cluster may free the value.
pub struct Future<T> {
    pub(crate) shared: Arc<FutureShared>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Future<T> {
    fn clone(&self) -> Self {
        Future {
            shared: self.shared.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "<Future: {} ({})>",
            self.shared.key,
            std::any::type_name::<T>()
        )
    }
}

impl<T> Future<T> {
    pub(crate) fn new(shared: Arc<FutureShared>) -> Self {
        Future {
            shared,
            _t: PhantomData,
        }
    }

    /// The key of the task, e.g. `inc-5f0c…`.
    pub fn key(&self) -> &Key {
        &self.shared.key
    }

    /// Where the task stands: pending, finished, failed, cancelled or lost. Asks the
    /// cluster (no value travels).
    pub async fn status(&self) -> Result<FutureStatus> {
        Ok(self.shared.client.statuses(&[&self.shared]).await?[0])
    }

    /// Whether the task is finished, failed, cancelled or lost (Dask's `future.done()`).
    pub async fn done(&self) -> Result<bool> {
        Ok(self.status().await?.is_done())
    }

    /// Cancels the task: this client's hold on it is released at once, so the cluster
    /// drops it unless another future (or a task still to run) needs it — queued work is
    /// dropped, a running function's value is dropped when it returns. Afterwards
    /// [`Future::result`] and [`Future::status`] report the cancellation, and passing the
    /// future as an argument fails. Clones share the cancellation.
    pub fn cancel(&self) {
        if !self.shared.cancelled.swap(true, Ordering::AcqRel) && self.shared.borrowed.is_none() {
            self.shared.client.release(&self.shared.key);
        }
    }

    /// Runs the task again if it failed, with the failed tasks it depends on (Dask's
    /// `future.retry()`): for a failure that was not the function's fault (a resource that
    /// was missing, a flaky service). Returns whether anything runs again (`false` for a
    /// task that did not fail). [`Future::result`] then waits for the new outcome.
    pub async fn retry(&self) -> Result<bool> {
        if self.shared.borrowed.is_some() {
            return Err(Error::Refused(format!(
                "{} is another client's dataset: only its publisher can retry it",
                self.shared.key
            )));
        }
        if self.is_cancelled() {
            return Err(Error::Cancelled(self.shared.key.clone()));
        }
        self.shared
            .client
            .retry(std::slice::from_ref(&self.shared.key))
            .await
            .map(|n| n > 0)
    }

    /// Whether [`Future::cancel`] was called on this future or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::Acquire)
    }
}

impl<T: DeserializeOwned> Future<T> {
    /// Waits for the value.
    pub async fn result(&self) -> Result<T> {
        let bytes = self.shared.client.fetch(&[&self.shared]).await?;
        decode(&self.shared.key, &bytes[0])
    }

    /// Waits for the value at most `timeout`: [`Error::Timeout`] after that (the task goes
    /// on; ask again later).
    pub async fn result_timeout(&self, timeout: std::time::Duration) -> Result<T>
    where
        T: Send + 'static,
    {
        let me = self.clone();
        let client = self.shared.client.clone();
        client
            .spawn(async move {
                match tokio::time::timeout(timeout, me.result()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout(timeout)),
                }
            })
            .await?
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &Key, bytes: &[u8]) -> Result<T> {
    value::decode(bytes).map_err(|e| Error::Decode {
        key: key.clone(),
        type_name: e.type_name,
        reason: e.reason,
    })
}

impl<T: DeserializeOwned + Send + 'static> std::future::IntoFuture for Future<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        async move { self.result().await }.boxed()
    }
}

/// Collects what building a task's arguments needs to know: the client they are for, and
/// the first error met.
#[doc(hidden)]
pub struct ArgContext<'a> {
    /// The client the call is submitted through (`None`: a delayed call, bound to a
    /// client when computed).
    pub(crate) client: Option<&'a Arc<ClientInner>>,
    pub(crate) key: &'a Key,
    /// The futures and delayed values the arguments name.
    pub(crate) deps: std::cell::RefCell<Vec<crate::delayed::Dep>>,
}

impl<'a> ArgContext<'a> {
    pub(crate) fn new(client: Option<&'a Arc<ClientInner>>, key: &'a Key) -> ArgContext<'a> {
        ArgContext {
            client,
            key,
            deps: std::cell::RefCell::new(Vec::new()),
        }
    }
}

/// A value usable as an argument of type `T` of a task function: a `T` itself (sent to the
/// cluster encoded), or a [`Future<T>`] (or a reference to one), whose value is used on
/// the cluster without passing through the client.
pub trait IntoArg<T> {
    #[doc(hidden)]
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self, _: &ArgContext<'_>) -> Result<Arg> {
        value::encode(&self)
            .map(Arg::Value)
            .map_err(|e| Error::Encode(e.to_string()))
    }
}

/// A future may be an argument of a call through `cx`: it is this client's, and not
/// cancelled.
pub(crate) fn check_future(shared: &FutureShared, cx: &ArgContext<'_>) -> Result<()> {
    if let Some(client) = cx.client
        && !Arc::ptr_eq(&shared.client, client)
    {
        return Err(Error::ForeignFuture(cx.key.clone()));
    }
    if shared.cancelled.load(Ordering::Acquire) {
        return Err(Error::Cancelled(shared.key.clone()));
    }
    Ok(())
}

impl<T> IntoArg<T> for &Future<T> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        if let Some(client) = cx.client
            && !Arc::ptr_eq(&self.shared.client, client)
        {
            return Err(Error::ForeignFuture(cx.key.clone()));
        }
        cx.deps
            .borrow_mut()
            .push(crate::delayed::Dep::Future(self.shared.clone()));
        check_future(&self.shared, cx)?;
        Ok(Arg::Key(self.shared.key.clone()))
    }
}

impl<T> IntoArg<T> for Future<T> {
    fn into_arg(self, cx: &ArgContext<'_>) -> Result<Arg> {
        (&self).into_arg(cx)
    }
}

/// The arguments of a call of a task function whose parameters are the tuple `P`: a tuple
/// with one [`IntoArg`] per parameter, e.g. `(1, &fut)` for `fn add(a: i64, b: i64)`.
pub trait Args<P> {
    #[doc(hidden)]
    fn into_args(self, cx: &ArgContext<'_>) -> Result<Vec<Arg>>;
}

macro_rules! impl_args {
    ($($p:ident $x:ident $i:tt),*) => {
        impl<$($p, $x: IntoArg<$p>),*> Args<($($p,)*)> for ($($x,)*) {
            #[allow(unused_variables)]
            fn into_args(self, cx: &ArgContext<'_>) -> Result<Vec<Arg>> {
                Ok(vec![$(self.$i.into_arg(cx)?),*])
            }
        }
    };
}
impl_args!();
impl_args!(P0 X0 0);
impl_args!(P0 X0 0, P1 X1 1);
impl_args!(P0 X0 0, P1 X1 1, P2 X2 2);
impl_args!(P0 X0 0, P1 X1 1, P2 X2 2, P3 X3 3);
impl_args!(P0 X0 0, P1 X1 1, P2 X2 2, P3 X3 3, P4 X4 4);
impl_args!(P0 X0 0, P1 X1 1, P2 X2 2, P3 X3 3, P4 X4 4, P5 X5 5);
impl_args!(P0 X0 0, P1 X1 1, P2 X2 2, P3 X3 3, P4 X4 4, P5 X5 5, P6 X6 6);
impl_args!(P0 X0 0, P1 X1 1, P2 X2 2, P3 X3 3, P4 X4 4, P5 X5 5, P6 X6 6, P7 X7 7);
