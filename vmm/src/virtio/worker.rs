//! The thread behind a virtio device whose work is "handle the chains a queue notify
//! announces" (virtio-fs, virtio-blk, virtio-net): started with the device (vCPU
//! threads never spawn threads), confined by its seccomp role, and between DRIVER_OK
//! and a reset running an epoll loop over the queue eventfds and any backend fds the
//! device adds (the tap of virtio-net, edge-triggered).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::caps;
use crate::seccomp::{self, SeccompLevel, ThreadRole};
use crate::virtio::{ActivateContext, Interrupt, VirtioError};

/// The activated queues as a handler sees them.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them.
    pub queues: Vec<Queue>,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
}

/// A device's worker thread; dropping it stops and joins the thread.
pub struct QueueThread {
    to_worker: Sender<Option<ActivateContext>>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl QueueThread {
    /// Starts thread `name`, which runs `setup` (e.g. Landlock), confines itself to
    /// `role` and then calls `handle(activation, queue index)` on every notify of an
    /// activated queue (and once per queue right after activation).
    pub fn spawn<S, H>(
        name: &str,
        role: ThreadRole,
        level: SeccompLevel,
        setup: S,
        handle: H,
    ) -> std::io::Result<Self>
    where
        S: FnOnce() + Send + 'static,
        H: FnMut(&mut Activation, usize) + Send + 'static,
    {
        Self::spawn_with_fds(name, role, level, Vec::new(), setup, handle)
    }

    /// Like [`spawn`](Self::spawn), and also watches `fds` (edge-triggered, readable):
    /// readiness of `fds[i]` calls `handle(activation, queue count + i)`, as does the
    /// start of each activation. The caller keeps the fds open for the thread's life
    /// and must drain an fd to EAGAIN (or remember that it did not) on each call.
    pub fn spawn_with_fds<S, H>(
        name: &str,
        role: ThreadRole,
        level: SeccompLevel,
        fds: Vec<RawFd>,
        setup: S,
        mut handle: H,
    ) -> std::io::Result<Self>
    where
        S: FnOnce() + Send + 'static,
        H: FnMut(&mut Activation, usize) + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let worker_stop = stop.try_clone()?;
        let (to_worker, from_device) = channel::<Option<ActivateContext>>();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                setup();
                if let Err(e) = caps::drop_for(role) {
                    tracing::error!("{thread_name} thread: {e}");
                    return;
                }
                if let Err(e) = seccomp::apply(role, level) {
                    tracing::error!("{thread_name} thread: {e}");
                    return;
                }
                while let Ok(Some(ctx)) = from_device.recv() {
                    let _ = worker_stop.read();
                    if let Err(e) = serve(ctx, &fds, &worker_stop, &mut handle) {
                        tracing::error!("{thread_name}: {e}");
                    }
                }
            })?;
        Ok(QueueThread {
            to_worker,
            stop,
            thread: Some(thread),
        })
    }

    /// Hands the activated queues to the thread.
    pub fn activate(&self, ctx: ActivateContext) -> Result<(), VirtioError> {
        self.to_worker
            .send(Some(ctx))
            .map_err(|_| VirtioError::Activate("the device thread has exited".into()))
    }

    /// Ends the current activation (driver reset).
    pub fn reset(&self) {
        let _ = self.stop.write(1);
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        let _ = self.to_worker.send(None);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve<H>(
    ctx: ActivateContext,
    fds: &[RawFd],
    stop: &EventFd,
    handle: &mut H,
) -> std::io::Result<()>
where
    H: FnMut(&mut Activation, usize),
{
    let queues = ctx.queue_evts.len();
    let stop_token = (queues + fds.len()) as u64;
    let epoll = Epoll::new()?;
    for (i, e) in ctx.queue_evts.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            e.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    for (i, fd) in fds.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            *fd,
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, (queues + i) as u64),
        )?;
    }
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, stop_token),
    )?;
    let mut act = Activation {
        mem: ctx.mem,
        queues: ctx.queues,
        interrupt: ctx.interrupt,
    };
    for source in 0..queues + fds.len() {
        handle(&mut act, source);
    }
    let mut events = vec![EpollEvent::default(); queues + fds.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == stop_token {
                return Ok(());
            }
            let source = token as usize;
            if let Some(evt) = ctx.queue_evts.get(source) {
                let _ = evt.read();
            }
            handle(&mut act, source);
        }
    }
}
