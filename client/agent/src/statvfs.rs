//! [`FsSpace`]: a file system's size and free space, from `statvfs(3)`.
//!
//! Through the `libc` crate's binding, so the struct layout is the C
//! library's own on every platform.

use std::path::Path;

/// Space on one file system, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    pub total_bytes: u64,
    /// Free for unprivileged users (`f_bavail`): what new data could use.
    pub available_bytes: u64,
    /// Free including the root-reserved blocks (`f_bfree`).
    pub free_bytes: u64,
}

impl FsSpace {
    /// The used share as `df` computes it: used / (used + available).
    pub fn utilization(&self) -> f64 {
        let used = self.total_bytes.saturating_sub(self.free_bytes);
        let base = used + self.available_bytes;
        if base == 0 {
            return 0.0;
        }
        (used as f64 / base as f64).clamp(0.0, 1.0)
    }
}

/// `statvfs(path)`; the error says why (no such path, not supported here).
pub fn fs_space(path: &Path) -> Result<FsSpace, String> {
    imp::fs_space(path)
}

#[cfg(unix)]
mod imp {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use super::FsSpace;

    pub fn fs_space(path: &Path) -> Result<FsSpace, String> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path contains a NUL byte".to_owned())?;
        // SAFETY: all-zero is a valid `statvfs` (plain integers).
        let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c_path` is NUL-terminated and outlives the call; `buf` is
        // the C library's own struct type, writable.
        let result = unsafe { libc::statvfs(c_path.as_ptr(), &mut buf) };
        if result != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let fragment = if buf.f_frsize > 0 {
            buf.f_frsize as u64
        } else {
            buf.f_bsize as u64
        };
        Ok(FsSpace {
            total_bytes: (buf.f_blocks as u64).saturating_mul(fragment),
            available_bytes: (buf.f_bavail as u64).saturating_mul(fragment),
            free_bytes: (buf.f_bfree as u64).saturating_mul(fragment),
        })
    }
}

#[cfg(not(unix))]
mod imp {
    use std::path::Path;

    use super::FsSpace;

    pub fn fs_space(_path: &Path) -> Result<FsSpace, String> {
        Err("disk space is read on Unix only".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_file_system_has_a_size() {
        let space = fs_space(Path::new("/")).unwrap();

        assert!(space.total_bytes > 0);
        assert!(
            space.available_bytes <= space.free_bytes && space.free_bytes <= space.total_bytes,
            "{space:?}"
        );
        assert!((0.0..=1.0).contains(&space.utilization()));
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let error = fs_space(Path::new("/no/such/path/for/qm")).unwrap_err();

        assert!(error.contains("No such file"), "{error}");
    }

    #[test]
    fn utilization_is_used_over_used_plus_available() {
        let space = FsSpace {
            total_bytes: 100,
            available_bytes: 45,
            free_bytes: 50,
        };

        assert_eq!(0.5 / 0.95, space.utilization());
    }
}
