use std::marker::PhantomData;
use std::ops::Deref;

/// A typed handle to a registered task function, created by `#[rdask::task]`.
///
/// `F` is the plain function pointer (the handle dereferences to it, so the function stays
/// callable as `name(a, b)`), `Args` the tuple of its parameter types, `Out` the type of its
/// value (for a function returning `Result<T, E>`, `T`: an `Err` becomes a task error).
pub struct TaskFn<F, Args, Out> {
    name: &'static str,
    prefix: &'static str,
    f: F,
    _sig: PhantomData<fn(Args) -> Out>,
}

impl<F, Args, Out> TaskFn<F, Args, Out> {
    /// A handle for the function registered under `name`; `prefix` names its keys.
    pub const fn new(name: &'static str, prefix: &'static str, f: F) -> Self {
        TaskFn {
            name,
            prefix,
            f,
            _sig: PhantomData,
        }
    }

    /// The name the function is registered under.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The key prefix of its tasks (the function's own name by default).
    pub const fn prefix(&self) -> &'static str {
        self.prefix
    }
}

impl<F, Args, Out> Deref for TaskFn<F, Args, Out> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.f
    }
}

impl<F: Copy, Args, Out> Clone for TaskFn<F, Args, Out> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Copy, Args, Out> Copy for TaskFn<F, Args, Out> {}

impl<F, Args, Out> std::fmt::Debug for TaskFn<F, Args, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskFn({})", self.name)
    }
}
