//! The virtio-mmio transport (virtio 1.x, "version 2" register layout). Queue notifies
//! arrive through per-queue eventfds (registered as ioeventfds at QueueNotify by the
//! builder; a trapped write here signals the same eventfd), interrupts leave through
//! the device's irqfd.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::BusDevice;
use crate::virtio::{
    copy_queue, ActivateContext, Interrupt, VirtioDevice, VirtioError, INT_CONFIG,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1,
};

/// "virt".
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version (2: virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported: "HUSK" in little-endian ASCII.
pub const MMIO_VENDOR: u32 = 0x4b53_5548;

/// Register offsets.
pub mod reg {
    /// MagicValue.
    pub const MAGIC: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// DeviceID.
    pub const DEVICE_ID: u64 = 0x008;
    /// VendorID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// DeviceFeatures.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptACK.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow (available ring).
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// QueueDriverHigh.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// QueueDeviceLow (used ring).
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// One virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; `irq_evt` is the irqfd eventfd of its GSI.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq_evt: EventFd,
    ) -> Result<Self, VirtioError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| VirtioError::Activate(e.to_string()))?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq_evt)),
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The per-queue notify eventfds (to register as ioeventfds at QueueNotify with
    /// the queue index as datamatch).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt line.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// True once the device was activated by DRIVER_OK.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue configuration is frozen once the driver is running.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & self.status != self.status {
            // A driver only adds bits (virtio 1.x 2.1.2); clearing one, DRIVER_OK of
            // a running device say, takes a reset.
            tracing::debug!(
                status = self.status,
                value,
                "virtio-mmio: status write clearing bits ignored"
            );
            return;
        }
        let newly = value & !self.status;
        let mut value = value;
        if newly & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.acked_features & VIRTIO_F_VERSION_1 != 0
                && self.acked_features & !offered == 0;
            if !ok {
                // Leaving FEATURES_OK clear tells the driver the subset was refused.
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
        if newly & STATUS_DRIVER_OK != 0
            && value & STATUS_FEATURES_OK != 0
            && value & STATUS_FAILED == 0
            && !self.activated
        {
            if let Err(e) = self.activate() {
                tracing::error!("virtio device {}: {e}", self.device.device_type());
                self.status |= STATUS_NEEDS_RESET;
                self.interrupt.trigger(INT_CONFIG);
            }
        }
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(VirtioError::InvalidQueue(i));
            }
        }
        let mut evts = Vec::new();
        for e in &self.queue_evts {
            evts.push(e.try_clone().map_err(VirtioError::EventFd)?);
        }
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            queues: self.queues.iter().map(copy_queue).collect(),
            queue_evts: evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        })?;
        self.activated = true;
        Ok(())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(offset, "virtio-mmio read of unknown register");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let set_low = |a: u64| (a & !0xffff_ffff) | u64::from(v);
        let set_high = |a: u64| (a & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => self.acked_features = set_low(self.acked_features),
                        1 => self.acked_features = set_high(self.acked_features),
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(v), None);
                }
            }
            reg::QUEUE_DESC_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(v));
                }
            }
            reg::QUEUE_DRIVER_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(v), None);
                }
            }
            reg::QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(v));
                }
            }
            reg::QUEUE_DEVICE_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(v), None);
                }
            }
            reg::QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(v));
                }
            }
            reg::QUEUE_NOTIFY => {
                // Only reached when no ioeventfd caught the write.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => tracing::debug!(offset, v, "virtio-mmio write of unknown register"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{INT_VRING, STATUS_ACKNOWLEDGE, STATUS_DRIVER};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    /// Acked features and (size, ready, descriptor table) per queue at activation.
    type Activation = (u64, Vec<(u16, bool, u64)>);

    #[derive(Default)]
    struct Seen {
        activated: Option<Activation>,
        resets: u32,
    }

    struct Dummy(Arc<Mutex<Seen>>);
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0xc0 + offset as u8 + i as u8;
            }
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
            let qs = ctx
                .queues
                .iter()
                .map(|q| (q.size(), q.ready(), q.desc_table()))
                .collect();
            self.0.lock().unwrap().activated = Some((ctx.acked_features, qs));
            ctx.interrupt.trigger(INT_VRING);
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Seen>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(Box::new(Dummy(seen.clone())), mem, irq).unwrap();
        (t, seen)
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        wr(t, reg::STATUS, STATUS_ACKNOWLEDGE);
        wr(t, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, features as u32);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, reg::MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(rd(&mut t, reg::VENDOR_ID), MMIO_VENDOR);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0b101);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
        // Unaligned or narrow register accesses read as zero.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 0b1);
        assert_eq!(rd(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b10); // bit 1 not offered
        assert_eq!(rd(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b100);
        assert_ne!(rd(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queue_setup_activation_notify_interrupt_and_reset() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
        wr(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 8);
        wr(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 16);
        wr(&mut t, reg::QUEUE_NUM, 16);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x1_0000);
        wr(&mut t, reg::QUEUE_DESC_HIGH, 0);
        wr(&mut t, reg::QUEUE_DRIVER_LOW, 0x1_1000);
        wr(&mut t, reg::QUEUE_DEVICE_LOW, 0x1_2000);
        wr(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        // Queue selector out of range reads as absent.
        wr(&mut t, reg::QUEUE_SEL, 5);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        wr(&mut t, reg::STATUS, s | STATUS_DRIVER_OK);
        assert!(t.is_activated());
        let (acked, qs) = seen.lock().unwrap().activated.clone().unwrap();
        assert_eq!(acked, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(qs[0], (16, true, 0x1_0000));
        assert!(!qs[1].1, "queue 1 never made ready");

        // The device raised a used-ring interrupt; the irqfd fired; ACK clears it.
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
        assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
        wr(&mut t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);

        // Notify signals the queue's eventfd.
        wr(&mut t, reg::QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_evts()[1].read().unwrap(), 1);

        // Queue registers are frozen after DRIVER_OK.
        wr(&mut t, reg::QUEUE_SEL, 0);
        wr(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);

        // Config space.
        let mut b = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut b);
        assert_eq!(b, [0xc4, 0xc5]);

        // Writing 0 resets everything and tells the device.
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
        assert!(!t.is_activated());
        assert_eq!(seen.lock().unwrap().resets, 1);
    }

    /// A driver cannot take DRIVER_OK back (and so unfreeze the queues of a running
    /// device) other than by a reset.
    #[test]
    fn status_bits_are_cleared_only_by_reset() {
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, reg::QUEUE_NUM, 16);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x1_0000);
        wr(&mut t, reg::QUEUE_DRIVER_LOW, 0x1_1000);
        wr(&mut t, reg::QUEUE_DEVICE_LOW, 0x1_2000);
        wr(&mut t, reg::QUEUE_READY, 1);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        wr(&mut t, reg::STATUS, s | STATUS_DRIVER_OK);
        assert!(t.is_activated());
        wr(&mut t, reg::STATUS, s);
        assert_eq!(rd(&mut t, reg::STATUS), s | STATUS_DRIVER_OK);
        wr(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1, "queues still frozen");
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert!(!t.is_activated());
    }

    #[test]
    fn invalid_queue_sets_needs_reset() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, reg::QUEUE_NUM, 16);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0xffff_0000); // outside 1 MiB of memory
        wr(&mut t, reg::QUEUE_READY, 1);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        wr(&mut t, reg::STATUS, s);
        assert!(!t.is_activated());
        assert_ne!(rd(&mut t, reg::STATUS) & STATUS_NEEDS_RESET, 0);
        assert!(seen.lock().unwrap().activated.is_none());
    }
}
