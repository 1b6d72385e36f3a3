//! The signals a husk process that stands in for a guest process forwards to it
//! (`run` in the foreground, the supervisor, `exec`) instead of dying of them and
//! leaking the VM.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Signals forwarded to the container.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Errors setting up signal forwarding.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error("cannot block the forwarded signals: {0}")]
    Block(nix::Error),
    #[error("cannot make a signalfd for the forwarded signals: {0}")]
    SignalFd(nix::Error),
}

/// Signals blocked in every thread of husk and read from a signalfd, so they can be
/// forwarded to the container instead of killing husk (and leaking the VM).
pub struct ForwardedSignals {
    fd: SignalFd,
    old: SigSet,
}

impl ForwardedSignals {
    /// Blocks the forwarded signals in this thread (threads spawned later inherit the
    /// mask; child processes get an empty mask from std's `Command`).
    pub fn block() -> Result<Self, SignalsError> {
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(s);
        }
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
            .map_err(SignalsError::Block)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(SignalsError::SignalFd)?;
        Ok(Self { fd, old })
    }

    /// A pending signal, if any.
    pub fn pending(&self) -> Option<Signal> {
        let info = self.fd.read_signal().ok()??;
        Signal::try_from(info.ssi_signo as i32).ok()
    }
}

impl Drop for ForwardedSignals {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_instead_of_delivered() {
        // On a thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            let signals = ForwardedSignals::block().unwrap();
            assert_eq!(signals.pending(), None);
            // SAFETY: pthread_self names this live thread; the signal is blocked in it,
            // so it stays pending instead of running a handler.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
            assert_eq!(rc, 0);
            // Thread-directed signals are pending on the thread, which the signalfd
            // of this thread reads.
            assert_eq!(signals.pending(), Some(Signal::SIGUSR2));
        })
        .join()
        .unwrap();
    }
}
