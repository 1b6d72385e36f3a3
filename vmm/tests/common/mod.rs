//! Helpers for KVM-layer tests: a tiny x86-64 assembler for purpose-built test guests,
//! and a check that /dev/kvm is there (the tests fail loudly without it).

#![allow(dead_code)]

/// Emits x86-64 machine code for the few instructions test guests need.
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    /// `mov dx, port; mov al, val; out dx, al`.
    pub fn out8(mut self, port: u16, val: u8) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.extend([0xb0, val, 0xee]);
        self
    }

    /// Writes `s` to the serial port 0x3f8, one `out` per byte.
    pub fn serial(mut self, s: &str) -> Self {
        for b in s.bytes() {
            self = self.out8(0x3f8, b);
        }
        self
    }

    /// `movabs rax, addr; mov dword [rax], val`.
    pub fn store32(mut self, addr: u64, val: u32) -> Self {
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0xc7, 0x00]);
        self.0.extend(val.to_le_bytes());
        self
    }

    /// `movabs rax, addr; mov eax, dword [rax]` (result in eax / al).
    pub fn load32(mut self, addr: u64) -> Self {
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0x8b, 0x00]);
        self
    }

    /// `mov dx, port; out dx, al` (writes whatever al holds).
    pub fn out_al(mut self, port: u16) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.push(0xee);
        self
    }

    /// `mov dx, port; in al, dx`.
    pub fn in_al(mut self, port: u16) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.push(0xec);
        self
    }

    /// `hlt; jmp -3` (halt forever).
    pub fn hlt(mut self) -> Self {
        self.0.extend([0xf4, 0xeb, 0xfd]);
        self
    }

    /// `cli; hlt` without a loop.
    pub fn cli_hlt(mut self) -> Self {
        self.0.extend([0xfa, 0xf4]);
        self
    }

    /// The code.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Panics (never skips) when /dev/kvm is unusable: these tests must run on KVM.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("KVM tests need a usable /dev/kvm: {e}");
    }
}

/// Reads the console log, for failure messages.
pub fn console_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<no console log: {e}>"))
}
