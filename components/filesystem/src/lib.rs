//! The filesystem component: reads and writes files in the directories its policy grants and in
//! the directories the person picks.
//!
//! Every directory is a WASI preopen: the granted `/workspace`, and `/picked-<id>` for each
//! directory picked in the calling session (mounted by the host). A target is the guest path
//! without its leading `/`. Target names and paths are checked here before any file is touched;
//! the WASI sandbox enforces the same boundaries again (no `..`, no symbolic link out of the
//! directory, read-only directories stay read-only).

// The generated glue passes flattened records as many parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "filesystem", generate_all });

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use capbridge::host::{dialog, events};

/// `read`'s size limit when `max-bytes` is not given.
const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// The largest file `read` returns and `write` writes.
const HARD_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The longest path accepted, in bytes.
const MAX_PATH_BYTES: usize = 4096;
/// The longest path component (or target name) accepted, in bytes.
const MAX_COMPONENT_BYTES: usize = 255;
/// How much of the file name goes into a temporary file's name, in bytes, so that
/// `.<name>.capbridge-<16 hex digits>.tmp` stays within `MAX_COMPONENT_BYTES`.
const TEMP_NAME_BYTES: usize = 200;

/// WASI's errno for a loop of symbolic links (`io::ErrorKind::FilesystemLoop` is not stable).
const WASI_ELOOP: i32 = 32;

/// Standard base64: padded when encoding, padding optional when decoding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

struct Filesystem;

impl Guest for Filesystem {
    fn read_file(
        target: String,
        path: String,
        encoding: Option<Encoding>,
        max_bytes: Option<u64>,
    ) -> Result<FileContent, Error> {
        let max = match max_bytes {
            None => DEFAULT_MAX_BYTES,
            Some(n) if n > HARD_MAX_BYTES => {
                return Err(Error::InvalidArgument(format!(
                    "`max-bytes` is {n}; at most {HARD_MAX_BYTES} (16 MiB) is allowed"
                )))
            }
            Some(n) => n,
        };
        let place = Place::new(&target, &path);
        let (bytes, modified_ms) = match picked_file(&target, &path)? {
            Some(id) => (dialog::read_picked(&id, max)?, None),
            None => read_in_target(&target, &path, &place, max)?,
        };
        let size = bytes.len() as u64;

        let (encoding, content) = match encoding {
            Some(Encoding::Base64) => (Encoding::Base64, BASE64.encode(&bytes)),
            Some(Encoding::Utf8) => match String::from_utf8(bytes) {
                Ok(text) => (Encoding::Utf8, text),
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "{place} is not valid UTF-8 (at byte {}); read it as base64",
                        e.utf8_error().valid_up_to()
                    )))
                }
            },
            None => match String::from_utf8(bytes) {
                Ok(text) => (Encoding::Utf8, text),
                Err(e) => (Encoding::Base64, BASE64.encode(e.as_bytes())),
            },
        };

        publish(
            "filesystem.read",
            &format!(
                "{{\"target\":{},\"path\":{},\"size\":{size}}}",
                json_string(&target),
                json_string(&path)
            ),
        );
        Ok(FileContent {
            target,
            path,
            size,
            encoding,
            content,
            modified_ms,
        })
    }

    fn write_file(
        target: String,
        path: String,
        content: String,
        encoding: Encoding,
        mode: WriteMode,
        create_parents: bool,
    ) -> Result<Written, Error> {
        if let Some(id) = picked_file(&target, &path)? {
            if matches!(mode, WriteMode::Create) {
                return Err(Error::Conflict(format!(
                    "picked file `{target}` exists (use mode `overwrite` or \
                     `create-or-overwrite` to replace it)"
                )));
            }
            let bytes = decode(content, encoding)?;
            dialog::write_picked(&id, &bytes)?;
            return Ok(announce_written(target, path, bytes.len() as u64, false));
        }
        let file_path = resolve(&target, &path)?;
        let place = Place::new(&target, &path);
        let bytes = decode(content, encoding)?;
        let size = bytes.len() as u64;

        // `resolve` guarantees at least one component below the target directory.
        let dir = file_path.parent().expect("a file path has a parent");
        let name = file_path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file path ends in a UTF-8 name");

        // `overwrite` needs an existing file, so a missing parent means 404 — before any
        // directory is created, so that a refused write changes nothing.
        if matches!(mode, WriteMode::Overwrite)
            && fs::metadata(dir).is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            return Err(Error::NotFound(format!(
                "{place} does not exist (use mode `create` or `create-or-overwrite` to create it)"
            )));
        }
        if create_parents {
            fs::create_dir_all(dir).map_err(|e| match e.kind() {
                // A component of the parent path exists and is not a directory — or is a link
                // the sandbox will not follow, which `metadata` reports as refused.
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
                    match fs::metadata(dir) {
                        Err(e) => place.io_error(e),
                        Ok(_) => {
                            Error::InvalidArgument(format!("{place}: a parent is not a directory"))
                        }
                    }
                }
                _ => place.io_error(e),
            })?;
        } else {
            match fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "{place}: its parent is not a directory"
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::NotFound(format!(
                        "{place}: its parent directory does not exist (set `create-parents` \
                         to create it)"
                    )))
                }
                Err(e) => return Err(place.io_error(e)),
            }
        }

        // The entry itself, not what a symbolic link points to: the rename replaces the entry,
        // so a link is replaced, never written through (deliberately: docs/contract.md,
        // "Symbolic links are replaced, never written through").
        let existed = match fs::symlink_metadata(&file_path) {
            Ok(m) if m.is_dir() => {
                return Err(Error::InvalidArgument(format!("{place} is a directory")))
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(place.io_error(e)),
        };
        match (mode, existed) {
            (WriteMode::Create, true) => {
                return Err(Error::Conflict(format!(
                    "{place} exists (use mode `overwrite` or `create-or-overwrite` to replace it)"
                )))
            }
            (WriteMode::Overwrite, false) => {
                return Err(Error::NotFound(format!(
                    "{place} does not exist (use mode `create` or `create-or-overwrite` to \
                     create it)"
                )))
            }
            _ => {}
        }

        remove_stale_temps(dir, name);
        let (tmp, file) = create_temp(dir, name).map_err(|e| place.io_error(e))?;
        let outcome = write_and_commit(file, &bytes, &tmp, &file_path, mode);
        if outcome.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        outcome.map_err(|e| match (mode, e.kind()) {
            (WriteMode::Create, io::ErrorKind::AlreadyExists) => Error::Conflict(format!(
                "{place} exists (use mode `overwrite` or `create-or-overwrite` to replace it)"
            )),
            _ => place.io_error(e),
        })?;

        let created = match mode {
            WriteMode::Create => true,
            WriteMode::Overwrite => false,
            WriteMode::CreateOrOverwrite => !existed,
        };
        Ok(announce_written(target, path, size, created))
    }

    fn select_directory(title: String, access: Access) -> Result<Option<Picked>, Error> {
        announce_selected(dialog::pick_directory(&title, access)?)
    }

    fn select_file(title: String, access: Access) -> Result<Option<Picked>, Error> {
        announce_selected(dialog::pick_file(&title, access)?)
    }
}

/// Publishes `filesystem.written` and returns the answer.
fn announce_written(target: String, path: String, size: u64, created: bool) -> Written {
    publish(
        "filesystem.written",
        &format!(
            "{{\"target\":{},\"path\":{},\"size\":{size},\"created\":{created}}}",
            json_string(&target),
            json_string(&path)
        ),
    );
    Written {
        target,
        path,
        size,
        created,
    }
}

/// Publishes `filesystem.selected` for what was picked, if anything.
fn announce_selected(picked: Option<Picked>) -> Result<Option<Picked>, Error> {
    if let Some(p) = &picked {
        let target = format!("picked-{}", p.id);
        let access = match p.access {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        };
        publish(
            "filesystem.selected",
            &format!(
                "{{\"target\":{},\"path\":{},\"access\":\"{access}\"}}",
                json_string(&target),
                json_string(&p.host_path)
            ),
        );
    }
    Ok(picked)
}

/// Reads the file at `path` in directory target `target`, at most `max` bytes; its bytes and
/// modification time.
fn read_in_target(
    target: &str,
    path: &str,
    place: &Place,
    max: u64,
) -> Result<(Vec<u8>, Option<u64>), Error> {
    let file_path = resolve(target, path)?;

    let meta = fs::metadata(&file_path).map_err(|e| place.io_error(e))?;
    if meta.is_dir() {
        return Err(Error::InvalidArgument(format!("{place} is a directory")));
    }
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{place} is not a regular file"
        )));
    }
    if meta.len() > max {
        return Err(too_large(place, meta.len(), max));
    }
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));

    let file = File::open(&file_path).map_err(|e| place.io_error(e))?;
    // The file may have grown since the stat: never read more than the limit allows.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| place.io_error(e))?;
    let size = bytes.len() as u64;
    if size > max {
        return Err(too_large(place, size, max));
    }
    Ok((bytes, modified_ms))
}

/// Where an operation happens, for messages: `` `notes/a.txt` in `workspace` ``.
struct Place<'a> {
    target: &'a str,
    path: &'a str,
}

impl<'a> Place<'a> {
    fn new(target: &'a str, path: &'a str) -> Self {
        Place { target, path }
    }

    /// The error value for an I/O error at this place.
    fn io_error(&self, e: io::Error) -> Error {
        let text = format!("{self}: {}", describe_io_error(&e));
        match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(text),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                Error::Denied(text)
            }
            io::ErrorKind::AlreadyExists => Error::Conflict(text),
            // The path cannot name a file: a directory, a file used as a directory, a name the
            // filesystem refuses, or a loop of symbolic links.
            io::ErrorKind::IsADirectory
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::InvalidFilename => Error::InvalidArgument(text),
            _ if e.raw_os_error() == Some(WASI_ELOOP) => Error::InvalidArgument(text),
            _ => Error::Unavailable(text),
        }
    }
}

/// An I/O error in words, named by its WASI `error-code` (`` operation not permitted (WASI
/// error `not-permitted`) ``). std would write `Operation not permitted (os error 63)`: the
/// number is a WASI errno, which means something else on the host (63 is `ENOSR` on Linux), so
/// it is never shown.
fn describe_io_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => match wasi_error_code(errno) {
            Some((name, words)) => format!("{words} (WASI error `{name}`)"),
            None => e.kind().to_string(),
        },
        // Not from the system (std's own errors, such as a short write): no number in it.
        None => e.to_string(),
    }
}

/// The `wasi:filesystem/types.error-code` name and a description for a WASI errno (the numbers
/// wasi-libc, and so std on wasm32-wasip2, gives those error codes).
fn wasi_error_code(errno: i32) -> Option<(&'static str, &'static str)> {
    Some(match errno {
        2 => ("access", "permission denied"),
        6 => ("would-block", "the operation would block"),
        7 => ("already", "already in progress"),
        8 => ("bad-descriptor", "bad file descriptor"),
        10 => ("busy", "the file or directory is busy"),
        16 => ("deadlock", "a deadlock would occur"),
        19 => ("quota", "the disk quota is exceeded"),
        20 => ("exist", "it already exists"),
        22 => ("file-too-large", "the file is too large"),
        25 => ("illegal-byte-sequence", "illegal byte sequence"),
        26 => ("in-progress", "the operation is in progress"),
        27 => ("interrupted", "interrupted"),
        28 => ("invalid", "invalid argument"),
        29 => ("io", "input/output error"),
        31 => ("is-directory", "it is a directory"),
        WASI_ELOOP => ("loop", "too many levels of symbolic links"),
        34 => ("too-many-links", "too many links"),
        35 => ("message-size", "message too large"),
        37 => ("name-too-long", "the name is too long"),
        43 => ("no-device", "no such device"),
        44 => ("no-entry", "no such file or directory"),
        46 => ("no-lock", "no locks available"),
        48 => ("insufficient-memory", "not enough memory"),
        51 => ("insufficient-space", "no space left on the device"),
        54 => ("not-directory", "a part of the path is not a directory"),
        55 => ("not-empty", "the directory is not empty"),
        56 => ("not-recoverable", "state not recoverable"),
        58 => ("unsupported", "not supported"),
        59 => ("no-tty", "not a terminal"),
        60 => ("no-such-device", "no such device or address"),
        61 => ("overflow", "value too large"),
        63 => ("not-permitted", "operation not permitted"),
        64 => ("pipe", "broken pipe"),
        69 => ("read-only", "read-only filesystem"),
        70 => ("invalid-seek", "invalid seek"),
        74 => ("text-file-busy", "text file busy"),
        75 => ("cross-device", "cross-device link"),
        _ => return None,
    })
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` in `{}`", self.path, self.target)
    }
}

fn too_large(place: &Place, size: u64, max: u64) -> Error {
    Error::TooLarge(format!("{place} is {size} bytes; the limit is {max} bytes"))
}

/// The guest path of `path` in directory `target`, after checking both; `not-found` when the
/// target is not a directory this component can see.
fn resolve(target: &str, path: &str) -> Result<PathBuf, Error> {
    check_target(target)?;
    let components = check_path(path)?;
    let dir = PathBuf::from(format!("/{target}"));
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => {
            return Err(Error::NotFound(format!(
                "unknown target `{target}`: no such directory is granted or picked"
            )))
        }
    }
    Ok(components.iter().fold(dir, |p, c| p.join(c)))
}

/// The pick id when `target` is a file the person picked (`picked-<id>`): its only path is
/// the file itself, written as an empty path (or its own name).
fn picked_file(target: &str, path: &str) -> Result<Option<String>, Error> {
    let Some(id) = target.strip_prefix("picked-") else {
        return Ok(None);
    };
    let Some(pick) = dialog::picks()
        .into_iter()
        .find(|p| p.id == id && matches!(p.kind, dialog::PickKind::File))
    else {
        return Ok(None);
    };
    let name = pick.host_path.rsplit('/').next().unwrap_or_default();
    if path.is_empty() || path == "." || path == name {
        Ok(Some(pick.id))
    } else {
        Err(Error::InvalidArgument(format!(
            "`{target}` is a picked file, not a directory: read and write it with an empty \
             `path` (nothing next to it is reachable)"
        )))
    }
}

/// A target is one path segment of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_target(target: &str) -> Result<(), Error> {
    let valid = !target.is_empty()
        && target.len() <= MAX_COMPONENT_BYTES
        && target != "."
        && target != ".."
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "`target` {}: not a target name (a directory name such as `workspace` or \
             `picked-1`)",
            json_string(target)
        )))
    }
}

/// The components of a relative path: `/`-separated, no `..`, no NUL, at most 4096 bytes,
/// each component at most 255 bytes; empty and `.` components are skipped, and at least one
/// component must remain.
fn check_path(path: &str) -> Result<Vec<&str>, Error> {
    let invalid = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "`path` {}: {why}",
            json_string(path)
        )))
    };
    if path.len() > MAX_PATH_BYTES {
        return invalid(&format!(
            "is {} bytes; at most {MAX_PATH_BYTES} are allowed",
            path.len()
        ));
    }
    if path.contains('\0') {
        return invalid("contains a NUL character");
    }
    if path.starts_with('/') {
        return invalid("must be relative to the target");
    }
    if path.ends_with('/') {
        return invalid("names a directory (it ends in `/`); name a file");
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return invalid("must not contain `..`"),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return invalid(&format!(
                    "has a component of {} bytes; at most {MAX_COMPONENT_BYTES} are allowed",
                    c.len()
                ))
            }
            c => components.push(c),
        }
    }
    if components.is_empty() {
        return invalid("names no file");
    }
    Ok(components)
}

/// The bytes `content` stands for, at most 16 MiB.
fn decode(content: String, encoding: Encoding) -> Result<Vec<u8>, Error> {
    let too_large = |size: String| {
        Error::TooLarge(format!(
            "the content is {size} bytes; the limit is {HARD_MAX_BYTES} bytes (16 MiB)"
        ))
    };
    let bytes = match encoding {
        Encoding::Utf8 => content.into_bytes(),
        Encoding::Base64 => {
            // Refuse before decoding what is certainly too large.
            let estimate = base64::decoded_len_estimate(content.len()) as u64;
            if estimate > HARD_MAX_BYTES + 3 {
                return Err(too_large(format!("about {estimate}")));
            }
            BASE64.decode(content.as_bytes()).map_err(|e| {
                Error::InvalidArgument(format!("`content` is not valid base64: {e}"))
            })?
        }
    };
    if bytes.len() as u64 > HARD_MAX_BYTES {
        return Err(too_large(bytes.len().to_string()));
    }
    Ok(bytes)
}

/// Creates `.<name>.capbridge-<random>.tmp` in `dir`, never reusing an existing file.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let prefix = temp_prefix(name);
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!("{prefix}{:016x}.tmp", random_u64()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("the loop ran"))
}

/// `.<name, cut to fit>.capbridge-`: the start of every temporary name for `name`.
fn temp_prefix(name: &str) -> String {
    let mut cut = name.len().min(TEMP_NAME_BYTES);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}.capbridge-", &name[..cut])
}

/// A temporary file older than this was left by a write that never finished (the bridge was
/// killed, or the call stopped at its deadline).
const STALE_TEMP: Duration = Duration::from_secs(15 * 60);

/// Removes temporary files of `name` left behind by interrupted writes, so that they do not
/// pile up (they hold whole file contents). Only old ones: a younger one may be a write in
/// progress. Best effort.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !(file_name.starts_with(&prefix) && file_name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| {
                now.duration_since(modified)
                    .is_ok_and(|age| age > STALE_TEMP)
            });
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to the temporary file, makes them durable, then puts the file in place:
/// `create` links it (failing if `dest` exists, so an existing file is never replaced) and
/// removes the temporary name; the other modes rename it over `dest`.
fn write_and_commit(
    mut file: File,
    bytes: &[u8],
    tmp: &Path,
    dest: &Path,
    mode: WriteMode,
) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    match mode {
        WriteMode::Create => {
            fs::hard_link(tmp, dest)?;
            // The file is in place; a leftover temporary name is only untidy.
            let _ = fs::remove_file(tmp);
        }
        WriteMode::Overwrite | WriteMode::CreateOrOverwrite => fs::rename(tmp, dest)?,
    }
    Ok(())
}

/// 64 random bits, from the host's random source (WASI `random`, part of the baseline) through
/// std's hash-map keys.
fn random_u64() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

/// Publishes an event; the operation it reports has already happened, so a failure to publish
/// does not turn it into an error.
fn publish(topic: &str, payload: &str) {
    let _ = events::publish(topic, payload);
}

/// Quotes a string as JSON (the component keeps no JSON dependency to stay small).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

export!(Filesystem);
