//! Sandbox probe: each export tries one thing from inside the sandbox and reports the outcome.

wit_bindgen::generate!({ world: "sandbox-probe" });

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

struct Probe;

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Guest for Probe {
    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    }

    fn write_file(path: String, contents: String) -> Result<(), String> {
        std::fs::write(&path, contents).map_err(|e| e.to_string())
    }

    fn open_truncate(path: String) -> Result<(), String> {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn list_dir(path: String) -> Result<Vec<String>, String> {
        let mut names = std::fs::read_dir(&path)
            .map_err(|e| e.to_string())?
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        Ok(names)
    }

    fn preopens() -> Vec<String> {
        // The guest's view of its root: whatever std can open from "/".
        ["/", "/data", "/ro", "/rw"]
            .iter()
            .filter(|p| std::fs::metadata(p).is_ok())
            .map(|p| p.to_string())
            .collect()
    }

    fn get_env(name: String) -> Option<String> {
        std::env::var(name).ok()
    }

    fn env_count() -> u32 {
        std::env::vars().count() as u32
    }

    fn spin() {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn sleep_loop() {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn grow_memory(pages: u32) -> i64 {
        let previous = core::arch::wasm32::memory_grow(0, pages as usize);
        if previous == usize::MAX {
            -1
        } else {
            previous as i64
        }
    }

    fn allocate_mib(mib: u32) -> Result<u32, String> {
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(mib as usize * 1024 * 1024)
            .map_err(|e| e.to_string())?;
        v.resize(mib as usize * 1024 * 1024, 1);
        Ok(std::hint::black_box(v).len() as u32 / (1024 * 1024))
    }

    fn exhaust_memory(mib: u32) -> u32 {
        let v = vec![1u8; mib as usize * 1024 * 1024];
        (std::hint::black_box(v).len() / (1024 * 1024)) as u32
    }

    fn recurse(depth: u64) -> u64 {
        if depth == 0 {
            return 0;
        }
        // Not a tail call, so every level keeps a frame on the wasm call stack.
        std::hint::black_box(Self::recurse(std::hint::black_box(depth - 1))) + (depth & 1)
    }

    fn flood_stdout(bytes: u64) -> u64 {
        let chunk = [b'x'; 4096];
        let mut out = std::io::stdout().lock();
        let mut written = 0;
        while written < bytes {
            let n = (bytes - written).min(chunk.len() as u64) as usize;
            if out.write_all(&chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = out.flush();
        written
    }

    fn counter() -> u64 {
        COUNTER.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn clock_and_random() -> (u64, u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut bytes = [0u8; 8];
        // std has no random API; HashMap's RandomState is seeded from wasi:random.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        bytes.copy_from_slice(&h.finish().to_le_bytes());
        (now, u64::from_le_bytes(bytes))
    }
}

export!(Probe);
