//! Any sequence of guest register reads and writes on a virtio-mmio window, guest
//! memory writes (so the queues the driver configures can hold anything) and queue
//! notifies. Behind the transport is a virtio-blk request handler over a scratch
//! image, served synchronously on each notify once the driver set DRIVER_OK, so the
//! queue addresses and sizes a hostile driver chooses reach real chain parsing. The
//! transport must never panic, MagicValue always reads "virt", a device is only
//! activated after FEATURES_OK with VERSION_1 and only offered features, and a
//! write of 0 to Status resets everything.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use husk_vmm::config::BlockDisk;
use husk_vmm::devices::bus::BusDevice;
use husk_vmm::virtio::block::device::{process_queue, Disk};
use husk_vmm::virtio::mmio::{reg, MmioTransport};
use husk_vmm::virtio::worker::Activation;
use husk_vmm::virtio::{
    ActivateContext, VirtioDevice, VirtioError, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use husk_vmm_fuzz::{Input, GUEST_RAM};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Features the stand-in offers: VERSION_1, virtio-blk's RO and FLUSH.
const OFFERED: u64 = VIRTIO_F_VERSION_1 | (1 << 5) | (1 << 9);

/// What the transport handed the device at DRIVER_OK.
type Activated = Arc<Mutex<Option<ActivateContext>>>;

/// A virtio-blk stand-in that keeps its activation for the harness to serve.
struct BlockStandIn(Activated);

impl VirtioDevice for BlockStandIn {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 16]
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = 64u64.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        assert_eq!(ctx.acked_features & !OFFERED, 0, "unoffered feature acked");
        assert_ne!(ctx.acked_features & VIRTIO_F_VERSION_1, 0, "no VERSION_1");
        *self.0.lock().unwrap() = Some(ctx);
        Ok(())
    }
    fn reset(&mut self) {
        *self.0.lock().unwrap() = None;
    }
}

static DISK: OnceLock<(tempfile::TempDir, Disk)> = OnceLock::new();

fn disk() -> &'static Disk {
    &DISK
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("disk.img");
            std::fs::write(&path, vec![0x5a; 64 * 512]).expect("image");
            let disk = Disk::open(&BlockDisk {
                path,
                read_only: true,
            })
            .expect("disk");
            (dir, disk)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM as usize)]).unwrap();
    let activated: Activated = Arc::default();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t =
        MmioTransport::new(Box::new(BlockStandIn(activated.clone())), mem.clone(), irq).unwrap();
    let mut served: Option<Activation> = None;
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        // Offsets within the 4 KiB window (the bus delivers nothing else), mostly
        // registers and config space.
        let offset = u64::from(input.u16()) % if kind & 0x10 != 0 { 0x1000 } else { 0x120 };
        let offset = if kind & 0x20 != 0 {
            offset & !3
        } else {
            offset
        };
        let width = [1, 2, 4, 8][usize::from(kind >> 6)];
        match kind % 4 {
            0 => {
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..width]);
            }
            1 => {
                let v = input.u64().to_le_bytes();
                t.write(offset, &v[..width]);
                if offset == reg::STATUS && width == 4 && v[..4] == [0; 4] {
                    assert_eq!(t.status(), 0, "Status 0 resets");
                    assert!(!t.is_activated());
                }
            }
            2 => {
                let addr = u64::from(input.u32()) % GUEST_RAM;
                let len = usize::from(input.u8());
                let _ = mem.write_slice(input.bytes(len), GuestAddress(addr));
            }
            _ => {
                if served.is_none() {
                    served = activated.lock().unwrap().take().map(|ctx| Activation {
                        mem: ctx.mem,
                        queues: ctx.queues,
                        interrupt: ctx.interrupt,
                    });
                }
                if let Some(act) = served.as_mut() {
                    let q = usize::from(input.u8() % 2);
                    process_queue(disk(), act, q);
                }
            }
        }
        let mut magic = [0u8; 4];
        t.read(reg::MAGIC, &mut magic);
        assert_eq!(&magic, b"virt");
        if t.is_activated() {
            assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
            assert_ne!(t.status() & STATUS_DRIVER_OK, 0);
        }
        if !t.is_activated() {
            served = None;
        }
    }
});
