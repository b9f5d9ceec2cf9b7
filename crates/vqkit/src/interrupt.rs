//! Stopping long work between iterations.
//!
//! A caller that can be interrupted (the Python package, where Ctrl-C must raise
//! `KeyboardInterrupt` in the middle of a training) runs its work inside [`with_hook`]; the
//! training loops call [`check`] between iterations, and [`check`] returns
//! [`Error::Interrupted`] as soon as the hook says to stop. Nothing is half-written: the
//! error unwinds through the ordinary `?` paths. Without a hook (the CLI, Rust callers),
//! [`check`] is one thread-local read.
//!
//! The hook belongs to the calling thread: the loops that call [`check`] run on it, while
//! their kernels fan out to worker threads.

use crate::error::{Error, Result};
use std::cell::RefCell;

type Hook = Box<dyn FnMut() -> bool>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Runs `f` with `hook` installed on this thread: while `f` runs, every [`check`] on this
/// thread calls `hook`, and a `true` from it stops the work with [`Error::Interrupted`].
/// The previous hook, if any, is restored afterwards, also when `f` panics.
pub fn with_hook<R>(hook: impl FnMut() -> bool + 'static, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Hook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            HOOK.with(|h| *h.borrow_mut() = prev);
        }
    }
    let prev = HOOK.with(|h| h.borrow_mut().replace(Box::new(hook)));
    let _restore = Restore(prev);
    f()
}

/// `Err(Error::Interrupted)` when this thread's hook asks to stop; `Ok(())` otherwise, and
/// always when no hook is installed.
pub fn check() -> Result<()> {
    let stop = HOOK.with(|h| h.borrow_mut().as_mut().is_some_and(|hook| hook()));
    if stop {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn no_hook_never_interrupts() {
        assert!(check().is_ok());
    }

    #[test]
    fn hook_stops_after_it_says_so_and_is_removed_afterwards() {
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let r = with_hook(
            move || {
                c.set(c.get() + 1);
                c.get() >= 3
            },
            || -> Result<usize> {
                let mut done = 0;
                for _ in 0..10 {
                    check()?;
                    done += 1;
                }
                Ok(done)
            },
        );
        assert!(matches!(r, Err(Error::Interrupted)));
        assert_eq!(calls.get(), 3);
        assert!(check().is_ok());
    }

    #[test]
    fn nested_hooks_restore_the_outer_one() {
        with_hook(
            || true,
            || {
                with_hook(|| false, || assert!(check().is_ok()));
                assert!(matches!(check(), Err(Error::Interrupted)));
            },
        );
        assert!(check().is_ok());
    }
}
