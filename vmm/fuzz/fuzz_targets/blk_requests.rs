//! virtio-blk requests through the device's queue handler over a scratch image: a
//! header with any type and sector (often near the end of the disk or of u64), data
//! buffers of any direction and length, a status buffer, or raw descriptor chains.
//! Nothing panics, the image never changes size (no write lands past its end), a
//! status byte written is OK, IOERR or UNSUPP, and a used length never exceeds
//! what the chain's writable buffers can hold.
#![no_main]

use husk_vmm::config::BlockDisk;
use husk_vmm::virtio::block::device::{process_queue, Disk, SECTOR_SIZE};
use husk_vmm_fuzz::{Buffer, GuestDriver, Input};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const SECTORS: u64 = 64;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0x5a; (SECTORS * SECTOR_SIZE) as usize]).unwrap();
    let read_only = input.u8() & 1 == 1;
    let disk = Disk::open(&BlockDisk {
        path: path.clone(),
        read_only,
    })
    .unwrap();
    let mut drv = GuestDriver::new(&[64]);
    let mut act = drv.activation();
    for _ in 0..32 {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        let before = drv.used_idx(0);
        if sel & 0x80 != 0 {
            let count = usize::from(input.u8() % 5) + 1;
            drv.add_chain_from(0, &mut input, count);
            process_queue(&disk, &mut act, 0);
            continue;
        }
        let any_kind = input.u32();
        let kind = [0u32, 1, 4, 8, any_kind][usize::from(sel & 7) % 5];
        let sector = match (sel >> 3) % 4 {
            0 => u64::from(input.u8()) % (SECTORS + 2),
            1 => u64::MAX - u64::from(input.u8()),
            2 => u64::MAX / SECTOR_SIZE - u64::from(input.u8()),
            _ => input.u64(),
        };
        let mut hdr = kind.to_le_bytes().to_vec();
        hdr.extend([0; 4]);
        hdr.extend(sector.to_le_bytes());
        let mut bufs = vec![Buffer {
            data: &hdr,
            len: 16,
            writable: false,
        }];
        let n = usize::from(input.u8() % 4);
        let mut writable_capacity = 0u64;
        let mut payloads = Vec::new();
        for _ in 0..n {
            let len = u32::from(input.u16()) % 0x1_0001;
            let writable = input.u8() & 1 == 1;
            payloads.push((len, writable));
        }
        for (len, writable) in &payloads {
            if *writable {
                writable_capacity += u64::from(*len);
            }
            bufs.push(Buffer {
                data: &[],
                len: *len,
                writable: *writable,
            });
        }
        bufs.push(Buffer {
            data: &[0xff],
            len: 1,
            writable: true,
        });
        let addrs = drv.add_chain(0, &bufs);
        process_queue(&disk, &mut act, 0);
        assert_eq!(
            drv.used_idx(0),
            before.wrapping_add(1),
            "request not completed"
        );
        let (_, used) = drv.used(0, before);
        assert!(u64::from(used) <= writable_capacity + 1, "used {used}");
        let status: u8 = drv
            .mem
            .read_obj(GuestAddress(*addrs.last().unwrap()))
            .unwrap();
        assert!(status <= 2, "status {status}");
        if kind == 1 && read_only {
            assert_eq!(status, 1, "a read-only disk took a write");
        }
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(len, SECTORS * SECTOR_SIZE, "the image changed size");
});
