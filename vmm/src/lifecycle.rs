//! How a VM ends: the first stop request wins and wakes the thread running the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 0xfe, KVM system event reset).
    Reset,
    /// The guest powered off (KVM system event shutdown).
    Poweroff,
    /// Triple fault (KVM_EXIT_SHUTDOWN): how `reboot=t` guests reboot.
    TripleFault,
    /// A vCPU executed `hlt` with nothing to wake it (only without in-kernel irqchip).
    Halted,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u8),
    /// The VMM was told to stop (SIGTERM, or [`ExitSignal::request`] from the embedder).
    Stopped,
    /// Something failed; the message says what.
    Error(String),
}

impl ExitReason {
    /// The VMM process exit status for this reason: 0 for every orderly end, the
    /// written value for the debug-exit port, 1 for errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::DebugExit(v) => i32::from(*v),
            ExitReason::Error(_) => 1,
            _ => 0,
        }
    }
}

/// Shared between vCPUs, devices and the VM's main thread: records the first exit
/// reason and signals an eventfd.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    evt: EventFd,
}

/// Errors from the exit signal.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The eventfd could not be created or cloned.
    #[error("exit eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl ExitSignal {
    /// A fresh signal with nothing requested.
    pub fn new() -> Result<Self, LifecycleError> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK).map_err(LifecycleError::EventFd)?,
        })
    }

    /// Requests a stop; only the first reason is kept.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::info!(?reason, "VM stopping");
            *r = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // A full counter only means a wake-up is already pending.
        let _ = self.evt.write(1);
    }

    /// True once any stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes_map() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_stopping());
        s.request(ExitReason::DebugExit(7));
        s.request(ExitReason::Reset);
        assert!(s.is_stopping());
        assert_eq!(s.reason(), Some(ExitReason::DebugExit(7)));
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(ExitReason::DebugExit(7).exit_code(), 7);
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault.exit_code(), 0);
        assert_eq!(ExitReason::Error("x".into()).exit_code(), 1);
    }
}
