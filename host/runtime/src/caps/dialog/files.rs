//! Reading and replacing a picked file on the host: bounded reads, atomic writes that keep the
//! file's permissions.

use std::io::{Read as _, Write as _};
use std::path::Path;

use crate::caps::GuestError;

/// The file's content, or `None` when it is larger than `max_bytes`.
pub fn read_at_most(path: &Path, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max_bytes).then_some(bytes))
}

/// Replaces the file with `content` atomically (temporary file in the same directory, fsync,
/// rename), keeping its permissions: a crash leaves the old or the new file, never a mix.
pub fn replace_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let permissions = std::fs::metadata(path)?.permissions();
    let mut temp = tempfile::Builder::new()
        .prefix(".capbridge-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(content)?;
    temp.as_file().sync_all()?;
    temp.as_file().set_permissions(permissions)?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// An I/O error on picked file `path`, as the guest sees it.
pub fn guest_error(path: &Path, e: std::io::Error) -> GuestError {
    let message = format!("picked file {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => GuestError::NotFound(message),
        std::io::ErrorKind::PermissionDenied => GuestError::Denied(message),
        _ => GuestError::Unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn reads_are_bounded_and_writes_keep_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.txt");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_at_most(&path, 3).unwrap(), Some(b"old".to_vec()));
        assert_eq!(read_at_most(&path, 2).unwrap(), None);
        replace_atomically(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("missing");
        assert!(matches!(
            guest_error(&missing, replace_atomically(&missing, b"x").unwrap_err()),
            GuestError::NotFound(_)
        ));
    }
}
